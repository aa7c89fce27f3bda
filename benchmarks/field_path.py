"""Field-level ALL vs benign on held-out folds, plain and with the fields' colour shifted: the field path
(cells harvested, classified, a field called from its cells' scores) against a whole-field classifier
(issue 32's "no colour shortcut" target).

    .venv/bin/python benchmarks/field_path.py --fields ../shared/data/all-fields \\
        --cells-cv runs/af-cells-cv [--whole-cv runs/af-whole-cv] [--limit N] [--json out.json]

``--cells-cv`` is ``alnett-edge train --folds 5 --data HARVEST`` on a harvest of the fields
(``--labels-from-folders``, grouped by field); ``--whole-cv`` is ``train --folds 5`` on the fields
themselves (``whole_manifest`` below writes its manifest: each field its own group, Benign -> hem,
the three B-ALL subtypes -> all). Each fold's model is shown only that fold's held-out fields (the
groups of its ``fold_k/test/report.json``), each one shifted in colour as below, and:

* the field path: the field's cells found, gated, cut and classified as the daemon does
  (:func:`alnett_edge.vision.path.classify_frame`, at the pixel size the harvest estimated for the
  field's folder on the unshifted frames, so only the colour changes), the field called ALL when the
  field score of its classified cells is above the threshold the fold fitted on its
  validation fields (its card's ``field_decision``, by the card's score: the mean log-odds of blast, or
  the blast fraction on older cards); a field without a classified cell is undecided
  and counted as wrong (``accuracy_decided``: over the decided fields only);
* the whole-field model: the field is the model's input, called ALL at P(all) >= 0.5.

Colour shifts (every pixel of the field, then the path as usual): ``hue+10`` / ``hue-10`` (degrees,
OpenCV HSV), ``sat*0.7`` / ``sat*1.3`` (saturation scaled), ``stain*0.8`` / ``stain*1.25`` (the
optical density -log(I/255) of every channel scaled: a weaker or stronger stain), and ``like:Benign`` /
``like:Early`` (Reinhard's transfer: the field's Lab mean and std replaced by the mean over that
class's fields: every field recoloured as if shot in that class's batch; the colour trap itself).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from alnett_edge.capture.base import Frame
from alnett_edge.data.preprocess import load_image
from alnett_edge.machine import isa_line
from alnett_edge.metrics import binary_metrics, cell_score, decide_field, roc_auc, rule_score
from alnett_edge.runtime.loader import open_runtime
from alnett_edge.runtime.predict import classify_arrays
from alnett_edge.vision.cells import QualityConfig
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.path import classify_frame

SHIFTS = ("none", "hue+10", "hue-10", "sat*0.7", "sat*1.3", "stain*0.8", "stain*1.25", "like:Benign", "like:Early")
#: per class, the mean and std of its fields' Lab channels (``like:CLASS``; filled by main from --fields)
CLASS_LAB: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def class_colours(fields: Path, per_class: int = 100) -> None:
    """The Lab mean and std of each class's fields (every ``len // per_class``-th field)."""
    for cls in ALL_CLASSES:
        files = sorted((fields / cls).iterdir())
        labs = [cv2.cvtColor(load_image(f, what="field"), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
                for f in files[:: max(1, len(files) // per_class)]]
        stats = np.array([(lab.mean(0), lab.std(0)) for lab in labs])
        CLASS_LAB[cls] = (stats[:, 0].mean(0), stats[:, 1].mean(0))
#: inference threads (one: this benchmark may share the machine with a training run)
THREADS = int(os.environ.get("FIELD_PATH_THREADS", "1"))
ALL_CLASSES = {"Benign": 0, "Early": 1, "Pre": 1, "Pro": 1}


def shift(rgb: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return rgb
    if how.startswith("like:"):  # Reinhard: the field's Lab mean/std moved to another class's (the colour trap)
        mean, std = CLASS_LAB[how[5:]]
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
        m, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-6
        return cv2.cvtColor(np.clip((lab - m) / sd * std + mean, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    m = re.fullmatch(r"(hue|sat|stain)([+*-])([0-9.]+)", how)
    if m is None:
        raise SystemExit(f"unknown shift {how}")
    kind, op, value = m.group(1), m.group(2), float(m.group(3))
    if kind == "hue":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + (1 if op == "+" else -1) * int(round(value / 2))) % 180
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if kind == "sat":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] = np.clip(hsv[..., 1] * value, 0, 255)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if kind == "stain":
        od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0) * value
        return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)
    raise SystemExit(f"unknown shift {how}")  # unreachable: the pattern names the kinds


def whole_manifest(fields: Path, dest: Path) -> Path:
    """A manifest of the fields themselves for ``train --data`` (each field its own group)."""
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label", "patient_id"])
        for cls, y in ALL_CLASSES.items():
            for p in sorted((fields / cls).iterdir()):
                w.writerow([str(p.resolve()), ("hem", "all")[y], f"{cls}/{p.name}"])
    return dest


def _held_out(cv: Path, k: int, limit: int | None = None) -> list[str]:
    """Fold ``k``'s held-out fields; with ``limit``, at most that many spread evenly over them (the
    names sort by class, so the first N would be one or two classes)."""
    report = json.loads((cv / f"fold_{k}" / "test" / "report.json").read_text())
    held = sorted({p["patient_id"] for p in report["predictions"]})
    return held[:: -(-len(held) // limit)] if limit else held


def _score(y: list[int], called: list[bool | None], score: list[float]) -> dict:
    yy = np.array(y)
    decided = np.array([c is not None for c in called])
    right = np.array([c is not None and bool(c) == bool(t) for c, t in zip(called, y)])
    m = binary_metrics(yy, np.array([1.0 if c else 0.0 for c in called]), 0.5)
    return {"fields": len(y), "undecided": int((~decided).sum()), "accuracy": round(float(right.mean()), 4),
            "accuracy_decided": round(float(right[decided].mean()), 4) if decided.any() else None,
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "auc": roc_auc(yy, np.array(score, np.float64))}


def cell_path(cv: Path, fields: Path, harvest_meta: dict, limit: int | None,
              detector: DetectorConfig) -> dict[str, dict]:
    folds = sorted(int(p.name.split("_")[1]) for p in cv.glob("fold_*") if p.is_dir())
    out: dict[str, dict] = {s: {"y": [], "called": [], "score": []} for s in SHIFTS}
    quality = QualityConfig()
    for k in folds:
        with open_runtime(cv / f"fold_{k}" / "best.safetensors", threads=THREADS) as rt:
            rule = rt.card.field_decision
            if not rule:
                raise SystemExit(f"fold {k}'s card has no field_decision (train on a harvest of fields)")
            held = _held_out(cv, k, limit)
            for name in held:
                session, frame_name = name.split("/", 1)
                um = float(harvest_meta["sessions"][session]["um_per_px"])
                det = CellDetector(detector, um)
                rgb = load_image(fields / session / frame_name, what="field")
                for s in SHIFTS:
                    recs, _ = classify_frame(Frame(shift(rgb, s), 0.0, 0, name), det, quality, rt, 32, "")
                    probs = [r.prob_all for r in recs if r.prob_all is not None]
                    call = decide_field(rule, float(np.sum(cell_score(np.array(probs), rule_score(rule)))), len(probs))
                    o = out[s]
                    o["y"].append(ALL_CLASSES[session])
                    o["called"].append(None if call is None else call["all"])
                    o["score"].append(-1e9 if call is None else call["value"])
        print(f"cells fold {k}: {len(held)} held-out fields", file=sys.stderr)
    return {s: _score(v["y"], v["called"], v["score"]) for s, v in out.items()}


def whole_field(cv: Path, fields: Path, limit: int | None) -> dict[str, dict]:
    folds = sorted(int(p.name.split("_")[1]) for p in cv.glob("fold_*") if p.is_dir())
    out: dict[str, dict] = {s: {"y": [], "called": [], "score": []} for s in SHIFTS}
    for k in folds:
        with open_runtime(cv / f"fold_{k}" / "best.safetensors", threads=THREADS) as rt:
            held = _held_out(cv, k, limit)
            images = [load_image(fields / n, what="field") for n in held]
            for s in SHIFTS:
                probs = np.concatenate([classify_arrays(rt, [shift(im, s) for im in images[i : i + 32]])[0]
                                        for i in range(0, len(images), 32)])[:, rt.card.positive_class]
                o = out[s]
                o["y"] += [ALL_CLASSES[n.split("/")[0]] for n in held]
                o["called"] += [bool(p >= 0.5) for p in probs]
                o["score"] += [float(p) for p in probs]
        print(f"whole fold {k}: {len(held)} held-out fields", file=sys.stderr)
    return {s: _score(v["y"], v["called"], v["score"]) for s, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", type=Path, default=Path("../shared/data/all-fields"))
    ap.add_argument("--cells-cv", type=Path)
    ap.add_argument("--harvest", type=Path, help="the harvest the cells CV trained on (its harvest.json: the optics)")
    ap.add_argument("--whole-cv", type=Path)
    ap.add_argument("--write-whole-manifest", type=Path, help="write the whole-field manifest here and stop")
    ap.add_argument("--limit", type=int, help="at most N held-out fields per fold, spread evenly over them")
    ap.add_argument("--stain-ref", type=float, default=DetectorConfig().stain_ref,
                    help="the detector's second look at a faint field (0: off, the detector before it)")
    ap.add_argument("--max-gain", type=float, default=DetectorConfig().max_gain, help="the second look's largest gain")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.write_whole_manifest:
        print(whole_manifest(a.fields, a.write_whole_manifest))
        return
    class_colours(a.fields)
    result: dict = {"machine": isa_line(), "shifts": SHIFTS}
    if a.cells_cv:
        meta = json.loads((a.harvest / "harvest.json").read_text())
        result["field_path"] = cell_path(a.cells_cv, a.fields, meta, a.limit,
                                         replace(DetectorConfig(), stain_ref=a.stain_ref,
                                                 max_gain=a.max_gain))
    if a.whole_cv:
        result["whole_field"] = whole_field(a.whole_cv, a.fields, a.limit)
    print(result["machine"])
    print(f"{'shift':10s} | {'field path: acc  sens  spec   AUC  undec  acc of decided':48s} | whole-field: acc  sens  spec   AUC")
    for s in SHIFTS:
        cols = []
        for key in ("field_path", "whole_field"):
            r = result.get(key, {}).get(s)
            cols.append("n/a" if r is None else f"{r['accuracy']:.3f} {r['sensitivity']:.3f} {r['specificity']:.3f} "
                        f"{(r['auc'] or 0):.3f}" + (f" {r['undecided']:4d}  {r['accuracy_decided']:.3f}"
                                                    if key == "field_path" else ""))
        print(f"{s:10s} | {cols[0]:48s} | {cols[1]}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
