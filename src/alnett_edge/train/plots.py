"""PNG plots for evaluation reports (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alnett_edge.metrics import roc_curve  # noqa: E402


def plot_confusion(cm: list[list[int]], class_names: tuple[str, ...], path: str | Path, title: str = "") -> Path:
    cm_arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(cm_arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm_arr):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm_arr.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, score: np.ndarray, auc: float | None, path: str | Path) -> Path:
    return plot_rocs([(f"AUC = {auc:.3f}" if auc is not None else "AUC undefined", y_true, score)], path,
                     "ROC, positive = all")


def plot_rocs(curves: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """ROC curves (label, truth with all = 1, P(all)) on one plot: one model, or every cross-validation fold."""
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=120)
    for label, y, score in curves:
        fpr, tpr = roc_curve(np.asarray(y, int), np.asarray(score))
        ax.plot(fpr, tpr, lw=2 if len(curves) == 1 else 1.5, label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7 if len(curves) == 1 else 6)
    return _save(fig, path)


def plot_reliability(rows: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Reliability diagram: accuracy against mean confidence per confidence bin (bar width = the
    bin, the diagonal = perfect calibration), with the cell count of each bin."""
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=120)
    for r in rows:
        ax.bar(r["low"], r["accuracy"], width=r["high"] - r["low"], align="edge", color="#4c72b0", alpha=0.8,
               edgecolor="white")
        ax.text((r["low"] + r["high"]) / 2, min(0.98, r["accuracy"] + 0.02), str(r["n"]), ha="center", fontsize=6)
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="#dd8452", ms=3,
            label="mean confidence")
    lo = rows[0]["low"] if rows else 0.5
    ax.plot([lo, 1], [lo, 1], "--", color="grey", lw=1, label="perfect")
    ax.set_xlim(lo, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
