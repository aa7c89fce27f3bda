"""The export-format interface and registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.devices import DeviceProfile
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
    profile: DeviceProfile | None = None
    layout: str = "auto"  # the dataset layout of calib_images (and of the gate images)
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


#: the arithmetic an int8 artifact is gated with on the export host
KERNELS = "kernels"  # this machine's own int8 kernels (what the device runs, when it is this kind of CPU)
REFERENCE = "reference"  # the exact int8 arithmetic: the QDQ graph unfused (int32 accumulation, no saturation)


class ExportFormat:
    name: str = ""
    precisions: tuple[str, ...] = ()
    #: how the host gates this format's int8 artifacts (every listed arithmetic must pass)
    int8_gate: tuple[str, ...] = (KERNELS,)
    #: why the host's gate only approximates what the device runs (None: the host runs the device's code)
    proxy: str | None = None

    def build(self, job: ExportJob, precision: str) -> Artifact:
        raise NotImplementedError

    @property
    def runtime(self) -> str:
        """The device runtime for this format: the first registered backend that runs it."""
        from alnett_edge.runtime.base import backends_for_format

        return next(iter(backends_for_format(self.name)), "")

    def gate_predictors(self, path: Path, artifact: Artifact, card: ModelCard) -> dict[str, Predictor]:
        """Arithmetic name -> runner for the gate here; empty when the format cannot run here."""
        kinds = self.int8_gate if artifact.precision == "int8" else (KERNELS,)
        runners = {k: self.predictor(path, artifact, card, int8_reference=k == REFERENCE) for k in kinds}
        return {k: p for k, p in runners.items() if p is not None} if all(runners.values()) else {}

    def predictor(self, path: Path, artifact: Artifact | None, card: ModelCard,
                  int8_reference: bool = False) -> Predictor | None:
        """A runner for the gate on this machine (the device runtime's backend for this format), or
        None when the format cannot run here. ``int8_reference``: the exact int8 arithmetic instead of
        this CPU's fused kernels (ONNX Runtime only)."""
        from alnett_edge.runtime.base import backend_class, backend_options, backend_spec, gate_backends, unavailable_reason

        # the first of this format's gate backends that runs here (and can do the exact int8, if asked)
        backend = next((b for b in gate_backends(self.name) if not unavailable_reason(b)
                        and (backend_spec(b).exact_int8 or not int8_reference)), None)
        if backend is None:
            return None
        options = backend_options(backend, {"int8_reference": int8_reference} if int8_reference else {}, cpu=True)
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

