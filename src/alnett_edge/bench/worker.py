"""One benchmark row, run in its own process so that load time, first inference and peak RSS belong
to this artifact and backend alone: ``python -m alnett_edge.bench.worker SPEC.json OUT.json``.

Torch is imported only by the PyTorch backend, so an ONNX Runtime or LiteRT row measures what a
device process would hold.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.plugins import load_plugins
from alnett_edge.runtime.base import Runtime
from alnett_edge.timing import summarize
from alnett_edge.bench.system import peak_rss_mb, rss_mb


def _batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Real inputs cut into batches, cycling through them (tiled when there are fewer than ``batch``)."""
    reps = -(-batch // len(inputs))
    pool = np.concatenate([inputs] * reps) if reps > 1 else inputs
    return [np.ascontiguousarray(pool[i : i + batch]) for i in range(0, len(pool) - batch + 1, batch)] or [pool[:batch]]


def time_batches(rt: Runtime, inputs: np.ndarray, batch: int, warmup: int, runs: int | None, duration: float | None,
                 max_seconds: float) -> tuple[list[float], str]:
    feeds = _batches(inputs, batch)
    for i in range(warmup):
        rt.infer(feeds[i % len(feeds)])
    samples: list[float] = []
    note = ""
    start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        rt.infer(feeds[i % len(feeds)])
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1e3)
        i += 1
        elapsed = t1 - start
        if duration is not None:
            if elapsed >= duration:
                break
        elif len(samples) >= runs:
            break
        elif elapsed >= max_seconds and len(samples) >= 30:
            note = f"stopped after {len(samples)} runs ({max_seconds:.0f} s cap)"
            break
    return samples, note


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from alnett_edge.runtime.loader import Target, anchor_target, open_target, targets_of

    if spec.get("anchor"):
        target = anchor_target(spec["model"])
    else:
        targets: list[Target] = targets_of(spec["model"])
        target = next(t for t in targets if t.path.name == spec["file"])
    # memory-mapped: the evaluation images must not count as the runtime's memory; timing cycles
    # through a small in-memory pool, and RSS is read before the full set is touched for accuracy
    inputs = np.load(spec["inputs"], mmap_mode="r")
    pool = np.array(inputs[: max(16, 2 * max(spec["batches"]))])
    t0 = time.perf_counter()
    rt = open_target(target, spec["backend"], spec.get("threads", 0), cpu=spec.get("cpu", False))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rt.infer(pool[:1])
    first_ms = (time.perf_counter() - t0) * 1e3
    out: dict[str, Any] = {"load_s": round(load_s, 4), "first_inference_ms": round(first_ms, 3),
                           "describe": rt.describe(), "memory": rt.memory_note(), "batches": {}}
    for b in spec["batches"]:
        samples, note = time_batches(rt, pool, b, spec["warmup"], spec.get("runs"), spec.get("duration"),
                                     spec.get("max_seconds", 20.0))
        lat = summarize(samples, b, spec.get("threads", 0) or 0).to_dict()
        out["batches"][str(b)] = {**lat, "throughput_ips": round(b * 1e3 / lat["mean_ms"], 2), "samples_ms": samples,
                                  "rss_mb": round(rss_mb(), 1), "note": note}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["batching"] = rt.batching_note()
    if spec.get("predict"):
        step = max(spec["batches"])
        out["probs"] = np.concatenate([rt.infer(np.asarray(inputs[i : i + step])) for i in range(0, len(inputs), step)]).tolist()
    if spec.get("op_profile"):
        ops = rt.op_profile(pool[: spec["batches"][0]])
        out["op_profile"] = ops[:10] if ops else None
    if getattr(rt, "macs", None):  # backends that can count them (PyTorch)
        out["macs"] = rt.macs
    rt.close()
    out["torch_loaded"] = "torch" in sys.modules
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        load_plugins()  # the same registry entries as the process that started this one
        result = run(spec)
    except Exception as exc:  # noqa: BLE001 - reported in the row, the benchmark goes on
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
