"""ONNX Runtime backend: CPU everywhere; CUDA and TensorRT execution providers where installed
(onnxruntime-gpu on a Jetson or a GPU host). Runs ``.onnx`` artifacts, including the ONNX a TensorRT
bundle carries."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.runtime.base import Runtime, RuntimeUnavailable, softmax

log = logging.getLogger(__name__)

#: --ort-provider choice -> providers in preference order (CPU always last)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def session_options(threads: int = 0, precise_int8: bool = True, profile_prefix: str | None = None) -> Any:
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if precise_int8:
        # exact u8s8 on x86 (AVX2 saturation otherwise moves int8 logits by up to ~0.8)
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def open_session(path: Path, threads: int = 0, providers: list[str] | None = None, profile_prefix: str | None = None) -> Any:
    ort = _ort()
    providers = providers or PROVIDERS["cpu"]
    try:
        return ort.InferenceSession(str(path), session_options(threads, True, profile_prefix), providers=providers)
    except Exception:  # noqa: BLE001 - ORT refuses x64quantprecision on PT2E exports; retry without it
        try:
            return ort.InferenceSession(str(path), session_options(threads, False, profile_prefix), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise RuntimeUnavailable(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0][:200]}") from exc


class OrtRuntime(Runtime):
    name = "onnxruntime"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            _ort()
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def __init__(self, path: str | Path, card: Any, artifact: dict[str, Any] | None = None, threads: int = 0,
                 provider: str = "auto", **options: Any) -> None:
        super().__init__(path, card, artifact, threads, **options)
        self.providers = self._providers(provider)
        self.session = open_session(self.path, threads, self.providers)
        self.input_name = self.session.get_inputs()[0].name
        used = self.session.get_providers()
        if used[0] != self.providers[0]:
            log.warning("ONNX Runtime fell back to %s (asked %s)", used[0], self.providers[0])
        self.providers = used

    @staticmethod
    def _providers(provider: str) -> list[str]:
        have = set(_ort().get_available_providers())
        if provider == "auto":
            for choice in ("tensorrt", "cuda", "cpu"):
                if PROVIDERS[choice][0] in have:
                    return [p for p in PROVIDERS[choice] if p in have]
        if provider not in PROVIDERS:
            raise RuntimeUnavailable(f"unknown ONNX Runtime provider {provider!r}; use auto, {', '.join(PROVIDERS)}")
        if PROVIDERS[provider][0] not in have:
            raise RuntimeUnavailable(f"ONNX Runtime here has no {PROVIDERS[provider][0]} (available: {', '.join(sorted(have))})")
        return [p for p in PROVIDERS[provider] if p in have]

    def describe(self) -> str:
        return f"{super().describe()} [{self.providers[0]}]"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.session.run(None, {self.input_name: batch})[0])

    def _release(self) -> None:
        self.session = None

    def op_profile(self, batch: np.ndarray, runs: int = 20) -> list[dict[str, Any]] | None:
        batch = self.check_batch(batch)
        with tempfile.TemporaryDirectory() as tmp:
            sess = open_session(self.path, self.threads, self.providers, profile_prefix=os.path.join(tmp, "ort"))
            for _ in range(runs + 2):
                sess.run(None, {self.input_name: batch})
            trace = json.loads(Path(sess.end_profiling()).read_text())
        return summarize_ort_trace(trace, runs)


def summarize_ort_trace(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """ORT profiling events -> per op type: total ms per inference, share, node count; largest first."""
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for ev in trace:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        per_op[op] += ev.get("dur", 0) / 1e3  # microseconds -> ms
        nodes[op].add(ev["name"])
    total = sum(per_op.values()) or 1.0
    n = max(runs + 2, 1)
    return [{"op": op, "ms": round(ms / n, 4), "share": round(ms / total, 4), "nodes": len(nodes[op])}
            for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]
