"""Timing helpers shared by every layer (bottom layer: numpy only).

Warm-up runs are excluded, timing uses ``time.perf_counter`` (monotonic), and the report says how
many threads ran and how many CPUs the machine has.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Sequence
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


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int = 9, runs: int = 15,
                   warmup: int = 3) -> dict[str, list[float]]:
    """Per name, the median milliseconds of ``runs`` calls in each of ``rounds`` rounds, every function
    once per round. A shared machine's speed shifts for seconds at a time (a 2-core AMD EPYC VM here:
    one model's batch-1 latency went from 0.53 to 1.2 ms for 10 s and back), so candidates timed one
    after the other can swap places; compared round by round they meet the same conditions."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(float(np.median(time_calls(fn, runs, 0))))
    return out


def relative_to(rounds_ms: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Per name, the median over rounds of its round's latency / the reference's in the same round."""
    ref = np.asarray(rounds_ms[reference])
    return {name: float(np.median(np.asarray(ms) / ref)) for name, ms in rounds_ms.items()}


def runtime_latency(rt: Any, batch: int = 1, runs: int = 200, warmup: int = 20) -> Latency:
    """Latency of a loaded runtime (anything with ``infer`` and ``input_shape``) on random inputs."""
    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape)).astype(np.float32)
    return summarize(time_calls(lambda: rt.infer(x), runs, warmup), batch, rt.threads or (os.cpu_count() or 1))


class StageTimes:
    """Per-stage latency over a rolling window of the last ``window`` samples (thread-safe): the
    daemon's and ``field-eval``'s stage table. ``stages`` fixes the names and their order."""

    def __init__(self, stages: Sequence[str], window: int = 4096) -> None:
        self._samples = {s: collections.deque(maxlen=window) for s in stages}
        self._counts = dict.fromkeys(stages, 0)
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            self._samples[stage].append(ms)
            self._counts[stage] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        """Each stage with samples: count, mean, p50, p95, p99 and max in ms."""
        out = {}
        with self._lock:
            for stage, d in self._samples.items():
                if not d:
                    continue
                a = np.fromiter(d, np.float64)
                p50, p95, p99 = np.percentile(a, [50, 95, 99])
                out[stage] = {"n": self._counts[stage], "mean_ms": round(float(a.mean()), 3), "p50_ms": round(float(p50), 3),
                              "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3), "max_ms": round(float(a.max()), 3)}
        return out
