"""The cell detector alone (no model) on the real annotated frames, at their own optics and rescaled:
detection recall / precision at IoU 0.5 (the matching of ``field-eval``), the pixel size estimated from
each set's red cells (40 evenly spaced frames), and detect p50 per frame, with the machine's CPU and ISA.

``--centres builtin`` (or a model from ``alnett-edge detector train``): the learned centres seed the nuclei
(``[detector] centres``); the shipped model was trained on BCCD ``trainval`` and wbc-smartphone ``train/``, so
of these sets only wbc-smartphone ``valid/`` (and BCCD's 72 ``test`` frames, not split out here) are unseen.

``--dense``: only detect p50 on a crowded 2592x1944 frame at 0.12 µm/px, tiled from 12 real all-fields ``Pre/``
fields rescaled to that pixel size (no truth there: the cells found are counted), for the configuration asked.

Usage: .venv/bin/python benchmarks/detector.py [--stain-ref R] [--centres builtin|MODEL.onnx] [--dense] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from alnett_edge.machine import isa_line
from alnett_edge.vision.annotations import match, read_truth
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.optics import estimate_um_per_px

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = [("bccd", DATA / "bccd", 1.0), ("bccd x0.5", DATA / "bccd", 0.5), ("bccd x2", DATA / "bccd", 2.0),
        ("bccd x4 (2560x1920)", DATA / "bccd", 4.0), ("wbc-smartphone train", DATA / "wbc-smartphone" / "train", 1.0),
        ("wbc-smartphone valid", DATA / "wbc-smartphone" / "valid", 1.0)]


def run(folder: Path, zoom: float, config: DetectorConfig) -> dict:
    _, truths = read_truth(folder)
    images = []
    for t in truths:
        rgb = cv2.cvtColor(cv2.imread(str(t.image)), cv2.COLOR_BGR2RGB)
        if zoom != 1:
            rgb = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        images.append(rgb)
    cal = estimate_um_per_px(images[:: max(1, len(images) // 40)])
    det = CellDetector(config, um_per_px=cal.um_per_px)
    n_true = n_det = hit = 0
    ms = []
    for t, rgb in zip(truths, images):
        gts = [tuple(int(v * zoom) for v in g) for g in t.boxes]
        t0 = time.perf_counter()
        boxes = [d.box for d in det.detect(rgb)]
        ms.append((time.perf_counter() - t0) * 1e3)
        n_true, n_det, hit = n_true + len(gts), n_det + len(boxes), hit + len(match(boxes, gts, 0.5))
    return {"frames": len(truths), "frame": f"{images[0].shape[1]}x{images[0].shape[0]}", "true": n_true,
            "detections": n_det, "recall": round(hit / n_true, 3), "precision": round(hit / max(1, n_det), 3),
            "um_per_px": round(cal.um_per_px, 4), "um_per_px_ci95": [round(v, 4) for v in cal.ci95],
            "calibration_spread": round(cal.spread, 3), "detect_p50_ms": round(float(np.median(ms)), 1)}


def dense_frame() -> np.ndarray:
    """2592x1944 at 0.12 µm/px: the first 12 all-fields ``Pre/`` fields (about 0.39 µm/px) rescaled and tiled 4 x 3."""
    f = 0.39 / 0.12
    tiles = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), None, fx=f, fy=f,
                        interpolation=cv2.INTER_LINEAR) for p in sorted((DATA / "all-fields" / "Pre").iterdir())[:12]]
    return np.ascontiguousarray(np.vstack([np.hstack(tiles[r * 4:(r + 1) * 4]) for r in range(3)])[:1944, :2592])


def dense(config: DetectorConfig, runs: int = 12) -> dict:
    frame, det, ms = dense_frame(), CellDetector(config, um_per_px=0.12), []
    for _ in range(runs):
        t0 = time.perf_counter()
        cells = len(det.detect(frame))
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"frame": "2592x1944 at 0.12 um/px", "cells": cells, "detect_p50_ms": round(float(np.median(ms[2:])), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stain-ref", type=float, default=DetectorConfig().stain_ref,
                    help="the second look at a faint field (0: off, the detector before it)")
    ap.add_argument("--centres", default="", help="a learned centre detector seeds the nuclei: builtin or an .onnx")
    ap.add_argument("--dense", action="store_true", help="only the crowded 2592x1944 frame's detect p50")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    config = replace(DetectorConfig(), stain_ref=args.stain_ref, centres=args.centres)
    print(isa_line())
    if args.dense:
        r = dense(config)
        print(f"{r['frame']}: {r['cells']} cells, detect p50 {r['detect_p50_ms']} ms")
        if args.json:
            args.json.write_text(json.dumps({"machine": isa_line(), **r}, indent=2))
        return
    print(f"{'set':24s} {'frame':>9s} {'true':>5s} {'det':>5s} {'recall':>6s} {'prec':>6s} {'um/px (95% CI)':>24s} "
          f"{'spread':>6s} {'p50 ms':>6s}")
    out = {"machine": isa_line()}
    for name, folder, zoom in SETS:
        r = out[name] = run(folder, zoom, config)
        ci = "{:.4f}-{:.4f}".format(*r["um_per_px_ci95"])
        print(f"{name:24s} {r['frame']:>9s} {r['true']:5d} {r['detections']:5d} {r['recall']:6.3f} {r['precision']:6.3f} "
              f"{r['um_per_px']:.4f} ({ci}) {r['calibration_spread']:6.3f} {r['detect_p50_ms']:6.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
