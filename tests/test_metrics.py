import numpy as np
import pytest

from alnett_edge.metrics import (
    binary_metrics,
    calibration_summary,
    confusion,
    expected_calibration_error,
    fit_temperature,
    patient_metrics,
    reliability,
    roc_auc,
    roc_curve,
    softmax,
)


def test_metrics_against_a_hand_computed_confusion_matrix():
    # truth:      5 all (1), 5 hem (0)
    # prediction: TP=4 FN=1 ; TN=3 FP=2
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.3, 0.4, 0.55, 0.95])
    m = binary_metrics(y, p)
    assert m["confusion"] == [[3, 2], [1, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.8 + 0.6) / 2)
    f1_all = 2 * (4 / 6) * 0.8 / (4 / 6 + 0.8)
    npv = 3 / 4
    f1_hem = 2 * npv * 0.6 / (npv + 0.6)
    assert m["f1"] == pytest.approx(f1_all)
    assert m["f1_weighted"] == pytest.approx((5 * f1_all + 5 * f1_hem) / 10)
    # AUC by counting pairs: positives [.9 .8 .7 .6 .2] vs negatives [.1 .3 .4 .55 .95]
    pairs = sum((a > b) + 0.5 * (a == b) for a in p[:5] for b in p[5:])
    assert m["roc_auc"] == pytest.approx(pairs / 25)


def test_imbalanced_and_degenerate_cases():
    y = np.array([1, 1, 1, 1, 0])
    m = binary_metrics(y, np.ones(5))
    assert m["confusion"] == [[0, 1], [0, 4]]
    assert m["specificity"] == 0.0 and m["sensitivity"] == 1.0
    only_pos = binary_metrics(np.ones(3), np.array([0.2, 0.7, 0.9]))
    assert only_pos["roc_auc"] is None and only_pos["specificity"] == 0.0
    assert confusion(np.array([0, 1, 1]), np.array([1, 1, 0])).tolist() == [[0, 1], [1, 1]]


def test_auc_ties_and_curve():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.5, 0.5])
    assert roc_auc(y, s) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    fpr, tpr = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_patient_aggregation():
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.7, 0.6, 0.8, 0.1])  # patient A mean .6 -> all; B mean .5 -> all (wrong)
    m = patient_metrics(y, p, ["A", "A", "A", "B", "B", "B"])
    assert m["patients"] == 2
    assert m["confusion"] == [[0, 1], [0, 1]]
    assert patient_metrics(y, p, [None] * 6) is None


def _calibrated_logits(n, seed=0):
    """Two classes whose true posterior logit is 2x for x ~ N(+-1, 1): logits [0, 2x] are calibrated."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (2 * y - 1) + rng.normal(0, 1, n)
    return np.c_[np.zeros(n), 2 * x], y


def test_temperature_scaling_recovers_a_known_overconfidence():
    logits, y = _calibrated_logits(20000)
    assert expected_calibration_error(softmax(logits), y) < 0.015  # calibrated as drawn
    over = 3.0 * logits  # a network 3x too sure of itself
    assert expected_calibration_error(softmax(over), y) > 0.05
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(softmax(over, t), y) < 0.015
    s = calibration_summary(over, y)
    assert s["nll_after"] < s["nll_before"] and s["ece_after"] < s["ece_before"] and s["n"] == 20000
    under = 0.5 * logits  # too timid: T < 1 sharpens it
    assert fit_temperature(under, y) == pytest.approx(0.5, rel=0.05)
    # scaling never changes a decision
    assert (softmax(over, t).argmax(1) == softmax(over).argmax(1)).all()


def test_reliability_bins_count_every_cell():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.5, 0.5]])
    y = np.array([0, 0, 1, 1])
    rows = reliability(probs, y, bins=5)
    assert sum(r["n"] for r in rows) == 4 and all(0.5 <= r["confidence"] <= 1 for r in rows)
    # bins: {0.9: right}, {0.8: wrong}, {0.55 and 0.5: one right (0.55 -> class 1), one wrong (0.5 -> class 0)}
    assert expected_calibration_error(probs, y, bins=5) == pytest.approx((0.1 + 0.8 + 2 * abs(0.5 - 0.525)) / 4)


def test_ece_noise_floor_says_how_many_cells_an_ece_needs():
    """A perfectly calibrated model still shows an ECE on few cells: 0.15+ on 14, under 0.05 only with
    ~1500 (why a 14-cell fold cannot show ECE <= 0.05). Near-certain probabilities have no floor."""
    from alnett_edge.metrics import ece_noise_floor

    rng = np.random.default_rng(0)

    def probs(n):
        conf = rng.uniform(0.5, 0.95, n)
        p1 = np.where(rng.random(n) < 0.5, conf, 1 - conf)
        return np.stack([1 - p1, p1], axis=1)

    floors = {n: ece_noise_floor(probs(n)) for n in (14, 70, 300, 1500)}
    assert floors[14] > 0.15 and floors[1500] < 0.05
    assert floors[14] > floors[70] > floors[300] > floors[1500]
    assert ece_noise_floor(np.tile([[0.0005, 0.9995]], (50, 1))) < 0.002
