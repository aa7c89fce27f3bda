"""The device runtime interface and its backend registry (torch-free).

A backend is one file with one :class:`Runtime` subclass and one :class:`BackendSpec` entry in
:data:`BACKENDS` (its module, formats, options, install and profiling hints; imported only when used, so a Raspberry Pi never imports the PyTorch
or TensorRT backends). Every backend takes the card's preprocessed batch (N x C x H x W float32, or
NHWC when the card says so) and returns class probabilities N x len(class_names) as float32.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alnett_edge.bundle import Bundle
from alnett_edge.card import ModelCard
from alnett_edge.data.preprocess import with_tta
from alnett_edge.errors import AlnettError, ConfigError, DataError
from alnett_edge.files import sha256_file
from alnett_edge.metrics import softmax
from alnett_edge.plugins import registered_name

log = logging.getLogger(__name__)

#: calls timed each way (the whole batch in one call, then one sample a call) before a backend that
#: tunes its batching keeps the faster way for that batch size; the first call of each way may
#: include a re-allocation, so the faster of the calls counts
BATCH_TRIALS = 3


class RuntimeUnavailable(AlnettError):
    """The asked backend cannot run here (library missing, no GPU) or cannot run this artifact."""


class InputError(DataError):
    """A batch that does not match the model card (shape, channels, dtype)."""


@dataclass(frozen=True)
class BackendSpec:
    """Everything the toolkit knows about a backend, in one place (nothing else names a backend)."""

    target: str  # "module:Class", imported only when the backend is used
    formats: tuple[str, ...]  # artifact formats it runs
    options: tuple[str, ...] = ()  # keyword options it accepts; others are dropped when it is opened
    install: str = ""  # how to get it, said when it cannot be imported
    profiling: str = ""  # where per-operator times come from when op_profile() returns None
    exact_int8: bool = False  # can compute the exact int8 reference arithmetic (int8_reference=True)
    reference: bool = False  # the training framework's fp32 reference (bench's agreement yardstick)
    cpu_options: tuple[tuple[str, Any], ...] = ()  # options that pin it to the CPU (gate, fp32 reference)
    plain_files: tuple[str, ...] = ()  # suffixes of card-less model files it can inspect (speed anchors)
    host_gate: bool = True  # runs its formats' artifacts on the export host for the gate (False: built on the device)
    dense: str = ""  # "module:Class" of its DenseModel (a fully convolutional model at any input size), if any


#: backend name -> spec. A new backend is one file plus one entry here. The order is the default
#: preference when a bundle's device profile lists no runtimes.
BACKENDS: dict[str, BackendSpec] = {
    "tensorrt": BackendSpec("alnett_edge.tensorrt.backend:TensorRTRuntime", ("tensorrt",),
                            install="TensorRT comes with JetPack (python3-libnvinfer)",
                            profiling="trtexec --dumpProfile", host_gate=False),
    "onnxruntime": BackendSpec("alnett_edge.runtime.ort_backend:OrtRuntime", ("onnx", "tensorrt"),
                               options=("provider", "int8_reference"), install="pip install onnxruntime",
                               exact_int8=True, cpu_options=(("provider", "cpu"),), plain_files=(".onnx",),
                               dense="alnett_edge.runtime.ort_backend:OrtDense"),
    "litert": BackendSpec("alnett_edge.runtime.litert_backend:LiteRTRuntime", ("tflite",), options=("xnnpack",),
                          install="pip install ai-edge-litert (or tflite-runtime)",
                          profiling="LiteRT's benchmark_model --enable_op_profiling=true", plain_files=(".tflite",)),
    "pytorch": BackendSpec("alnett_edge.model.torch_backend:TorchRuntime", ("checkpoint",), options=("device",),
                           install="pip install 'alnett-edge[train]'", profiling="torch.profiler", reference=True),
}


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_formats(name: str) -> tuple[str, ...]:
    return backend_spec(name).formats


def backends_for_format(fmt: str) -> list[str]:
    """The backends that run an artifact format, in the default order."""
    return [b for b, spec in BACKENDS.items() if fmt in spec.formats]


def gate_backends(fmt: str) -> list[str]:
    """The backends that can gate an artifact of this format on the export host, in the default order
    (the format -> backend link is the backends' ``formats``, read in this one direction)."""
    return [b for b in backends_for_format(fmt) if BACKENDS[b].host_gate]


def backend_class(name: str) -> type[Runtime]:
    module, cls = backend_spec(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


def backend_options(name: str, options: dict[str, Any], cpu: bool = False) -> dict[str, Any]:
    """The options this backend accepts (the rest dropped), with its CPU pinning when ``cpu``."""
    spec = backend_spec(name)
    merged = {**dict(spec.cpu_options), **options} if cpu else dict(options)
    return {k: v for k, v in merged.items() if k in spec.options}


def unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run on this machine, else why not (one line)."""
    try:
        return backend_class(name).unavailable()
    except ImportError as exc:
        hint = backend_spec(name).install
        return f"cannot import its module ({exc})" + (f" ({hint})" if hint else "")



class DenseModel:
    """A fully convolutional model run at whatever input size a frame gives (a learned detector's heat
    maps), on one backend: a float32 NCHW batch in, every output out in the file's order. A backend that
    can run one names its class in its spec's ``dense``; the model file's suffix picks the backend (its
    ``plain_files``)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path = path
        self.threads = threads

    def metadata(self) -> dict[str, str]:
        """The file's string metadata (a learned detector's card)."""
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


def open_dense(path: str | Path, threads: int = 0) -> DenseModel:
    """``path`` opened on the first backend (in :data:`BACKENDS` order) that runs such files at any input
    size and can run here; a one-line error when none can."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    names = [b for b, spec in BACKENDS.items() if spec.dense and path.suffix.lower() in spec.plain_files]
    if not names:
        kinds = sorted({s for spec in BACKENDS.values() if spec.dense for s in spec.plain_files})
        raise ConfigError(f"{path.name}: a learned detector is a {' or '.join(kinds)} file")
    why = []
    for name in names:
        reason = unavailable_reason(name)
        if reason is None:
            module, cls = backend_spec(name).dense.split(":")
            return getattr(importlib.import_module(module), cls)(path, threads)
        why.append(f"{name}: {reason}")
    raise RuntimeUnavailable(f"no backend here can run {path.name} ({'; '.join(why)})")


class Runtime:
    """One loaded model artifact on one backend. Use as a context manager or call :meth:`close`."""

    @property
    def name(self) -> str:
        """This backend's name: its key in :data:`BACKENDS` (written nowhere else)."""
        return registered_name(type(self), BACKENDS)

    #: whether a batch larger than max_batch must be split (fixed-profile engines)
    max_batch: int | None = None
    #: whether a batch may run faster as one call per sample: a CPU backend that runs each operator over
    #: the whole batch, where a model's early, large activations outgrow the cache at batch 8 but not at
    #: batch 1. The first calls at each batch size time both ways and the faster one is kept.
    tunes_batching: ClassVar[bool] = False

    def __init__(self, path: str | Path, card: ModelCard, artifact: dict[str, Any] | None = None,
                 threads: int = 0, **options: Any) -> None:
        self.path = Path(path)
        self.card = card
        self.artifact = dict(artifact or {})
        self.threads = threads
        self.options = options
        self.bundle: Bundle | None = None  # set by the loader: the bundle this artifact came from
        self._closed = False
        self._trials: dict[int, dict[int, list[float]]] = {}  # batch size -> {samples a call: seconds}
        self.batch_plan: dict[int, int] = {}  # batch size -> samples a call, once tuned

    # -- what a backend implements -------------------------------------------------------------------
    @classmethod
    def unavailable(cls) -> str | None:
        """None when this backend's library (and hardware) is present here, else the reason."""
        return None

    @classmethod
    def io_shapes(cls, path: Path) -> tuple[list[Any], list[Any]]:
        """The first input's and first output's shapes of a card-less model file (a speed anchor;
        a symbolic or dynamic axis is not an int). Backends listing ``plain_files`` implement it."""
        raise NotImplementedError

    @classmethod
    def plain_precision(cls, path: Path) -> str:
        """The precision of a card-less model file (a speed anchor), as far as this backend can tell."""
        return "fp32"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N x classes) for a validated, contiguous float32 batch; :meth:`infer` turns them
        into probabilities with the card's temperature, the same for every backend."""
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def memory_note(self) -> str | None:
        """How this backend holds memory between calls (said beside bench's RSS), when it matters."""
        return None

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

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's logits (N x classes, float32) for a preprocessed batch: with the card's test-time
        augmentation, the mean over its views."""
        if self._closed:
            raise RuntimeUnavailable(f"{self.name} runtime for {self.path.name} is closed")
        return with_tta(self._run_chunked, self.check_batch(batch), self.card.input).astype(np.float32)

    def _run_chunked(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self.max_batch or not self.tunes_batching or n == 1:
            return self._run_steps(batch, self.max_batch or n)
        if n in self.batch_plan:
            return self._run_steps(batch, self.batch_plan[n])
        timed = self._trials.setdefault(n, {n: [], 1: []})
        step = n if len(timed[n]) < BATCH_TRIALS else 1
        t0 = time.perf_counter()
        out = self._run_steps(batch, step)
        timed[step].append(time.perf_counter() - t0)
        if len(timed[1]) == BATCH_TRIALS:
            self.batch_plan[n] = min(timed, key=lambda k: min(timed[k]))
            log.debug("%s: %s", self.path.name, self.batching_note())
        return out

    def _run_steps(self, batch: np.ndarray, step: int) -> np.ndarray:
        if len(batch) <= step:
            return np.asarray(self._run(batch), np.float32)
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)]).astype(np.float32)

    def batching_note(self) -> str | None:
        """How each tuned batch size runs, with the calls' times it was chosen on."""
        parts = []
        for n, step in sorted(self.batch_plan.items()):
            whole, single = (1e3 * min(self._trials[n][k]) for k in (n, 1))
            parts.append(f"b{n} as {n} calls of 1, {single:.2f} ms against one call {whole:.2f}" if step == 1 else
                         f"b{n} as one call, {whole:.2f} ms against {n} calls of 1 {single:.2f}")
        return "; ".join(parts) or None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes, float32) for a preprocessed batch: the softmax of the
        logits divided by the card's calibration temperature (1 when it has none)."""
        return softmax(self.logits(batch), self.card.temperature)

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

    def sha256(self) -> str:
        """The artifact's SHA-256 (its bundle manifest's, else hashed): the model hash each row carries."""
        files = self.bundle.manifest.get("files", {}) if self.bundle is not None else {}
        return files.get(self.path.name) or sha256_file(self.path)
