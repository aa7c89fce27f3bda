"""Timing helpers shared by every layer (bottom layer: numpy only).

Warm-up runs are excluded, timing uses ``time.perf_counter`` (monotonic), and the report says how
many threads ran and how many CPUs the machine has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

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


def runtime_latency(rt: Any, batch: int = 1, runs: int = 200, warmup: int = 20) -> Latency:
    """Latency of a loaded runtime (anything with ``infer`` and ``input_shape``) on random inputs."""
    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape)).astype(np.float32)
    return summarize(time_calls(lambda: rt.infer(x), runs, warmup), batch, rt.threads or (os.cpu_count() or 1))
