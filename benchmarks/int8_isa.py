"""int8 across CPUs: export one checkpoint's int8 artifacts for every kind of target and show what each
arithmetic gives on the gate set (this CPU's fused kernels, the exact int8 arithmetic), with the static
saturation check.

    .venv/bin/python benchmarks/int8_isa.py CHECKPOINT --out runs/bench-int8          # export + table (+ outputs.npz)
    python3 benchmarks/int8_isa.py --outputs-only runs/bench-int8 --dest OUT.npz        # torch-free: another CPU's outputs
    .venv/bin/python benchmarks/int8_isa.py --compare runs/bench-int8 OUT.npz           # this CPU's vs the other's

The first run writes ``inputs.f16.npy`` (up to 100 preprocessed gate images, float16 to stay small;
both machines run the same values) and ``outputs.npz`` (every int8 ONNX artifact, fused and unfused)
so another machine's outputs can be compared artifact by artifact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TARGETS = [("x86-cpu", "int8"), ("x86-vnni", "int8"), ("jetson", "int8"), ("rpi5", "int8")]


def onnx_outputs(root: Path) -> dict[str, np.ndarray]:
    from alnett_edge.runtime.ort_backend import open_session

    x = np.load(root / "inputs.f16.npy").astype(np.float32)
    out = {}
    for path in sorted(root.glob("*/model*int8*.onnx")):
        for unfused in (False, True):
            sess = open_session(path, threads=2, unfused=unfused)
            logits = np.concatenate([sess.run(None, {"input": x[i : i + 16]})[0] for i in range(0, len(x), 16)])
            out[f"{path.parent.name}/{path.name}:{'reference' if unfused else 'kernels'}"] = logits
    return out


def export_all(checkpoint: str, out: Path) -> None:
    from alnett_edge.export.exporter import GateFailed, export_bundle
    from alnett_edge.export.gate import load_gate_set
    from alnett_edge.machine import isa_line
    from alnett_edge.model.checkpoint import read_card

    out.mkdir(parents=True, exist_ok=True)
    gate = load_gate_set(read_card(checkpoint), None)
    np.save(out / "inputs.f16.npy", gate.inputs[:100].astype(np.float16))
    print(f"machine: {isa_line()}\ngate set: {gate.source}, {len(gate.labels)} images")
    print(f"{'target':9} {'artifact':22} {'arithmetic':10} {'agree':>7} {'Δacc':>6} {'Δsens':>6} {'w max':>5} "
          f"{'exact w/o VNNI':>14} gate")
    for target, precision in TARGETS:
        try:
            m = export_bundle(checkpoint, target, out / target, precision, allow_drop=100.0, min_agreement=0.0,
                              force=True)
        except GateFailed as exc:  # cannot happen with these limits; kept for a clear message
            print(target, exc)
            continue
        for a in m["artifacts"]:
            if a["precision"] != "int8":
                continue
            sat = a["extra"].get("int8_saturation") or {}
            for arith, r in a["gate"]["arithmetic"].items():
                strict = r["agreement"] >= 0.99 and max(r["drop_points"].values()) <= 1.0
                print(f"{target:9} {a['file']:22} {arith:10} {r['agreement']:7.2%} {r['drop_points']['accuracy']:+6.2f} "
                      f"{r['drop_points']['sensitivity']:+6.2f} {sat.get('max_weight', '-'):>5} "
                      f"{str(sat.get('exact_on_x86_without_vnni', '-')):>14} {'pass' if strict else 'FAIL'}")
    outputs = onnx_outputs(out)
    np.savez(out / "outputs.npz", **outputs)
    for key in sorted(k for k in outputs if k.endswith(":kernels")):
        ref = outputs[key.replace(":kernels", ":reference")]
        diff = np.abs(outputs[key] - ref).max()
        print(f"{key.split(':')[0]:30} kernels vs exact int8 arithmetic here: max logit diff {diff:.4f}, "
              f"top-1 agree {np.mean(outputs[key].argmax(1) == ref.argmax(1)):.2%}")


def compare(root: Path, other: Path) -> None:
    mine, theirs = np.load(root / "outputs.npz"), np.load(other)
    info = json.loads(str(theirs["machine"])) if "machine" in theirs else {}
    print(f"other machine: {info.get('isa', '?')}")
    for key in sorted(k for k in mine.files if k in theirs.files):
        d = np.abs(mine[key] - theirs[key]).max()
        agree = np.mean(mine[key].argmax(1) == theirs[key].argmax(1))
        print(f"{key:45} max logit diff between the CPUs {d:.4f}  top-1 agree {agree:.2%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--out", default="runs/bench-int8")
    ap.add_argument("--outputs-only", help="a folder written by a first run: compute this CPU's outputs")
    ap.add_argument("--dest", help="with --outputs-only: where to write the .npz")
    ap.add_argument("--compare", nargs=2, metavar=("ROOT", "OTHER_NPZ"))
    args = ap.parse_args()
    if args.outputs_only:
        from alnett_edge.machine import isa_line, isa_summary

        outputs = onnx_outputs(Path(args.outputs_only))
        np.savez(args.dest, machine=json.dumps({**isa_summary(), "isa": isa_line()}), **outputs)
        print(f"{isa_line()}: {len(outputs)} outputs -> {args.dest}")
    elif args.compare:
        compare(Path(args.compare[0]), Path(args.compare[1]))
    elif args.checkpoint:
        export_all(args.checkpoint, Path(args.out))
    else:
        sys.exit(ap.format_usage())


if __name__ == "__main__":
    main()
