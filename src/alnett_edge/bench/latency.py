"""Latency of an ONNX model in ONNX Runtime on this machine (torch-free).

Warm-up runs are excluded, timing uses ``time.perf_counter`` (monotonic), and the report says how
many threads ran and how many CPUs the machine has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Latency:
    batch: int
    runs: int
    threads: int
    cpus: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ms: list[float] | np.ndarray, batch: int, threads: int) -> Latency:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Latency(batch, len(a), threads, os.cpu_count() or 1, float(a.min()), float(a.mean()), float(p50),
                   float(p90), float(p99), float(a.max()))


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Milliseconds per call of ``fn`` over ``runs`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn: Callable[[], object], runs: int = 30, warmup: int = 3) -> float:
    return float(np.median(time_calls(fn, runs, warmup)))


def ort_latency(path: str | Path, batch: int = 1, runs: int = 200, warmup: int = 20, threads: int = 0) -> Latency:
    from alnett_edge.runtime.ort_backend import open_session

    sess = open_session(Path(path), threads)
    inp = sess.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    times = time_calls(lambda: sess.run(None, feed), runs, warmup)
    return summarize(times, batch, threads or (os.cpu_count() or 1))
