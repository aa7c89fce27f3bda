"""LiteRT backend: ``ai-edge-litert`` (``tflite-runtime`` as the fallback on old devices, which needs
numpy < 2), XNNPACK delegate on by default, thread count settable. Full-int8 models take int8 input
and give int8 output; their quantization parameters are applied here, so callers always pass the
card's float32 batch and get probabilities."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.machine import quiet_native_stderr as machine_quiet
from alnett_edge.runtime.base import Runtime, RuntimeUnavailable


def interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # old devices; needs numpy < 2
    return Interpreter


def quiet_native_stderr() -> contextlib.AbstractContextManager[None]:
    """Silence file descriptor 2 while native LiteRT / litert-torch code logs through absl or prints
    "Created TensorFlow Lite XNNPACK delegate", which no Python logging setting reaches (on every
    machine; :func:`alnett_edge.machine.quiet_native_stderr`)."""
    return machine_quiet(enabled=True)


class LiteRTRuntime(Runtime):
    # XNNPACK runs each operator over the whole batch: alnett-s's first cluster (112x112x16, three
    # depthwise branches summed) outgrows a core's cache at batch 8, so 8 calls of 1 can be faster
    tunes_batching = True

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            interpreter_class()
        except ImportError:
            return "LiteRT is not installed (pip install ai-edge-litert, or tflite-runtime on older devices)"
        return None

    @classmethod
    def io_shapes(cls, path: Path) -> tuple[list[Any], list[Any]]:
        try:
            with quiet_native_stderr():
                interp = interpreter_class()(model_path=str(path))
        except (ValueError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"LiteRT cannot load {path.name}: {str(exc).splitlines()[0][:200]}") from exc
        return ([int(d) for d in interp.get_input_details()[0]["shape"]],
                [int(d) for d in interp.get_output_details()[0]["shape"]])

    @classmethod
    def plain_precision(cls, path: Path) -> str:
        with quiet_native_stderr():
            interp = interpreter_class()(model_path=str(path))
        return "int8" if any(t["dtype"] == np.int8 for t in interp.get_tensor_details()) else "fp32"

    def __init__(self, path: str | Path, card: ModelCard, artifact: dict[str, Any] | None = None, threads: int = 0,
                 xnnpack: bool = True, **options: Any) -> None:
        super().__init__(path, card, artifact, threads, **options)
        cls = interpreter_class()
        kwargs: dict[str, Any] = {"model_path": str(self.path), "num_threads": threads or (os.cpu_count() or 1)}
        if not xnnpack:
            from ai_edge_litert.interpreter import OpResolverType

            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with quiet_native_stderr():
                self.interp = cls(**kwargs)
                self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"LiteRT cannot load {self.path.name}: {str(exc).splitlines()[0][:200]}") from exc
        self._batch = -1

    def _run(self, batch: np.ndarray) -> np.ndarray:
        interp = self.interp
        inp = interp.get_input_details()[0]
        if len(batch) != self._batch:
            interp.resize_tensor_input(inp["index"], list(batch.shape))
            interp.allocate_tensors()
            self._batch = len(batch)
            inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        feed = batch
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            feed = np.clip(np.round(batch / scale + zp), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], feed)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = (y - zp) * scale
        return y

    def _release(self) -> None:
        self.interp = None

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.interp.get_input_details()[0]["dtype"]).name
