"""Scale-true crops and per-cell colour normalisation (issue 11): the card records the physical side of
its input canvas; a cell of known size reaches the model at that scale whatever the camera; a lamp or
stain-strength gain does not change what a ``stain = "cell"`` model sees."""

from __future__ import annotations

import csv
import dataclasses

import cv2
import numpy as np
import pytest
from conftest import SHARED, require_shared

from alnett_edge.card import InputSpec, ModelCard
from alnett_edge.data.preprocess import load_image, normalize, prepare
from alnett_edge.data.scale import HEM_CELL_UM, cell_diameters_px, measure_canvas_um
from alnett_edge.data.synth import CELL_UM_PER_PX, REF_SIZE, Stain, synth_cell
from alnett_edge.errors import CheckpointError
from alnett_edge.vision.cells import QualityConfig, cell_image, fits_canvas, quality_reason
from alnett_edge.vision.detector import CellDetector

CNMC = "cnmc-sample"


def test_canvas_of_the_real_cnmc_sample_is_measured_from_its_normal_cells():
    root = require_shared(SHARED / CNMC)
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    images = np.stack([load_image(root / r["filename"]) for r in rows])
    labels = np.array([1 if r["label"] == "all" else 0 for r in rows])
    info = measure_canvas_um(images, labels, reference_class=0)
    diam = cell_diameters_px(images)
    # the real sample keeps physical size: blasts are larger than normal cells on the same canvas
    assert np.median(diam[labels == 1]) > np.median(diam[labels == 0]) * 1.1
    assert info["cells"] == 33 and 185 < info["reference_median_px"] < 195
    assert info["canvas_um"] == pytest.approx(450 * HEM_CELL_UM / info["reference_median_px"], rel=1e-3)


def test_synthetic_cells_measure_to_the_generator_scale():
    rng = np.random.default_rng(1)
    stain = Stain((1.0, 1.0, 1.0), 1.0)
    cells = np.stack([synth_cell(rng, lab, 225, 0.4, stain) for lab in [0] * 30 + [1] * 10])
    info = measure_canvas_um(cells, np.array([0] * 30 + [1] * 10), reference_class=0)
    assert info["canvas_um"] == pytest.approx(REF_SIZE * CELL_UM_PER_PX, rel=0.05)  # any cell image size


def _disc_frame(um_per_px: float, diameter_um: float) -> np.ndarray:
    """A pale field with one violet round cell of known size (and some pink red cells)."""
    side = int(round(60 / um_per_px))
    frame = np.full((side, side, 3), (225, 214, 220), np.uint8)
    for k, (x, y) in enumerate([(0.2, 0.2), (0.8, 0.25), (0.25, 0.8), (0.75, 0.8)]):
        cv2.circle(frame, (int(x * side), int(y * side)), int(3.9 / um_per_px), (214, 168, 168), -1)
    cv2.circle(frame, (side // 2, side // 2), int(round(diameter_um / um_per_px / 2)), (120, 60, 170), -1)
    return frame


@pytest.mark.parametrize("um_per_px", [0.075, 0.3])
def test_a_cell_reaches_the_model_at_the_card_scale_on_two_optics(um_per_px):
    spec = InputSpec(size=(96, 96), canvas_um=24.0)
    frame = _disc_frame(um_per_px, 10.0)
    det = CellDetector(um_per_px=um_per_px)
    found = [d for d in det.detect(frame) if d.box[0] < frame.shape[1] / 2 < d.box[2]]
    assert len(found) == 1
    canvas_px = spec.canvas_um / um_per_px
    assert quality_reason(frame, found[0], QualityConfig(min_sharpness=0), canvas_px) is None
    prepared = prepare(cell_image(frame, found[0], canvas_px), spec)
    diameter_in = cell_diameters_px(prepared[None])[0]
    assert diameter_in == pytest.approx(10.0 * 96 / 24.0, rel=0.08)  # 40 input px at either optics


def test_a_cell_larger_than_the_canvas_is_abstained():
    frame = _disc_frame(0.1, 18.0)
    (det,) = [d for d in CellDetector(um_per_px=0.1).detect(frame) if d.box[0] < frame.shape[1] / 2 < d.box[2]]
    assert fits_canvas(det, 24.0 / 0.1) and not fits_canvas(det, 12.0 / 0.1)
    assert quality_reason(frame, det, QualityConfig(min_sharpness=0), 12.0 / 0.1) == "larger than the model's field"


def test_cell_stain_normalisation_cancels_a_lamp_gain():
    rng = np.random.default_rng(4)
    cell = prepare(synth_cell(rng, 1, 128, 0.4), InputSpec(size=(64, 64)))
    brighter = np.where(cell > 0, np.clip(cell.astype(np.float32) * 1.5, 0, 255), 0).astype(np.uint8)
    spec = InputSpec(size=(64, 64), stain="cell")
    a, b = normalize(cell, spec), normalize(brighter, spec)
    fg = cell.max(axis=2) > 10
    assert np.abs(a - b).transpose(1, 2, 0)[fg].mean() < 0.05  # uint8 rounding only
    plain = InputSpec(size=(64, 64))
    assert np.abs(normalize(cell, plain) - normalize(brighter, plain)).transpose(1, 2, 0)[fg].mean() > 1.0
    assert abs(a.transpose(1, 2, 0)[fg].mean()) < 1e-3 and (a.transpose(1, 2, 0)[~fg] == 0).all()


def test_card_carries_scale_and_stain_and_old_cards_still_load():
    card = ModelCard("alnett-s", {"a": 1}, input=InputSpec(canvas_um=21.4, stain="cell"))
    back = ModelCard.from_json(card.to_json())
    assert back.input.canvas_um == 21.4 and back.input.stain == "cell"
    old = card.to_dict()
    del old["input"]["canvas_um"], old["input"]["stain"]
    assert ModelCard.from_dict(old).input == InputSpec()  # a card from before: no scale, dataset mean/std
    bad = card.to_dict()
    bad["input"]["stain"] = "macenko"
    with pytest.raises(CheckpointError, match="stain"):
        ModelCard.from_dict(bad)
    with pytest.raises(CheckpointError, match="canvas_um"):
        dataclasses.replace(InputSpec(), canvas_um=-1.0).validate()
