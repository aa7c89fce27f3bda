"""The device runtime interface and its backend registry (torch-free).

A backend is one file with one :class:`Runtime` subclass and one entry in :data:`BACKENDS`
(``name -> "module:Class"``, imported only when used, so a Raspberry Pi never imports the PyTorch
or TensorRT backends). Every backend takes the card's preprocessed batch (N x C x H x W float32, or
NHWC when the card says so) and returns class probabilities N x len(class_names) as float32.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.errors import AlnettError, ConfigError, DataError

log = logging.getLogger(__name__)


class RuntimeUnavailable(AlnettError):
    """The asked backend cannot run here (library missing, no GPU) or cannot run this artifact."""


class InputError(DataError):
    """A batch that does not match the model card (shape, channels, dtype)."""


#: backend name -> ("module:Class", artifact formats it runs); a new backend is one file plus one line
#: here. The formats live here so choosing a backend never imports one that is not used.
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("alnett_edge.runtime.ort_backend:OrtRuntime", ("onnx", "tensorrt")),
    "litert": ("alnett_edge.runtime.litert_backend:LiteRTRuntime", ("tflite",)),
    "tensorrt": ("alnett_edge.runtime.tensorrt_backend:TensorRTRuntime", ("tensorrt",)),
    "pytorch": ("alnett_edge.model.torch_backend:TorchRuntime", ("checkpoint",)),  # the fp32 reference; needs [train]
}


def _entry(name: str) -> tuple[str, tuple[str, ...]]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_formats(name: str) -> tuple[str, ...]:
    return _entry(name)[1]


def backend_class(name: str) -> type[Runtime]:
    module, cls = _entry(name)[0].split(":")
    return getattr(importlib.import_module(module), cls)


def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run on this machine, else why not (one line)."""
    try:
        return backend_class(name).unavailable()
    except ImportError as exc:
        extra = " (pip install 'alnett-edge[train]')" if name == "pytorch" else ""
        return f"cannot import its module ({exc}){extra}"


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Runtime:
    """One loaded model artifact on one backend. Use as a context manager or call :meth:`close`."""

    name: ClassVar[str] = ""
    #: whether a batch larger than max_batch must be split (fixed-profile engines)
    max_batch: int | None = None

    def __init__(self, path: str | Path, card: ModelCard, artifact: dict[str, Any] | None = None,
                 threads: int = 0, **options: Any) -> None:
        self.path = Path(path)
        self.card = card
        self.artifact = dict(artifact or {})
        self.threads = threads
        self.options = options
        self.bundle: Any = None  # set by the loader: the Bundle this artifact came from
        self._closed = False

    # -- what a backend implements -------------------------------------------------------------------
    @classmethod
    def unavailable(cls) -> str | None:
        """None when this backend's library (and hardware) is present here, else the reason."""
        return None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a validated, contiguous float32 batch."""
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def op_profile(self, batch: np.ndarray, runs: int = 20) -> list[dict[str, Any]] | None:
        """Time per operator type over ``runs`` calls, largest first; None when the backend cannot."""
        return None

    # -- the common part ----------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.name

    @property
    def precision(self) -> str:
        return str(self.artifact.get("precision", "fp32"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w = self.card.input.size
        return (3, h, w) if self.card.input.layout == "NCHW" else (h, w, 3)

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise InputError(f"expected a numpy batch, got {type(batch).__name__}")
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape or batch.shape[0] < 1:
            raise InputError(f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"({self.card.input.layout}, the model card), got {tuple(batch.shape)}")
        if not np.issubdtype(batch.dtype, np.floating):
            raise InputError(f"expected float32 preprocessed inputs, got {batch.dtype} (run preprocess first)")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes, float32) for a preprocessed batch."""
        if self._closed:
            raise RuntimeUnavailable(f"{self.name} runtime for {self.path.name} is closed")
        batch = self.check_batch(batch)
        step = self.max_batch or len(batch)
        if len(batch) <= step:
            return self._run(batch)
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)])

    def warmup(self, n: int = 3, batch: int = 1) -> None:
        x = np.zeros((batch, *self.input_shape), np.float32)
        for _ in range(n):
            self.infer(x)

    def close(self) -> None:
        if not self._closed:
            self._release()
            self._closed = True

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.path.name} ({self.precision}) on {self.name}"
