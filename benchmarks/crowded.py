"""Touching clusters and smudge cells: the detector alone on crowded fields (issue 34).

Synthetic: for each cluster size 2..8 (and single cells), ``--frames`` fields of 640x480 are generated
(:func:`alnett_edge.data.synth.generate_crowded`: one cluster of that many white cells touching or
overlapping, one single cell, one smudge cell) at each pixel size, written in the BCCD layout and scored
by ``field-eval``'s own code (:func:`alnett_edge.vision.fieldeval.field_eval`, the pixel size given):
cells found once (one detection, and only one, centred within 4 µm of the cell's centre), the
precision of the detections around that cluster size, smudge cells boxed as white cells, and the detect
p50 per frame. Real: the 20 dense all-fields fields counted by hand (``tests/data/all-fields-dense-
counts.csv``, each class folder its own estimated pixel size), the same scores. With the machine's CPU
and ISA.

Usage: .venv/bin/python benchmarks/crowded.py [--frames 20] [--um 0.12,0.25,0.45] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

COUNTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "all-fields-dense-counts.csv"
FIELDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "all-fields"

from alnett_edge.data.synth import CrowdSpec, generate_crowded
from alnett_edge.machine import isa_line
from alnett_edge.vision.fieldeval import field_eval
from alnett_edge.vision.optics import OpticsConfig


def run(frames: int, um: float, size: int, seed: int) -> dict:
    spec = CrowdSpec(um_per_px=um, clusters=1 if size > 1 else 0, cluster_size=(max(size, 1), max(size, 1)),
                     singles=1 if size > 1 else 3, smudges=1)
    with tempfile.TemporaryDirectory() as tmp:
        generate_crowded(tmp, frames, spec, seed=seed)
        report, _ = field_eval(None, tmp, optics=OpticsConfig(um_per_px=um))
    row = report["by_cluster"].get(str(size)) if size > 1 else {
        "cells": report["true_cells"], "found_once": report["found_once"], "precision": 1 - report["extra"]}
    return {"cluster": size, "um_per_px": um, **row, "smudges": report.get("smudges", {}),
            "detect_p50_ms": report["stages"]["detect"]["p50_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20, help="fields per cluster size and pixel size")
    ap.add_argument("--um", default="0.12,0.25,0.45", help="pixel sizes (µm), comma-separated")
    ap.add_argument("--sizes", default="1,2,3,4,5,6,7,8", help="cluster sizes (1: single cells only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [run(a.frames, float(um), int(k), a.seed) for um in a.um.split(",") for k in a.sizes.split(",")]
    print(isa_line())
    print(f"{'µm/px':>6} {'cluster':>7} {'cells':>6} {'found once':>10} {'precision':>9} {'smudges boxed':>13} "
          f"{'detect p50 ms':>13}")
    for r in rows:
        sm = r["smudges"]
        print(f"{r['um_per_px']:6.2f} {r['cluster']:7d} {r['cells']:6d} {r['found_once']:10.3f} "
              f"{(r['precision'] if r['precision'] is not None else float('nan')):9.3f} "
              f"{sm.get('boxed_as_white_cells', 0):6d} of {sm.get('true', 0):<3d} {r['detect_p50_ms']:13.2f}")
    hand = None
    if FIELDS.is_dir():
        report, _ = field_eval(None, COUNTS, images=FIELDS)
        hand = {k: report.get(k) for k in ("frames", "found_once", "extra", "detections", "smudges", "optics")}
        hand["detect_p50_ms"] = report["stages"]["detect"]["p50_ms"]
        print(f"hand-counted all-fields fields: {report['frames']} fields, "
              f"found once {report['found_once']:.3f}, extra detections {report['extra']:.3f}, smudge cells boxed "
              f"{report['smudges']['boxed_as_white_cells']} of {report['smudges']['true']}, detect p50 "
              f"{hand['detect_p50_ms']:.2f} ms")
    if a.json:
        a.json.write_text(json.dumps({"machine": isa_line(), "rows": rows, "hand_counted": hand}, indent=2))


if __name__ == "__main__":
    main()
