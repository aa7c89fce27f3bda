"""The session's blast-ratio estimate (issue 11: the demo's ratio was biased by the frame edge): the
Miles-Lantuéjoul edge weights, the weighted interval and the Rogan-Gladen error correction."""

from __future__ import annotations

import numpy as np
import pytest

from alnett_edge.vision.detector import MAX_EDGE_WEIGHT, field_weights
from alnett_edge.vision.differential import Aggregator, ratio_estimate
from alnett_edge.vision.record import CellRecord


def test_field_weights_of_a_frame_and_of_an_eyepiece_disc():
    w = field_weights(np.full((480, 640), 255, np.uint8))
    for r in (10, 60, 120):  # a cell of radius r lies wholly inside for centres in (W - 2r) x (H - 2r)
        assert w[r] == pytest.approx(640 * 480 / ((640 - 2 * r) * (480 - 2 * r)))
    assert w[239] == MAX_EDGE_WEIGHT  # capped: a cell as large as the frame
    yy, xx = np.mgrid[0:260, 0:260]
    disc = (((xx - 130) ** 2 + (yy - 130) ** 2) < 120**2).astype(np.uint8) * 255
    w = field_weights(disc)
    for r in (20, 50):  # the disc eroded by r: pi (R - r)^2 of pi R^2
        assert w[r] == pytest.approx((120 / (120 - r)) ** 2, rel=0.03)


def _simulate(rng, n, radius, weights, frame=(480, 640)):
    """Cells of two sizes spread evenly over a slide; the camera sees those wholly inside its frame."""
    h, w = frame
    labels = rng.random(n) < 0.5
    r = np.where(labels, radius[1], radius[0])
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    seen = (cx >= r) & (cx <= w - r) & (cy >= r) & (cy <= h - r)
    wt = weights[r[seen]]
    return labels.mean(), labels[seen], wt


def test_edge_weights_remove_the_size_bias_of_whole_cells():
    rng = np.random.default_rng(0)
    weights = field_weights(np.full((480, 640), 255, np.uint8))
    truth, blast, wt = _simulate(rng, 20000, (40, 90), weights)  # blasts larger than normal cells
    assert blast.mean() < truth - 0.08  # counting the whole cells alone undercounts blasts
    est = ratio_estimate(float(wt[blast].sum()), float(wt.sum()), float((wt**2).sum()), int(blast.size))
    assert abs(est["value"] - truth) < 0.015 and est["ci95"][0] <= truth <= est["ci95"][1]
    assert est["n_eff"] < blast.size and "Rogan" not in est["method"]


def test_rogan_gladen_undoes_known_errors_and_is_skipped_for_a_weak_model():
    # 1000 cells, true ratio 0.3; a model with sensitivity 0.8, specificity 0.95 calls 0.3*0.8 + 0.7*0.05
    q = 0.3 * 0.8 + 0.7 * 0.05
    est = ratio_estimate(q * 1000, 1000.0, 1000.0, 1000, sensitivity=0.8, specificity=0.95)
    assert est["value"] == pytest.approx(0.3, abs=1e-4) and est["ci95"][0] < 0.3 < est["ci95"][1]
    assert "Rogan-Gladen" in est["method"]
    weak = ratio_estimate(q * 1000, 1000.0, 1000.0, 1000, sensitivity=0.6, specificity=0.6)
    assert weak["value"] == pytest.approx(q, abs=1e-4) and "Rogan" not in weak["method"]
    assert ratio_estimate(0.0, 0.0, 0.0, 0) is None


def test_aggregator_counts_every_classified_cell_in_the_estimate():
    from alnett_edge.card import ModelCard

    agg = Aggregator.for_card(ModelCard("alnett-tiny", {}, metrics={"val": {"sensitivity": 0.9, "specificity": 0.9}}))
    rec = dict(time=0.0, frame_index=0, box=(0, 0, 9, 9), model_sha256="")
    agg.add_record(CellRecord(**rec, prob_hem=0.1, prob_all=0.9, label="all", abstain_reason=None, edge_weight=2.0))
    agg.add_record(CellRecord(**rec, prob_hem=0.55, prob_all=0.45, label=None, abstain_reason="low confidence"))
    agg.add_record(CellRecord(**rec, prob_hem=None, prob_all=None, label=None, abstain_reason="cut by frame or field edge"))
    s = agg.snapshot()
    assert s["classified"] == 1 and s["blast_ratio"] == 1.0 and s["abstained"]["low confidence"] == 1
    est = s["blast_ratio_estimate"]  # the low-confidence cell counts by its top class; the cut one not at all
    assert est["cells"] == 2 and est["n_eff"] == pytest.approx(9 / 5, abs=0.05)
    assert est["value"] == pytest.approx((2 / 3 + 0.9 - 1) / 0.8, abs=1e-3)


def test_the_interval_carries_the_uncertainty_of_the_validation_error_rates():
    """A model validated on 100 blasts and 100 normal cells knows its sensitivity and specificity to a few
    points; on a large field that, not the field's count, is what limits the corrected ratio. Simulated
    sessions: the interval holds the truth about 95 % of the time only when it is widened for them."""
    rng = np.random.default_rng(0)
    true_sens, true_spec, truth, cells, n_val = 0.85, 0.9, 0.4, 3000, 100
    covered, covered_narrow = 0, 0
    for _ in range(400):
        sens, spec = rng.binomial(n_val, true_sens) / n_val, rng.binomial(n_val, true_spec) / n_val
        calls = rng.binomial(cells, truth * true_sens + (1 - truth) * (1 - true_spec))
        wide = ratio_estimate(float(calls), float(cells), float(cells), cells, sens, spec, (n_val, n_val))
        narrow = ratio_estimate(float(calls), float(cells), float(cells), cells, sens, spec)
        covered += wide["ci95"][0] <= truth <= wide["ci95"][1]
        covered_narrow += narrow["ci95"][0] <= truth <= narrow["ci95"][1]
        assert wide["value"] == narrow["value"]  # the estimate itself does not move
    assert 0.92 <= covered / 400 <= 0.99 and covered_narrow / 400 < 0.7
    assert "100 blasts / 100 normal validation cells" in wide["method"]
    # more validation cells, a narrower interval; none recorded (an older card), no widening
    big = ratio_estimate(1200.0, 3000.0, 3000.0, 3000, 0.85, 0.9, (10000, 10000))
    small = ratio_estimate(1200.0, 3000.0, 3000.0, 3000, 0.85, 0.9, (50, 50))
    assert np.diff(big["ci95"])[0] < np.diff(small["ci95"])[0]


def test_the_aggregator_reads_its_validation_cells_from_the_cards_confusion_matrix():
    from alnett_edge.card import ModelCard
    from alnett_edge.vision.differential import validation_cells

    assert validation_cells([[58, 2], [8, 122]]) == (130, 60)  # [[tn, fp], [fn, tp]]
    assert validation_cells(None) is None and validation_cells([[1, 2, 3]]) is None and validation_cells("x") is None
    val = {"sensitivity": 122 / 130, "specificity": 58 / 60, "confusion": [[58, 2], [8, 122]]}
    agg = Aggregator.for_card(ModelCard("alnett-tiny", {}, metrics={"val": val}))
    rec = dict(time=0.0, frame_index=0, box=(0, 0, 9, 9), model_sha256="", abstain_reason=None)
    for k in range(200):
        blast = k % 3 == 0
        agg.add_record(CellRecord(**rec, prob_hem=0.1 if blast else 0.9, prob_all=0.9 if blast else 0.1,
                                  label="all" if blast else "hem"))
    est = agg.snapshot()["blast_ratio_estimate"]
    plain = ratio_estimate(67.0, 200.0, 200.0, 200, val["sensitivity"], val["specificity"])
    assert "130 blasts / 60 normal" in est["method"] and est["value"] == plain["value"]
    assert est["ci95"][0] < plain["ci95"][0] and est["ci95"][1] > plain["ci95"][1]
