"""A C-NMC-sample model on another hospital's microscope, before and after fine-tuning on harvested cells
(issue 32's target: >= 95 % of the cells it is shown classified, not out of distribution).

    .venv/bin/python benchmarks/harvest_finetune.py CNMC_CHECKPOINT HARVEST WORK [--fields-dir DIR]
        [--epochs 3] [--freeze 1] [--classes hem=Benign --classes all=Early,Pre,Pro]

HARVEST is an ``alnett-edge harvest`` of ``../shared/data/all-fields`` (``--labels-from-folders``,
grouped by field). Its fields are split in two by field (every other field of each class, sorted by
name): the fine-tune trains on the cells of one half (its own validation split inside), and both
models are shown the other half's fields through ``harvest --bundle``, which cuts each cell at the
bundle's own canvas with the daemon's crop builder and records its distance from the bundle's
training cells. A cell beyond the card's ``appearance.max_distance`` is one the daemon abstains
("out of distribution"). Prints one line per model and writes WORK/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).with_name("alnett-edge")


def run(*args: object) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, args[:2]))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def split_fields(harvest: Path, fields_root: Path, work: Path) -> tuple[Path, Path]:
    """train.csv (the harvest's cells of every other field) in the harvest folder, and a folder of links
    to the other fields (class folders) to show the models."""
    with open(harvest / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    held, fields_root = work / "held-out-fields", fields_root.resolve()
    names: dict[str, list[str]] = {}
    for cls_dir in sorted(p for p in fields_root.iterdir() if p.is_dir()):
        files = sorted(p.name for p in cls_dir.iterdir())
        names[cls_dir.name] = files[1::2]
        (held / cls_dir.name).mkdir(parents=True, exist_ok=True)
        for name in files[1::2]:
            link = held / cls_dir.name / name
            if not link.exists():
                link.symlink_to(cls_dir / name)
    held_out = {(c, n) for c, ns in names.items() for n in ns}
    train = [r for r in rows if (r["field_class"], Path(r["source"]).name) not in held_out]
    out = harvest / "finetune-train.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(train)
    return out, held


def classified_share(bundle: Path, held: Path, work: Path, name: str, classes: list[str]) -> dict:
    ds = work / f"shown-{name}"
    args = ["harvest", held, "--out", ds, "--labels-from-folders", "--bundle", bundle]
    for c in classes:
        args += ["--classes", c]
    seconds = run(*args)
    card = json.loads((bundle / "card.json").read_text())
    limit = card["appearance"]["max_distance"]
    with open(ds / "manifest.csv", newline="") as f:
        dist = [float(r["appearance_distance"]) for r in csv.DictReader(f)]
    inside = sum(0 <= d <= limit for d in dist)
    return {"cells": len(dist), "classified": inside, "share": round(inside / len(dist), 4),
            "canvas_um": card["input"]["canvas_um"], "max_distance": limit, "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("harvest", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--fields-dir", type=Path, default=Path("../shared/data/all-fields"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--freeze", type=int, default=1)
    ap.add_argument("--classes", action="append", default=None)
    a = ap.parse_args()
    classes = a.classes or ["hem=Benign", "all=Early,Pre,Pro"]
    a.work.mkdir(parents=True, exist_ok=True)
    train_csv, held = split_fields(a.harvest, a.fields_dir, a.work)
    before = a.work / "bundle-before"
    if not before.exists():
        run("export", a.checkpoint, "--target", "x86-cpu", "--precision", "fp32", "--out", before)
    tuned = a.work / "finetuned"
    seconds = None  # an earlier run's fine-tune is reused (its time is in that run's output)
    if not (tuned / "best.safetensors").exists():
        seconds = run("train", "--init", a.checkpoint, "--data", train_csv, "--out", tuned, "--epochs", a.epochs,
                      "--freeze", a.freeze, "--workers", 2)
    after = a.work / "bundle-after"
    run("export", tuned / "best.safetensors", "--target", "x86-cpu", "--precision", "fp32", "--out", after, "--force")
    summary = {"before": classified_share(before, held, a.work, "before", classes),
               "after": classified_share(after, held, a.work, "after", classes),
               "finetune_seconds": None if seconds is None else round(seconds, 1), "epochs": a.epochs,
               "freeze": a.freeze}
    (a.work / "summary.json").write_text(json.dumps(summary, indent=2))
    for k in ("before", "after"):
        s = summary[k]
        print(f"{k:6s} fine-tuning: {s['classified']} of {s['cells']} held-out cells classified ({100 * s['share']:.1f} %), "
              f"canvas {s['canvas_um']:.1f} µm")
    took = "reused" if seconds is None else f"{seconds:.0f} s"
    print(f"fine-tuning: {took} ({a.epochs} epochs, stem + {a.freeze} clusters frozen)")


if __name__ == "__main__":
    main()
