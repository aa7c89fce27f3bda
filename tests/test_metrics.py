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


def test_the_gate_judges_what_a_device_reports_and_names_its_resolution():
    from alnett_edge.evaluation import gate_result

    rng = np.random.default_rng(3)
    # 80 cells (40 blasts): fp32 sure of most, four near 0.5, as a small real gate set has
    labels = np.repeat([1, 0], 40)
    ref = np.where(labels == 1, rng.uniform(0.75, 0.99, 80), rng.uniform(0.01, 0.25, 80))
    ref[[0, 1, 40, 41]] = [0.54, 0.52, 0.51, 0.55]  # blasts right, normals wrong, all unsure
    # int8 within rounding of fp32, but the four coin flips cross 0.5 (two blasts lost, two normals won)
    q = np.clip(ref + rng.normal(0, 0.005, 80), 0, 1)
    q[[0, 1, 40, 41]] = [0.47, 0.45, 0.46, 0.44]
    g = gate_result(ref, q, labels)
    assert g["top1_agreement"] == 76 / 80 and g["drop_points"]["sensitivity"] == 5.0  # what the old rule failed
    assert g["changed"] == {"decisions": 4, "counted": 0, "min_confidence": 0.6}
    assert g["passed"] and g["agreement"] == 1.0 and g["counted_drop_points"]["sensitivity"] == 0.0, g["failures"]
    from alnett_edge.metrics import device_agreement, top1_agreement

    assert device_agreement(ref, q) == 1.0 and top1_agreement(ref, q) == 0.95  # what bench / calibrate / qat report
    # one confident blast lost (0.9 -> 0.3) is a real change: a point of sensitivity is less than one of 40 blasts
    q2 = q.copy()
    q2[5] = 0.3
    g2 = gate_result(ref, q2, labels)
    assert not g2["passed"] and g2["changed"]["counted"] == 1 and g2["agreement"] == 79 / 80
    assert any(f.startswith("sensitivity drops 2.50 points (> 1.0; one image is 2.50 points of 40)") for f in g2["failures"])
    assert any(f.startswith("agreement 98.75% < 99% (1 of 80 decisions") for f in g2["failures"])
    # a systematic shift (every probability 0.15 lower) moves sure cells across 0.5 too: it fails
    g3 = gate_result(ref, np.clip(ref - 0.15, 0, 1), labels)
    assert g3["changed"]["counted"] >= 1 and not g3["passed"]
    # a change from unsure to sure (0.55 -> 0.2) is counted: the device reports a class it did not
    q4 = q.copy()
    q4[41] = 0.2
    assert gate_result(ref, q4, labels)["changed"]["counted"] == 1


def test_the_gate_compares_calibration_on_the_reference_bins():
    from alnett_edge.evaluation import gate_result

    # 16 cells (a C-NMC sample fold's validation split), one 15-bin bin [0.767, 0.8): 8 blasts called at
    # 0.775 (right) and 8 normals called blasts at 0.799, just under the bin's upper edge (wrong)
    labels = np.repeat([1, 0], 8)
    ref = np.repeat([0.775, 0.799], 8)
    q = ref + 0.002  # int8: every confidence 0.002 higher, no decision changed; the wrong ones cross 0.8
    g = gate_result(ref, q, labels)
    assert g["ece"] - g["reference_ece"] > 0.2  # on its own bins, a "rise" the earlier rule failed
    assert abs(g["ece_on_reference_bins"] - g["reference_ece"] - 0.002) < 1e-9 and g["passed"], g
    # an int8 model far more confident than fp32 (no decision changed) fails on the same bins
    g2 = gate_result(ref, np.full(16, 0.995), labels)
    assert not g2["passed"] and any("on fp32's bins" in f for f in g2["failures"]), g2
