"""TensorRT INT8 calibrator (implicit quantization) and its calibration cache, for use on the device.

TensorRT builds engines on the GPU they run on, so this code runs on the Jetson. Explicit
quantization (QDQ ONNX from QAT or ``alnett-edge calibrate``) is the preferred int8 path with
TensorRT 10, where implicit calibration is deprecated; the calibrator serves older TensorRT (8.x,
JetPack 5) and users who calibrate at build time.

What runs without a GPU (and is tested here): :class:`BatchFeeder` (fixed-size contiguous float32
batches from a ``calibrate.reader.CalibrationSet`` or anything with ``inputs`` and ``batches``) and :class:`CalibrationCache` (atomic read/write of TensorRT's
opaque cache). :func:`make_tensorrt_calibrator` needs the ``tensorrt`` and ``cuda-python`` packages and
fails with a one-line error where they are missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.errors import ConfigError
from alnett_edge.tensorrt.backend import (  # noqa: F401 - TensorRTUnavailable re-exported
    TensorRTUnavailable,
    cuda_runtime,
    tensorrt_module,
)

log = logging.getLogger(__name__)


class BatchFeeder:
    """Fixed-size batches (TensorRT calibrators need a constant batch size); a short tail is dropped."""

    def __init__(self, calib: Any, batch_size: int) -> None:
        if batch_size < 1 or batch_size > len(calib.inputs):
            raise ConfigError(f"calibration batch size must be in [1, {len(calib.inputs)}], got {batch_size}")
        self.inputs = calib.inputs
        self.batch_size = batch_size
        self.index = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.inputs.shape[1:])) * self.batch_size * 4

    def next_batch(self) -> np.ndarray | None:
        if self.index + self.batch_size > len(self.inputs):
            return None
        batch = np.ascontiguousarray(self.inputs[self.index : self.index + self.batch_size], dtype=np.float32)
        self.index += self.batch_size
        return batch


class CalibrationCache:
    """TensorRT's calibration cache file (opaque bytes), written atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> bytes | None:
        if self.path.is_file() and self.path.stat().st_size > 0:
            log.info("using TensorRT calibration cache %s", self.path)
            return self.path.read_bytes()
        return None

    def write(self, data: bytes | memoryview) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, self.path)


def make_tensorrt_calibrator(calib: Any, cache_path: str | Path, batch_size: int = 8) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``calib`` to TensorRT, with a calibration cache."""
    trt = tensorrt_module("int8 calibration for TensorRT runs on the Jetson (JetPack's python3-libnvinfer)")
    cudart = cuda_runtime()
    feeder = BatchFeeder(calib, batch_size)
    cache = CalibrationCache(cache_path)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            err, self._ptr = cudart.cudaMalloc(feeder.nbytes)
            if int(err) != 0:
                raise TensorRTUnavailable(f"cudaMalloc of {feeder.nbytes} bytes failed ({err})")

        def get_batch_size(self) -> int:
            return feeder.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = feeder.next_batch()
            if batch is None:
                return None
            cudart.cudaMemcpy(self._ptr, batch.ctypes.data, batch.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            return [int(self._ptr)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(data)

        def __del__(self) -> None:
            ptr = getattr(self, "_ptr", None)
            if ptr is not None:
                cudart.cudaFree(ptr)

    return _Calibrator()
