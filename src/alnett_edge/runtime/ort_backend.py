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

from alnett_edge.card import ModelCard
from alnett_edge.machine import import_onnxruntime
from alnett_edge.runtime.base import DenseModel, Runtime, RuntimeUnavailable

log = logging.getLogger(__name__)

#: --ort-provider choice -> providers in preference order (CPU always last)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _ort() -> Any:
    return import_onnxruntime()


def session_options(threads: int = 0, profile_prefix: str | None = None, unfused: bool = False) -> Any:
    """ONNX Runtime session options.

    ``unfused``: no graph optimisation, so a QDQ model runs as DequantizeLinear -> float op ->
    QuantizeLinear: the exact int8 arithmetic (int32 accumulation, up to float rounding) that TensorRT,
    VNNI CPUs and ARM compute, independent of this CPU's integer kernels. It is the reference the gate
    compares the fused kernels with, and the host's stand-in for a TensorRT engine.

    ``session.x64quantprecision`` is not set: it made ONNX Runtime fail to initialise PT2E (QAT)
    exports (a raw "Attempt to replace the existing tensor" line on stderr, then a retry), and it is not
    needed: x86 int8 artifacts are exported with weights that provably cannot saturate AVX2's int16
    pairs (``calibrate.int8_safety``), so the default kernels compute what VNNI CPUs compute.
    """
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if unfused
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    opts.log_severity_level = 3
    # the arena stays (it keeps its high-water mark and reuses it); the memory pattern goes: it
    # pre-plans one block per input shape on top of the arena (alnett-s at batch 8 on 2 AVX2 cores:
    # 159 MB RSS with it, 114 MB without, latency the same; see MEMORY_NOTE)
    opts.enable_mem_pattern = False
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def open_session(path: Path, threads: int = 0, providers: list[str] | None = None, profile_prefix: str | None = None,
                 unfused: bool = False) -> Any:
    ort = _ort()
    providers = providers or PROVIDERS["cpu"]
    try:
        return ort.InferenceSession(str(path), session_options(threads, profile_prefix, unfused), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise RuntimeUnavailable(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0][:200]}") from exc


MEMORY_NOTE = "arena on (keeps its largest block for reuse); memory pattern off (a block per batch size)"


class OrtRuntime(Runtime):

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            _ort()
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    @classmethod
    def io_shapes(cls, path: Path) -> tuple[list[Any], list[Any]]:
        sess = open_session(path, 1, PROVIDERS["cpu"])
        return list(sess.get_inputs()[0].shape), list(sess.get_outputs()[0].shape)

    def __init__(self, path: str | Path, card: ModelCard, artifact: dict[str, Any] | None = None, threads: int = 0,
                 provider: str = "auto", int8_reference: bool = False, **options: Any) -> None:
        """``int8_reference``: run a QDQ model unfused (exact int8 arithmetic; see :func:`session_options`)."""
        super().__init__(path, card, artifact, threads, **options)
        self.providers = self._providers(provider)
        self.unfused = int8_reference
        self.session = open_session(self.path, threads, self.providers, unfused=int8_reference)
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

    def memory_note(self) -> str | None:
        return MEMORY_NOTE

    def describe(self) -> str:
        return f"{super().describe()} [{self.providers[0]}{', int8 reference arithmetic' if self.unfused else ''}]"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def _release(self) -> None:
        self.session = None

    def op_profile(self, batch: np.ndarray, runs: int = 20) -> list[dict[str, Any]] | None:
        batch = self.check_batch(batch)
        with tempfile.TemporaryDirectory() as tmp:
            sess = open_session(self.path, self.threads, self.providers, profile_prefix=os.path.join(tmp, "ort"),
                                unfused=self.unfused)
            for _ in range(runs + 2):
                sess.run(None, {self.input_name: batch})
            trace = json.loads(Path(sess.end_profiling()).read_text())
        return summarize_ort_trace(trace, runs)


class OrtDense(DenseModel):
    """A fully convolutional ONNX model (any input height and width) on ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__(path, threads)
        self.session = open_session(path, threads, PROVIDERS["cpu"])
        self.input_name = self.session.get_inputs()[0].name

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})


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
