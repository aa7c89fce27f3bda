"""End-to-end compression numbers for one variant on synthetic C-NMC-like data (and the real sample).

train -> prune (ratio, fine-tune) -> QAT (both schemes) -> PTQ (calibration on training images),
each evaluated on the same patient-disjoint validation split; the real 70 C-NMC cells are an extra
evaluation when ../shared/data is present.

Usage: .venv/bin/python benchmarks/compression.py --variant alnett-s --cells 1500 --epochs 8 --out runs/bench-compress
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alnett_edge.calibrate.ptq import calibrate
from alnett_edge.compress.prune import PruneConfig, prune_checkpoint
from alnett_edge.compress.qat import qat_checkpoint
from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset
from alnett_edge.model.to_onnx import export_onnx
from alnett_edge.model import load_checkpoint
from alnett_edge.train.loop import TrainConfig, train

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cnmc-sample"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="alnett-s")
    ap.add_argument("--cells", type=int, default=1500)
    ap.add_argument("--size", type=int, default=450)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-compress")
    args = ap.parse_args()
    out = Path(args.out)
    extra = REAL if REAL.exists() else None
    t = {}
    cells = out / "cells"
    if not cells.exists():
        generate_cnmc_dataset(cells, SynthSpec(n_cells=args.cells, size=args.size, difficulty=args.difficulty,
                                               fmt="png", cells_per_patient=15))
    t0 = time.perf_counter()
    res = train(TrainConfig(data=str(cells), out=str(out / "train"), variant=args.variant, epochs=args.epochs,
                            patience=args.epochs, workers=2), progress=False)
    t["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pr = prune_checkpoint(res.best, cells, out / "prune", PruneConfig(ratio=args.ratio),
                          finetune_epochs=args.finetune_epochs, lr=1e-3)
    t["prune_s"] = time.perf_counter() - t0
    report = {"args": vars(args), "train": {"best_epoch": res.best_epoch, "val": res.best_metrics},
              "prune": {k: pr[k] for k in ("before", "after", "mac_ratio")}}
    for source_name, source in (("fp32", res.best), ("pruned", Path(pr["pruned"]))):
        for scheme in ("symmetric", "asymmetric"):
            t0 = time.perf_counter()
            q = qat_checkpoint(source, cells, out / f"qat-{source_name}", scheme, args.qat_epochs, 1e-4,
                               extra_eval=extra)
            t[f"qat_{source_name}_{scheme}_s"] = time.perf_counter() - t0
            report[f"qat_{source_name}_{scheme}"] = {k: q[k] for k in ("val", "extra") if k in q}
    model, card = load_checkpoint(res.best)
    onnx_path = export_onnx(model, card, out / "fp32.onnx")
    for method in ("minmax", "percentile", "entropy"):
        c = calibrate(onnx_path, cells / "fold_0", out / f"ptq-{method}.onnx", method, "symmetric", 300,
                      eval_data=cells / "fold_2")
        report[f"ptq_{method}"] = c["eval"]
    report["seconds"] = {k: round(v, 1) for k, v in t.items()}
    (out / "compression.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
