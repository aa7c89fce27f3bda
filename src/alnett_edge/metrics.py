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


#: The daemon's default ``[quality] min_confidence``: a cell whose top-class probability is lower is
#: abstained, not reported.
DEFAULT_MIN_CONFIDENCE = 0.6


def top1_agreement(prob_a: np.ndarray, prob_b: np.ndarray, threshold: float = 0.5) -> float:
    """Share of images on which two models make the same decision (P(all) >= threshold)."""
    a, b = np.asarray(prob_a), np.asarray(prob_b)
    return float(((a >= threshold) == (b >= threshold)).mean()) if len(a) else 1.0


def changed_decisions(prob_a: np.ndarray, prob_b: np.ndarray, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                      threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the images whose decision differs at ``threshold``, and of those among them that either
    model calls with a top-class probability of at least ``min_confidence``. A change on an image both
    hold below it (0.52 -> 0.47, say) changes nothing a device abstaining below ``min_confidence`` reports."""
    a, b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    changed = (a >= threshold) != (b >= threshold)
    sure = np.maximum(np.maximum(a, 1 - a), np.maximum(b, 1 - b)) >= min_confidence
    return changed, changed & sure


def device_agreement(prob_a: np.ndarray, prob_b: np.ndarray, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> float:
    """Share of images on which two models agree as a device abstaining below ``min_confidence``
    reports them: :func:`top1_agreement` without the changes on images both hold below it. The
    accuracy gate's agreement, and what ``bench``, ``calibrate`` and ``qat`` report as agreement."""
    _, counted = changed_decisions(prob_a, prob_b, min_confidence)
    return 1.0 - float(counted.mean()) if len(counted) else 1.0


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


def _grouped(keys: list[str | None]) -> dict[str, list[int]]:
    """Item indices by key (a patient, a field); items without a key are left out."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            groups[k].append(i)
    return groups


def patient_metrics(y_true: np.ndarray, prob_all: np.ndarray, patients: list[str | None],
                    threshold: float = 0.5) -> dict[str, object] | None:
    """Metrics over patients: a patient's score is the mean P(all) of its cells, its label the majority."""
    groups = _grouped(patients)
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


# -- fields: a field (or a slide) decided from its cells ---------------------------------------------------

#: a cell counts as a blast in a field's blast fraction when its P(blast) is at least this
FIELD_CELL_THRESHOLD = 0.5
#: P(blast) is clipped to [LOG_ODDS_CLIP, 1 - LOG_ODDS_CLIP] before its log-odds are taken (|log-odds| <= 9.2):
#: one saturated cell must not outvote the rest of its field
LOG_ODDS_CLIP = 1e-4
#: how a field is scored from its cells' P(blast): the mean of a per-cell value (:func:`cell_score`).
#: ``mean_log_odds`` keeps each cell's confidence; ``blast_fraction`` (the share of cells at P >= 0.5,
#: older cards) throws it away: on the all-fields cross-validation its held-out field AUC was 0.963
#: against 0.995 for the mean log-odds of the same cells (docs/microscope.md).
FIELD_SCORES = ("mean_log_odds", "blast_fraction")
FIELD_SCORE = "mean_log_odds"


def rule_score(rule: dict[str, object]) -> str:
    """The score a card's field rule uses (a rule written before the score was recorded: the blast fraction)."""
    return str(rule.get("score", "blast_fraction"))


def cell_score(prob_all: float | np.ndarray, score: str = FIELD_SCORE) -> float | np.ndarray:
    """A cell's share of its field's score: its clipped log-odds of blast, or 1/0 (blast call or not)."""
    p = np.asarray(prob_all, dtype=np.float64)
    if score == "blast_fraction":
        out = (p >= FIELD_CELL_THRESHOLD).astype(np.float64)
    elif score == "mean_log_odds":
        p = np.clip(p, LOG_ODDS_CLIP, 1 - LOG_ODDS_CLIP)
        out = np.log(p) - np.log1p(-p)
    else:
        raise ValueError(f"unknown field score {score!r} (one of {', '.join(FIELD_SCORES)})")
    return float(out) if out.ndim == 0 else out


def field_scores(y_true: np.ndarray, prob_all: np.ndarray, fields: list[str | None],
                 score: str = FIELD_SCORE) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per field (cells grouped by ``fields``): its label (the majority of its cells' labels, which are
    the field's own where they are weak labels), its score (the mean :func:`cell_score` of its cells)
    and its number of cells."""
    groups = _grouped(fields)
    keys = sorted(groups)
    y, c = np.asarray(y_true).astype(int), np.asarray(cell_score(np.asarray(prob_all), score))
    labels = np.array([int(round(y[groups[k]].mean() + 1e-9)) for k in keys], int)
    scores = np.array([c[groups[k]].mean() for k in keys])
    return keys, labels, scores, np.array([len(groups[k]) for k in keys], int)


def fit_field_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The field score above which a field is called ALL: the cut with the highest balanced accuracy
    on these (training) fields, halfway between two observed scores; the lower of equals."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, np.float64)
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    best, best_ba = 0.5, -1.0
    for c in cuts:
        pred = scores > c
        sens = pred[labels == 1].mean() if (labels == 1).any() else 0.0
        spec = (~pred[labels == 0]).mean() if (labels == 0).any() else 0.0
        if (sens + spec) / 2 > best_ba + 1e-12:
            best, best_ba = float(c), (sens + spec) / 2
    return round(best, 6)


def field_rule(labels: np.ndarray, scores: np.ndarray, fitted_on: str, score: str = FIELD_SCORE) -> dict[str, object]:
    """The card's ``field_decision``: the score, the threshold fitted on these fields and how it scored there."""
    t = fit_field_threshold(labels, scores)
    m = binary_metrics(labels, np.asarray(scores) > t, 0.5)
    return {"score": score, "cell_threshold": FIELD_CELL_THRESHOLD, "threshold": t, "fitted_on": fitted_on,
            "fields": int(len(labels)), "accuracy": m["accuracy"], "auc": roc_auc(labels, scores)}


def decide_field(rule: dict[str, object], total: float, cells: int) -> dict[str, object] | None:
    """A field's or a session's call under the card's rule from the sum of its cells' :func:`cell_score`
    under the rule's score (for a blast fraction: the number of blast calls): ALL when the mean is above
    the threshold; None without a rule, or with no classified cell (nothing to decide from)."""
    if not rule or cells <= 0:
        return None
    value = total / cells
    return {"all": bool(value > float(rule["threshold"])), "score": rule_score(rule),  # type: ignore[arg-type]
            "value": round(value, 4), "threshold": rule["threshold"], "cells": cells}


# -- calibration: are the probabilities what they claim? ------------------------------------------------

#: bins of the top-class confidence for the expected calibration error and the reliability diagram
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of logits (N x classes) divided by ``temperature`` (float32)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """Temperature scaling (Guo et al. 2017): the T in [low, high] minimising the negative
    log-likelihood of ``softmax(logits / T)`` on held-out labels. The NLL is convex in 1/T, so a
    golden-section search over log T finds it. Accuracy and AUC do not change (argmax and ranking are
    the same for any T > 0)."""
    labels = np.asarray(labels).astype(int)
    if len(labels) == 0:
        return 1.0
    a, b = np.log(low), np.log(high)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(logits, labels, np.exp(c)), _nll(logits, labels, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                bin_by: np.ndarray | None = None) -> list[dict[str, float]]:
    """Per confidence bin (top-class probability, equal widths over [1/classes, 1]): the mean
    confidence, the accuracy and the number of cells. ``bin_by`` (another model's probabilities for the
    same cells) places each cell in that model's bin, so two models are compared bin by bin on the same
    cells and a small probability change cannot move a cell across a bin edge."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(1.0 / probs.shape[1], 1.0, bins + 1)
    where = conf if bin_by is None else np.asarray(bin_by, dtype=np.float64).max(axis=1)
    idx = np.clip(np.searchsorted(edges, where, side="right") - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        sel = idx == k
        if sel.any():
            out.append({"low": float(edges[k]), "high": float(edges[k + 1]), "confidence": float(conf[sel].mean()),
                        "accuracy": float((pred[sel] == labels[sel]).mean()), "n": int(sel.sum())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                               bin_by: np.ndarray | None = None) -> float:
    """ECE: the gap between confidence and accuracy per bin, weighted by the bin's share of cells
    (``bin_by``: see :func:`reliability`)."""
    return ece_of(reliability(probs, labels, bins, bin_by))


def ece_noise_floor(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 400, seed: int = 0) -> float:
    """The ECE these probabilities would show on this many cells if they were perfectly calibrated: the
    mean ECE over ``draws`` label sets drawn from the probabilities themselves. A measured ECE near it
    is sampling noise, not miscalibration: confidences of 0.5-0.95 give about 0.24-0.28 on 14 cells, 0.15
    on 70, 0.07 on 300 and 0.03 on 1500 (15 bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return 0.0
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=1)
    total = 0.0
    for _ in range(draws):
        labels = (cum < rng.random((len(probs), 1)) * cum[:, -1:]).sum(axis=1)
        total += expected_calibration_error(probs, labels, bins)
    return total / draws


def ece_of(rows: list[dict[str, float]]) -> float:
    """The ECE of :func:`reliability`'s bins."""
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n) if n else 0.0


def calibration_summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, float | int | str]:
    """Fit the temperature on these held-out cells and report what it changed (the card's
    ``calibration``)."""
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    return {"method": "temperature scaling", "temperature": round(t, 4), "n": int(len(labels)),
            "ece_before": round(expected_calibration_error(before, labels), 4),
            "ece_after": round(expected_calibration_error(after, labels), 4),
            "nll_before": round(_nll(logits, labels, 1.0), 4), "nll_after": round(_nll(logits, labels, t), 4)}
