"""Deployed artifact vs PyTorch eager, achieved FLOP/s and runtime RSS.

For a trained ``alnett-s`` checkpoint (and a randomly initialised full ``alnett``, speed only: no
trained one exists here), export an ``x86-cpu --precision auto`` bundle (fp32 and int8 ONNX, gated,
fastest passing one selected), then ``alnett-edge bench`` every artifact plus the PyTorch-eager row
at batch 1 and 8 on real validation images, each row in its own process.

Usage: .venv/bin/python benchmarks/runtime.py runs/bench-compress-s/train/best.safetensors \
           --images runs/bench-compress-s/cells --out runs/bench-runtime
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TORCH_LOGS", "-all")  # the exporter's registration chatter

from alnett_edge.bench.runner import BenchOptions, plot_latency, run_bench, write_json
from alnett_edge.export.exporter import export_bundle
from alnett_edge.model.checkpoint import new_card, save_checkpoint
from alnett_edge.model.registry import create_model
from alnett_edge.runtime.base import BACKENDS


def summarize(report: dict) -> list[dict]:
    out = []
    peak = report["machine"]["peak_gflops"]
    by_model: dict[str, list[dict]] = {}
    for r in report["rows"]:
        if "batches" in r:
            by_model.setdefault(r["source_sha256"], []).append(r)
    for rows in by_model.values():
        eager = next(r for r in rows if BACKENDS[r["backend"]].reference)  # PyTorch eager on the checkpoint
        deployed = [r for r in rows if not BACKENDS[r["backend"]].reference]
        best = min(deployed, key=lambda r: r["batches"]["1"]["p50_ms"])
        best8 = max(deployed, key=lambda r: r["batches"]["8"].get("gflops") or 0)
        out.append({
            "model": best["model"], "best_b1": f"{best['artifact']} on {best['backend']}",
            "best_b1_p50_ms": best["batches"]["1"]["p50_ms"], "eager_b1_p50_ms": eager["batches"]["1"]["p50_ms"],
            "ratio_best_over_eager": next(e["p50_ratio"]["1"] for e in report["eager_ratios"]
                                          if e["artifact"] == best["artifact"] and e["backend"] == best["backend"]),
            "best_b8_gflops": best8["batches"]["8"].get("gflops"), "peak_gflops": peak,
            "b8_peak_share": best8["batches"]["8"].get("peak_share"),
            "best_rss_b1_mb": best["batches"]["1"]["rss_mb"], "best_peak_rss_mb": best["peak_rss_mb"],
            "int8_vs_fp32_b1": {r["artifact"]: r["batches"]["1"]["p50_ms"] for r in deployed},
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", help="trained alnett-s checkpoint")
    ap.add_argument("--images", required=True, help="labelled cells (the validation images)")
    ap.add_argument("--out", default="runs/bench-runtime")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--reexport", action="store_true", help="export again even if the bundles exist")
    args = ap.parse_args()
    out = Path(args.out)
    full = out / "alnett-random.safetensors"
    if not full.is_file():
        model = create_model("alnett").eval()
        save_checkpoint(full, model, new_card(model, "alnett"))
    bundles, refs = [], []
    for ckpt, name in ((Path(args.checkpoint), "alnett-s"), (full, "alnett")):
        if (out / name / "manifest.json").is_file() and not args.reexport:
            bundles.append(str(out / name))
            refs.append(ckpt)
            continue
        m = export_bundle(ckpt, "x86-cpu", out / name, precision="auto", gate_images=args.images, calib_images=args.images,
                          allow_drop=100.0 if name == "alnett" else 1.0, min_agreement=0.0 if name == "alnett" else 0.99,
                          force=True)
        bundles.append(m["bundle"])
        refs.append(ckpt)
        print(f"{name}: selected {m['selected']}; rejected by gate: {[a['file'] for a in m['rejected_by_gate']]}", flush=True)
    rows = []
    for bundle, ref in zip(bundles, refs):
        opts = BenchOptions(backends=["all"], batches=[1, 8], images=Path(args.images), runs=args.runs, reference=ref,
                            op_profile=True, any_size=True)
        rows.append(run_bench([bundle], opts))
    report = {"machine": rows[0]["machine"], "options": rows[0]["options"], "rows": rows[0]["rows"] + rows[1]["rows"]}
    write_json(report, out / "bench.json")
    plot_latency(report, out / "bench.png")
    summary = summarize(report)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
