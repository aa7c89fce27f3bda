"""Binary classification metrics, ALL (blast) = positive class 1. numpy only (no torch).

Follows the C-NMC challenge: F1 is reported both for the positive class (binary) and weighted by
class support, which is how the challenge ranked entries. Ratios with an empty denominator are 0
(as scikit-learn's ``zero_division=0``); ROC-AUC is ``None`` when only one class is present.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


#: The headline metrics reports show side by side.
SUMMARY_KEYS = ("accuracy", "sensitivity", "specificity", "f1")


def summary(metrics: dict[str, object]) -> dict[str, object]:
    return {k: metrics[k] for k in SUMMARY_KEYS}


def top1_agreement(prob_a: np.ndarray, prob_b: np.ndarray, threshold: float = 0.5) -> float:
    """Share of images on which two models make the same decision (P(all) >= threshold)."""
    a, b = np.asarray(prob_a), np.asarray(prob_b)
    return float(((a >= threshold) == (b >= threshold)).mean()) if len(a) else 1.0


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]] (rows = truth hem/all, columns = prediction hem/all)."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _f1(p: float, r: float) -> float:
    return _div(2 * p * r, p + r)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = int(y_true.sum()), int((1 - y_true).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y_true == 1].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and true-positive rates at every distinct threshold (from (0, 0) to (1, 1))."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    y, s = y_true[order], score[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    pos, neg = max(int(y_true.sum()), 1), max(int((1 - y_true).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def binary_metrics(y_true: np.ndarray, prob_all: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    """All metrics from true labels and P(all) scores."""
    y_true = np.asarray(y_true).astype(int)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    y_pred = (prob_all >= threshold).astype(int)
    cm = confusion(y_true, y_pred)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    n = tn + fp + fn + tp
    sens = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    npv = _div(tn, tn + fn)
    f1_all = _f1(prec, sens)
    f1_hem = _f1(npv, spec)
    support_all, support_hem = tp + fn, tn + fp
    return {
        "n": n,
        "accuracy": _div(tp + tn, n),
        "balanced_accuracy": (sens + spec) / 2.0,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1_all,
        "f1_weighted": _div(f1_all * support_all + f1_hem * support_hem, n),
        "roc_auc": roc_auc(y_true, prob_all),
        "confusion": cm.tolist(),
        "threshold": threshold,
    }


def patient_metrics(y_true: np.ndarray, prob_all: np.ndarray, patients: list[str | None],
                    threshold: float = 0.5) -> dict[str, object] | None:
    """Metrics over patients: a patient's score is the mean P(all) of its cells, its label the majority."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(patients):
        if p is not None:
            groups[p].append(i)
    if not groups:
        return None
    y_true = np.asarray(y_true).astype(int)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    keys = sorted(groups)
    labels = np.array([int(round(y_true[groups[k]].mean() + 1e-9)) for k in keys])
    scores = np.array([prob_all[groups[k]].mean() for k in keys])
    out = binary_metrics(labels, scores, threshold)
    out["patients"] = len(keys)
    return out
