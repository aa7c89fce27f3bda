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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_roc(y_true: np.ndarray, score: np.ndarray, auc: float | None, path: str | Path) -> Path:
    fpr, tpr = roc_curve(y_true, score)
    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.3f}" if auc is not None else "AUC undefined")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_title("ROC, positive = all")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
