"""The export-format interface and registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.errors import ConfigError

#: Runs a batch of model inputs (N x 3 x H x W float32, the card's preprocessing) -> P(class) N x 2.
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class ExportJob:
    """What every format may draw on: the fp32 model and, for int8, a QAT checkpoint or calibration."""

    model: Any  # the fp32 ALNett (torch) model
    card: ModelCard
    out: Path  # the bundle directory being written
    qat_checkpoint: Path | None = None
    calib_images: Path | None = None
    profile: Any = None  # DeviceProfile
    notes: list[str] = field(default_factory=list)


@dataclass
class Artifact:
    file: str  # relative to the bundle directory
    format: str
    precision: str
    runtime: str
    input_layout: str = "NCHW"
    input_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ExportFormat:
    name: str = ""
    precisions: tuple[str, ...] = ()
    runtime: str = ""

    def build(self, job: ExportJob, precision: str) -> Artifact:
        raise NotImplementedError

    def predictor(self, path: Path, artifact: Artifact, card: ModelCard) -> Predictor | None:
        """A runner for the gate on this machine (the device runtime's backend for this format), or
        None when the format cannot run here."""
        from alnett_edge.runtime.base import BACKENDS, backend_class, backend_formats, unavailable_reason

        # the first registered backend that runs this format here (a TensorRT bundle's ONNX: ONNX Runtime)
        backend = next((b for b in BACKENDS if self.name in backend_formats(b) and not unavailable_reason(b)), None)
        if backend is None:
            return None
        options = {"provider": "cpu"} if backend == "onnxruntime" else {}
        return backend_class(backend)(path, card, artifact.to_dict() if artifact else {}, **options).infer


FORMATS: dict[str, ExportFormat] = {}


def register(cls: type[ExportFormat]) -> type[ExportFormat]:
    FORMATS[cls.name] = cls()
    return cls


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown export format {name!r}; formats: {', '.join(FORMATS)}") from None

