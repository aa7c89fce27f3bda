"""Out-of-distribution abstain (issue 12): the card records what the training cells look like; a crop of
a red cell, a re-stained cell or a cell at the wrong scale is abstained, not classified."""

import cv2
import numpy as np
import pytest

from alnett_edge.data.appearance import crop_features, fit_appearance, ood_distance
from alnett_edge.data.preprocess import load_image, prepare
from alnett_edge.data.sources import load_samples
from alnett_edge.model import read_card


@pytest.fixture(scope="module")
def card_and_cells(trained):
    cfg, result = trained
    card = read_card(result.best)
    cells = [prepare(load_image(s.path), card.input) for s in load_samples(cfg.data)[:120]]
    return card, cells


def red_cell(card):
    """A red blood cell on the model's canvas: a 7.5 µm pink disc with a paler centre, no nucleus."""
    side = card.input.size[0]
    px = side / card.input.canvas_um
    img = np.zeros((side, side, 3), np.uint8)
    c = side // 2
    cv2.circle(img, (c, c), int(round(3.75 * px)), (222, 118, 124), -1)
    cv2.circle(img, (c, c), int(round(1.5 * px)), (236, 170, 172), -1)
    return img


def test_training_records_the_appearance_and_its_cells_pass(card_and_cells):
    card, cells = card_and_cells
    app = card.appearance
    assert app["features"] == ["L*", "a*", "b*", "log10 area µm²"] and app["n"] > 100
    assert app["max_distance"] > app["p99.5_distance"] > 0
    d = np.array([ood_distance(app, c, card.input.mask_threshold) for c in cells])
    assert (d <= app["max_distance"]).mean() >= 0.98


def test_a_red_cell_a_restained_cell_and_a_wrong_scale_are_out_of_distribution(card_and_cells):
    card, cells = card_and_cells
    app, t = card.appearance, card.input.mask_threshold
    assert ood_distance(app, red_cell(card), t) > app["max_distance"]
    restained = [np.ascontiguousarray(c[..., [1, 2, 0]]) for c in cells[:20]]  # a very different stain
    assert all(ood_distance(app, c, t) > app["max_distance"] for c in restained)
    # the same cells at a third of their size: a cell at the wrong scale
    side = cells[0].shape[0]
    small = []
    for c in cells[:20]:
        s = cv2.resize(c, (side // 3, side // 3), interpolation=cv2.INTER_AREA)
        small.append(np.pad(s, ((side // 3, side - 2 * (side // 3)), (side // 3, side - 2 * (side // 3)), (0, 0))))
    assert np.mean([ood_distance(app, c, t) > app["max_distance"] for c in small]) >= 0.9
    assert ood_distance(app, np.zeros_like(cells[0]), t) == float("inf")  # no cell pixels at all


def test_a_stain_normalising_card_ignores_brightness_but_not_a_red_cell_or_another_hue(card_and_cells):
    """A ``stain = "cell"`` card's model cancels a brightness gain, so its appearance check does too
    (skewness and chromaticity instead of L*a*b*), while a red cell and swapped channels stay far."""
    card, cells = card_and_cells
    t = card.input.mask_threshold
    fit, held_out = np.stack(cells[:90]), cells[90:]
    lab, free = fit_appearance(fit, card.input.canvas_um, t), fit_appearance(fit, card.input.canvas_um, t, stain="cell")
    assert free["stain"] == "cell" and free["features"][:3] == ["skew R", "skew G", "skew B"]

    def brighter(c, g):
        return np.where(c.max(-1, keepdims=True) > t, np.clip(c * g, 0, 255), 0).astype(np.uint8)

    def beyond(app, imgs):
        return np.mean([ood_distance(app, c, t) > app["max_distance"] for c in imgs])

    assert beyond(free, held_out) == 0 and beyond(lab, held_out) == 0
    lamp = [brighter(c, 1.8) for c in held_out]
    assert beyond(free, lamp) == 0 and beyond(lab, lamp) >= 0.9  # the colour check calls a brighter lamp far
    assert beyond(free, [np.ascontiguousarray(c[..., [1, 2, 0]]) for c in held_out]) == 1
    assert ood_distance(free, red_cell(card), t) > free["max_distance"]


def test_without_a_scale_the_size_is_left_out_and_few_cells_give_no_appearance():
    rng = np.random.default_rng(0)
    imgs = np.zeros((40, 32, 32, 3), np.uint8)
    for im in imgs:
        cv2.circle(im, (16, 16), int(rng.integers(6, 10)), tuple(int(v) for v in rng.integers(80, 200, 3)), -1)
    app = fit_appearance(imgs, canvas_um=0.0)
    assert app["features"] == ["L*", "a*", "b*"] and len(crop_features(imgs[0], 0.0)) == 3
    assert fit_appearance(imgs[:5], canvas_um=10.0) == {}
    assert ood_distance({}, imgs[0]) is None  # a card without appearance: no check


def test_the_daemon_abstains_a_restained_field_as_out_of_distribution(x86_bundle):
    from alnett_edge.capture.base import Frame
    from alnett_edge.data.synth import SMEAR_UM_PER_PX, synth_smear
    from alnett_edge.runtime.loader import open_runtime
    from alnett_edge.vision.cells import QualityConfig
    from alnett_edge.vision.detector import CellDetector
    from alnett_edge.vision.path import classify_frame

    smear = synth_smear(np.random.default_rng(12), n_wbc=(3, 3)).image
    detector = CellDetector(um_per_px=SMEAR_UM_PER_PX)
    abstain, record = QualityConfig(allow_border=True), QualityConfig(allow_border=True, out_of_distribution="record")
    assert abstain.out_of_distribution == "abstain"  # the default
    with open_runtime(x86_bundle["bundle"]) as rt:
        app = rt.card.appearance
        # the training cells (cells_train) are drawn darker than the smear's own cells: a real difference
        # of look that the distance shows; a field re-stained to other colours is far beyond it
        shifted = smear.copy()
        shifted[..., 0] = (smear[..., 0] * 0.3).astype(np.uint8)  # a blue-green stain: nuclei still found by B-G
        dets = detector.detect(shifted)
        recorded, _ = classify_frame(Frame(shifted, 0.0, 1, "t"), detector, record, rt, 8, "sha")
        abstained, _ = classify_frame(Frame(shifted, 0.0, 1, "t"), detector, abstain, rt, 8, "sha")
        plain, _ = classify_frame(Frame(smear, 0.0, 0, "t"), detector, abstain, rt, 8, "sha")
    assert dets and len(recorded) == len(abstained) == len(dets)
    assert all(r.appearance_distance > app["max_distance"] and r.prob_all is not None for r in recorded)  # record
    assert all(r.abstain_reason == "out of distribution" and r.prob_all is None for r in abstained)  # abstain
    far = [r.appearance_distance for r in recorded]
    assert all(r.appearance_distance < min(far) for r in plain)  # the plain field is nearer than any re-stained cell


@pytest.mark.parametrize("mode", ["abstain", "record"])
def test_the_daemon_abstains_or_records_cells_unlike_its_training_cells(x86_bundle, tmp_path, mode):
    import sqlite3

    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon
    from alnett_edge.data.synth import SMEAR_UM_PER_PX, write_smear_video

    # this fixture's model trained on cells drawn darker (L* ~19) than the smear's (L* ~40-50)
    video = tmp_path / "smear.avi"
    write_smear_video(video, 6, seed=4)
    cfg = build_config({}, {
        "source": {"spec": f"video:{video}", "fps": 0.0}, "runtime": {"bundle": str(x86_bundle["bundle"])},
        "optics": {"um_per_px": SMEAR_UM_PER_PX}, "quality": {"out_of_distribution": mode, "allow_border": True},
        "sinks": {"db": str(tmp_path / "o.db")}, "http": {"port": 0}})
    s = Daemon(cfg).run()
    rows = sqlite3.connect(tmp_path / "o.db").execute("SELECT label, abstain_reason FROM cells").fetchall()
    assert rows and s["out_of_distribution"]["mode"] == mode
    far = [r for r in rows if r[1] == "out of distribution"]
    if mode == "abstain":
        assert len(far) >= 0.8 * len(rows) and s["inferences"] <= len(rows) - len(far)
    else:
        assert not far and s["out_of_distribution"]["cells"] >= 0.8 * len(rows)
