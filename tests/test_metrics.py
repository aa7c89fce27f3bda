import numpy as np
import pytest

from alnett_edge.metrics import binary_metrics, confusion, patient_metrics, roc_auc, roc_curve


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
