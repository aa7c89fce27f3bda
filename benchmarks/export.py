"""Export bundles for x86-cpu (auto), rpi5 (TFLite int8 from asymmetric QAT) and jetson (int8 QDQ from
symmetric QAT) and time every artifact that runs here at batch 1 and 8 (ONNX Runtime / LiteRT, p50).

Usage: .venv/bin/python benchmarks/export.py CHECKPOINT --qat-asym Q_ASYM --qat-sym Q_SYM --out runs/bench-export
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from alnett_edge.timing import median_ms
from alnett_edge.bundle import load_bundle
from alnett_edge.export.exporter import GateFailed, export_bundle
from alnett_edge.export.formats import get_format


def p50_ms(predict, x: np.ndarray, runs: int = 50) -> float:
    return median_ms(lambda: predict(x), runs, warmup=5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--qat-asym", required=True)
    ap.add_argument("--qat-sym", required=True)
    ap.add_argument("--out", default="runs/bench-export")
    args = ap.parse_args()
    rows = []
    plans = [("x86-cpu", "auto", None), ("rpi5", "default", args.qat_asym), ("jetson", "default", args.qat_sym)]
    for target, precision, qat in plans:
        try:
            m = export_bundle(args.checkpoint, target, Path(args.out) / target, precision, qat=qat, force=True)
        except GateFailed as exc:
            rows.append({"target": target, "error": str(exc)})
            continue
        bundle = load_bundle(m["bundle"])
        x1 = np.load(bundle.root / "golden" / "inputs.npy")[:1]
        x8 = np.repeat(x1, 8, axis=0)
        for a in m["artifacts"] + m["rejected_by_gate"]:
            row = {"target": target, "file": a["file"], "precision": a["precision"], "bytes": a["bytes"],
                   "gate": a["gate"].get("passed"), "agreement": a["gate"].get("agreement"),
                   "acc_drop_pts": a["gate"].get("drop_points", {}).get("accuracy")}
            path = bundle.root / a["file"]
            if path.exists():
                pred = get_format(a["format"]).predictor(path, None, bundle.card)
                if pred is not None:
                    row["b1_ms"], row["b8_ms"] = round(p50_ms(pred, x1), 3), round(p50_ms(pred, x8), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    (Path(args.out) / "export.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
