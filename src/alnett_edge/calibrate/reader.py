"""Calibration images -> model-input batches, preprocessed by the model card (numpy/OpenCV, no torch).

One reader feeds every backend: ONNX Runtime's ``CalibrationDataReader``, a LiteRT representative
dataset, and a TensorRT INT8 calibrator on the device (:mod:`alnett_edge.tensorrt.calibrator`).

Checks, each a one-line :class:`DataError` naming the file: an empty or missing folder; an image that
is not 3-channel colour (grayscale or RGBA cell images mean the wrong folder or a broken export); an
image whose sides are outside those of the images the model was trained on, widened by half
(:func:`alnett_edge.data.preprocess.size_refusal`; e.g. 640x480 smear frames instead of 257-px cell
crops) unless ``allow_any_size``. Fewer than
``MIN_IMAGES`` images is allowed with a warning, since int8 ranges from a handful of cells are noisy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.data.preprocess import load_image, preprocess, training_sides
from alnett_edge.data.sources import Sample
from alnett_edge.errors import DataError
from alnett_edge.evaluation import images_of, training_split

log = logging.getLogger(__name__)

MIN_IMAGES = 300


def calibration_files(root: str | Path, layout: str = "auto") -> list[Sample]:
    """Images of any labelled layout, or else every image below ``root`` (labels are not needed)."""
    return images_of(root, layout, "calibration images")


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs (N x C x H x W or N x H x W x C float32, per the card)."""

    inputs: np.ndarray
    files: list[Path]
    patients: set[str]
    warnings: list[str]

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        for i in range(0, len(self.inputs), batch_size):
            yield self.inputs[i : i + batch_size]


def load_calibration_set(root: str | Path, card: ModelCard, limit: int | None = MIN_IMAGES, seed: int = 0,
                         allow_any_size: bool = False, layout: str = "auto") -> CalibrationSet:
    return calibration_set_from_samples(calibration_files(root, layout), card, limit, seed, allow_any_size)


def training_calibration_set(card: ModelCard, limit: int = MIN_IMAGES) -> CalibrationSet:
    """Calibration images from the training side of the split the model was trained with."""
    split = training_split(card, "calibration without calibration images")
    # the model's own training images: decoded as training decoded them (no size or channel check)
    return calibration_set_from_samples(split.train, card, limit, strict=False)


def calibration_set_from_samples(samples: list[Sample], card: ModelCard, limit: int | None = MIN_IMAGES,
                                 seed: int = 0, allow_any_size: bool = False, strict: bool = True) -> CalibrationSet:
    if limit is not None and len(samples) > limit:
        idx = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(idx)]
    expected = training_sides(card.training)
    inputs, files = [], []
    for s in samples:
        img = load_image(s.path, strict, expected, allow_any_size, "calibration image")
        inputs.append(preprocess(img, card.input))
        files.append(s.path)
    warnings = []
    if len(inputs) < MIN_IMAGES:
        msg = f"only {len(inputs)} calibration images (at least {MIN_IMAGES} recommended): int8 ranges may be noisy"
        log.warning(msg)
        warnings.append(msg)
    patients = {s.patient_id for s in samples if s.patient_id is not None}
    return CalibrationSet(np.stack(inputs), files, patients, warnings)


def check_patient_overlap(calib: CalibrationSet, eval_samples: list[Sample], allow: bool = False) -> list[str]:
    """Patients both in the calibration and the evaluation set (an error unless ``allow``)."""
    overlap = sorted(calib.patients & {s.patient_id for s in eval_samples if s.patient_id is not None})
    if overlap and not allow:
        raise DataError(
            f"{len(overlap)} patient(s) are in both the calibration and the evaluation images "
            f"(e.g. {', '.join(overlap[:3])}); use patient-disjoint sets or pass --allow-patient-overlap"
        )
    return overlap


class OrtCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over a :class:`CalibrationSet`."""

    def __init__(self, calib: CalibrationSet, input_name: str, batch_size: int = 1) -> None:
        from onnxruntime.quantization import CalibrationDataReader

        # Subclass at run time so this module imports without onnxruntime on a LiteRT-only device.
        self.__class__ = type("OrtCalibrationReader", (OrtCalibrationReader, CalibrationDataReader), {})
        self.calib, self.input_name, self.batch_size = calib, input_name, batch_size
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = self.calib.batches(self.batch_size)


def litert_representative_dataset(calib: CalibrationSet, layout: str = "NCHW"):  # noqa: ANN201 - generator fn
    """A representative-dataset callable for LiteRT converters: yields ``[batch of 1]`` per image."""

    def gen() -> Iterator[list[np.ndarray]]:
        for batch in calib.batches(1):
            yield [batch.transpose(0, 2, 3, 1) if layout == "NHWC" and batch.shape[1] == 3 else batch]

    return gen
