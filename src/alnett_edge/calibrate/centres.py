"""int8 for the learned nucleus-centre detector (``alnett-edge detector quantize``): ONNX Runtime's static
QDQ quantization (uint8 activations, int8 per-channel weights, min-max ranges) calibrated on frames
prepared exactly as :class:`~alnett_edge.vision.centres.CentreFinder` prepares them (resampled to the
card's µm per pixel, channels less their medians, padded), with the GEMM layers' weights fitted to
AVX2's int16 pairs (:mod:`alnett_edge.calibrate.int8_safety`), so a CPU without VNNI computes what a
VNNI CPU or an ARM core does. The int8 file carries the fp32 model's card, its ``training`` noting how
it was made; ``builtin`` and ``[detector] centres`` take it as they take the fp32 one.

Whether it is faster depends on the CPU: on a 2-core AMD EPYC Zen 4 (AVX-512 VNNI) the network ran in
about half the time (docs/engineering/crowded.md); ONNX Runtime's int8 kernels are not faster than fp32
on AVX2 without VNNI (``../shared/notes/toolchain-facts.md``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from alnett_edge.calibrate.ptq import quantize_qdq
from alnett_edge.calibrate.reader import OrtCalibrationReader
from alnett_edge.card import CentreCard
from alnett_edge.errors import ConfigError, DataError
from alnett_edge.model.centres import write_centres_onnx
from alnett_edge.train.centres import load_frames
from alnett_edge.vision.centres import CentreFinder, model_path, padded_input

#: calibration frames used at most (evenly spaced over all the sets given)
MAX_FRAMES = 48


@dataclasses.dataclass
class _Inputs:
    """Prepared network inputs, one frame a batch (their sizes differ), as ``OrtCalibrationReader`` reads."""

    inputs: list[np.ndarray]

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        yield from self.inputs


def calibration_inputs(sources: list[Path], card: CentreCard, images: Path | None = None,
                       um_per_px: float | None = None, limit: int = MAX_FRAMES) -> list[np.ndarray]:
    """The network's inputs (1 x 3 x H x W float32) for up to ``limit`` frames of ``sources`` (anything
    ``field-eval`` reads; an equal share of each, evenly spaced), prepared as the runtime prepares a frame.
    A folder's pixel size is estimated from the frames chosen in it unless ``um_per_px`` is given."""
    if not sources:
        raise DataError("no calibration frames")
    frames = []
    for src in sources:  # an equal share of each set, evenly spaced, chosen before any frame is read
        frames += load_frames(src, card, um_per_px, images, spaced=math.ceil(limit / len(sources)))
    return [padded_input(frame.rgb, card) for frame in frames[:limit]]


def quantize_centres(model: str | Path, sources: list[Path], out: Path, images: Path | None = None,
                     um_per_px: float | None = None, limit: int = MAX_FRAMES) -> dict[str, Any]:
    """Write ``out``: the centre detector ``model`` (``builtin`` or an .onnx) in int8, calibrated on
    ``sources``. Returns what the card's ``training["int8"]`` records."""
    src = model_path(model)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out must be an .onnx file, got {out.name}")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out would overwrite the model it quantizes ({src.name})")
    card = CentreFinder(src).card
    inputs = calibration_inputs(sources, card, images, um_per_px, limit)
    proto = onnx.load(str(src))
    q = quantize_qdq(src, OrtCalibrationReader(_Inputs(inputs), proto.graph.input[0].name), "minmax",
                     "asymmetric", fit_avx2=True, proto=proto)
    info = {"from": src.name, "frames": len(inputs), "sources": [str(s) for s in sources], "scheme": "asymmetric",
            "calibration": "minmax", "format": "onnx-qdq", "fit_avx2": True}
    write_centres_onnx(q, dataclasses.replace(card, training={**card.training, "int8": info}), out)
    return info
