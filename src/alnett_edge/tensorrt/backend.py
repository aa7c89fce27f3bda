"""TensorRT backend: runs the engine ``alnett-edge build-engine`` built on this device from the
bundle's ONNX (engines do not move between GPUs or TensorRT versions). Written against the TensorRT
10 Python API (``deserialize_cuda_engine``, named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) with cuda-python for memory and streams. Without
TensorRT or a GPU it fails with a one-line :class:`TensorRTUnavailable`.

The engine key (TensorRT version, GPU, compute capability, ONNX sha256) is checked on load: an engine
from another device or another model is an :class:`EngineMismatch` saying to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.errors import AlnettError
from alnett_edge.files import sha256_file
from alnett_edge.runtime.base import Runtime, RuntimeUnavailable

ENGINE_DIR = "engines"


class TensorRTUnavailable(RuntimeUnavailable):
    """TensorRT (or its CUDA runtime bindings, or a GPU) is not present on this machine."""


class EngineMismatch(AlnettError):
    """An engine built for another GPU, TensorRT version or model."""


def engine_key(trt_version: str, gpu_name: str, compute_capability: str, onnx_sha256: str) -> dict[str, str]:
    key = {"tensorrt": trt_version, "gpu": gpu_name, "compute_capability": compute_capability, "onnx_sha256": onnx_sha256}
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key


def check_engine_key(recorded: dict[str, str], current: dict[str, str]) -> None:
    diffs = [f"{k}: engine {recorded.get(k)!r} vs here {current[k]!r}" for k in
             ("tensorrt", "gpu", "compute_capability", "onnx_sha256") if recorded.get(k) != current[k]]
    if diffs:
        raise EngineMismatch("the TensorRT engine was built elsewhere (" + "; ".join(diffs) +
                             "); rebuild it here with: alnett-edge build-engine BUNDLE")


def tensorrt_module(purpose: str = "TensorRT engines run on the Jetson (JetPack provides python3-libnvinfer)") -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed here; {purpose}") from exc
    return trt


def cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise TensorRTUnavailable("TensorRT from Python needs cuda-python (pip install cuda-python)") from exc
    return cudart


def _check(result: tuple[Any, ...], what: str) -> Any:
    err, *rest = result
    if int(err) != 0:
        raise TensorRTUnavailable(f"CUDA {what} failed ({err})")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity() -> tuple[str, str]:
    props = _check(cuda_runtime().cudaGetDeviceProperties(0), "device query (no GPU?)")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def current_key(onnx_path: Path) -> dict[str, str]:
    trt = tensorrt_module()
    name, cc = gpu_identity()
    return engine_key(trt.__version__, name, cc, sha256_file(onnx_path))


def find_engine(onnx_path: Path) -> Path:
    """The engine built on this device for ``onnx_path`` (a bundle's TensorRT ONNX)."""
    key = current_key(onnx_path)
    engine = onnx_path.parent / ENGINE_DIR / f"model.{key['id']}.engine"
    if not engine.is_file():
        raise TensorRTUnavailable(f"no TensorRT engine for {onnx_path.name} on this device yet: "
                                  f"run alnett-edge build-engine {onnx_path.parent}")
    recorded = json.loads(engine.with_suffix(".json").read_text())
    check_engine_key(recorded, key)
    return engine


class TensorRTRuntime(Runtime):

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            tensorrt_module()
            cuda_runtime()
            gpu_identity()
        except TensorRTUnavailable as exc:
            return str(exc)
        return None

    def __init__(self, path: str | Path, card: ModelCard, artifact: dict[str, Any] | None = None, threads: int = 0,
                 **options: Any) -> None:
        super().__init__(path, card, artifact, threads, **options)
        trt = tensorrt_module()
        self._cudart = cuda_runtime()
        engine_path = self.path if self.path.suffix == ".engine" else find_engine(self.path)
        meta = engine_path.with_suffix(".json")
        self.max_batch = int(json.loads(meta.read_text()).get("max_batch", 1)) if meta.is_file() else 1
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        self.engine = self._trt_runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"TensorRT could not deserialize {engine_path.name} (see its log)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.stream = _check(self._cudart.cudaStreamCreate(), "stream creation")
        per_image = int(np.prod(self.input_shape)) * 4
        n_classes = len(self.card.class_names)
        self._in = _check(self._cudart.cudaMalloc(per_image * self.max_batch), "input allocation")
        self._out = _check(self._cudart.cudaMalloc(4 * n_classes * self.max_batch), "output allocation")
        self.context.set_tensor_address(self.input_name, int(self._in))
        self.context.set_tensor_address(self.output_name, int(self._out))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        out = np.empty((len(batch), len(self.card.class_names)), np.float32)
        _check(cudart.cudaMemcpyAsync(self._in, batch.ctypes.data, batch.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "copy to GPU")
        if not self.context.execute_async_v3(self.stream):
            raise AlnettError("TensorRT execution failed (see its log)")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._out, out.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "copy from GPU")
        _check(cudart.cudaStreamSynchronize(self.stream), "stream sync")
        return out

    def _release(self) -> None:
        for ptr in (self._in, self._out):
            self._cudart.cudaFree(ptr)
        self._cudart.cudaStreamDestroy(self.stream)
        self.context = self.engine = None
