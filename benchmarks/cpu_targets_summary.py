"""Issue 14's targets, met or not, from the reports ``benchmarks/cpu_targets.sh`` leaves in WORK.

Usage: .venv/bin/python benchmarks/cpu_targets_summary.py WORK
Reads WORK/ort.json, WORK/litert.json and WORK/daemon/daemon.json; the deployed rows are the artifacts
each bundle's export selected. Prints one line a target (figure, limit, met) under the CPU line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alnett_edge.bench.runner import p50_ratios


def selected_rows(report: dict) -> dict[str, dict]:
    """The row of the artifact each bundle selected, by bundle folder name."""
    out = {}
    for r in report["rows"]:
        manifest = Path(r["model"]) / "manifest.json"
        if "batches" in r and manifest.is_file():
            chosen = json.loads(manifest.read_text()).get("selected")
            if chosen and r["artifact"].endswith(chosen):
                out[Path(r["model"]).name] = r
    return out


def ratio(report: dict, key: str, artifact: str, batch: str, anchor: str | None = None) -> float | None:
    """A row's median p50 ratio (``anchor_ratios`` or ``eager_ratios``) at one batch size."""
    for e in report.get(key, []):
        if e["artifact"] == artifact and (anchor is None or e.get("anchor") == anchor):
            return e["p50_ratio"].get(batch)
    return None


def anchor_pair(report: dict, model: str, anchor: str, batch: str) -> float | None:
    """The p50 ratio of two rows of one report (two anchors timed side by side), taken as bench takes it."""
    rows = {r["artifact"]: r for r in report["rows"] if "batches" in r}
    if model not in rows or anchor not in rows:
        return None
    return p50_ratios(rows[model], rows[anchor])["p50_ratio"].get(batch)


def _report(path: Path, empty: dict | list) -> dict | list:
    """A step's JSON report; ``empty`` where the step failed (its targets then read "not measured")."""
    return json.loads(path.read_text()) if path.is_file() else empty


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cpu-targets")
    ort, lite = (_report(work / f, {"rows": []}) for f in ("ort.json", "litert.json"))
    daemon = {str(r["paced_fps"]): r for r in _report(work / "daemon" / "daemon.json", [])}
    sel = selected_rows(ort)
    s, a = sel.get("alnett-s"), sel.get("alnett")
    sp, ap = (r["precision"] if r else "selected" for r in (s, a))
    mnv3, lite_fp32 = "mobilenet_v3_small.onnx", "model.fp32.tflite"
    checks: list[tuple[str, float | None, float, str]] = []  # (target, figure, limit, "le" or "ge")
    for b in ("1", "8"):
        checks.append((f"ORT alnett-s ({sp}) / MobileNetV3-Small, b{b}",
                       s and ratio(ort, "anchor_ratios", s["artifact"], b, mnv3), 1.0, "le"))
    for b in ("1", "8"):
        checks.append((f"LiteRT alnett-s fp32 / MobileNetV3-Small fp32, b{b}",
                       ratio(lite, "anchor_ratios", lite_fp32, b, "mobilenet_v3_small.fp32.tflite"), 1.0, "le"))
    for b in ("1", "8"):
        checks.append((f"LiteRT alnett-s int8 / MobileNetV3-Small int8, b{b}",
                       anchor_pair(lite, "alnett-s.int8.tflite", "mobilenet_v3_small.int8.tflite", b), 1.0, "le"))
    checks.append((f"deployed alnett-s ({sp}) / PyTorch eager, b1",
                   s and ratio(ort, "eager_ratios", s["artifact"], "1"), 1 / 8, "le"))
    checks.append((f"deployed alnett ({ap}) / PyTorch eager, b1",
                   a and ratio(ort, "eager_ratios", a["artifact"], "1"), 1 / 6, "le"))
    checks.append(("runtime RSS at b8, alnett-s deployed (MB)", s and s["batches"]["8"]["rss_mb"], 150, "le"))
    unpaced, paced = daemon.get("unpaced"), daemon.get("30.0")
    checks.append(("daemon fps, unpaced (BCCD 640x480)", unpaced and unpaced["mean_fps"], 60, "ge"))
    checks.append(("daemon frame-to-decision p99 at 30 fps (ms)", paced and paced["f2d_p99_ms"], 40, "le"))
    checks.append(("daemon process RSS, largest at 30 fps (MB)", paced and paced["rss_max_mb"], 150, "le"))
    checks.append(("daemon process RSS growth over the paced run (MB)",
                   paced and paced["rss_last_mb"] - paced["rss_first_mb"], 5, "le"))
    print(ort.get("machine", {}).get("isa", "(no ONNX Runtime report: the CPU line is in the step's output)"))
    for name, value, limit, way in checks:
        if value is None:
            print(f"  {name:<56} {'-':>8}   not measured")
            continue
        met = value <= limit if way == "le" else value >= limit
        print(f"  {name:<56} {value:8.3f}   {'<=' if way == 'le' else '>='} {limit:.3g}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
