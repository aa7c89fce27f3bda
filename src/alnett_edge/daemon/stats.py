"""Per-stage latency (rolling window of the last samples) and session aggregates: counts, the blast
ratio with its Wilson 95 % interval, cells per minute."""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

import numpy as np

STAGES = ("capture", "detect", "crop", "infer", "sink", "frame_to_decision")


class StageTimes:
    def __init__(self, window: int = 4096) -> None:
        self._samples = {s: collections.deque(maxlen=window) for s in STAGES}
        self._counts = dict.fromkeys(STAGES, 0)
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            self._samples[stage].append(ms)
            self._counts[stage] += 1

    def summary(self) -> dict[str, dict[str, float]]:
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


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion k/n (None when n = 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class Aggregator:
    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names
        self.labels = dict.fromkeys(class_names, 0)
        self.abstained: dict[str, int] = {}
        self.frames = 0
        self.started = time.time()
        self._lock = threading.Lock()

    def add(self, label: str | None, reason: str | None) -> None:
        with self._lock:
            if label is not None:
                self.labels[label] = self.labels.get(label, 0) + 1
            else:
                self.abstained[reason or "?"] = self.abstained.get(reason or "?", 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            classified = sum(self.labels.values())
            blasts = self.labels.get("all", 0)
            minutes = max(1e-9, (time.time() - self.started) / 60)
            ci = wilson_interval(blasts, classified)
            return {
                "frames": self.frames, "cells": classified + sum(self.abstained.values()), "classified": classified,
                "labels": dict(self.labels), "abstained": dict(self.abstained),
                "blast_ratio": round(blasts / classified, 4) if classified else None,
                "blast_ratio_ci95": [round(v, 4) for v in ci] if ci else None,
                "cells_per_minute": round(classified / minutes, 2),
            }  # fmt: skip
