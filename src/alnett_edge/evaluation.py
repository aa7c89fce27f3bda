"""Evaluation shared by every stage, torch-free: the split a model was trained with (rebuilt from its
card), "a labelled layout, else every image" for user folders, labelled inputs through the one
preprocessing, and the accuracy gate's rule — used at export (``export.gate``), in calibration, in
``evaluate``, in ``bench`` and again on the device (``verify --gate-images``), so all judge alike.

An artifact passes when none of accuracy, sensitivity, specificity and F1 drops by more than
``allow_drop`` points against the fp32 reference on the same images, its calibration error rises by
at most ``MAX_ECE_RISE`` (both counted on the reference's confidence bins), and it agrees with that
reference on at least ``min_agreement`` of the images. The rules judge what a device reports: a
decision that changes on an image both models hold below the daemon's default ``min_confidence``
(0.52 -> 0.47, say: abstained either way) is recorded (``changed``; ``drop_points`` and
``top1_agreement`` count it) but counts neither against agreement nor in the drops the rule compares
(``counted_drop_points``). Small gate sets resolve a drop only to one image: a failure says how many
points one image is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard, blast_sum
from alnett_edge.data.preprocess import load_image, preprocess
from alnett_edge.data.sources import Sample, detect_layout, load_samples, parse_cnmc_name
from alnett_edge.data.splits import Split, cv_test_fold, make_split
from alnett_edge.errors import DataError
from alnett_edge.metrics import (
    DEFAULT_MIN_CONFIDENCE,
    SUMMARY_KEYS,
    binary_metrics,
    changed_decisions,
    device_agreement,
    expected_calibration_error,
    summary,
    top1_agreement,
)

DEFAULT_ALLOW_DROP = 1.0  # points
DEFAULT_MIN_AGREEMENT = 0.99
#: an artifact's expected calibration error may exceed fp32's by at most this much (its probabilities
#: feed the daemon's confidence abstention and the reports)
MAX_ECE_RISE = 0.03


def split_like_training(samples: list[Sample], card: ModelCard) -> Split:
    """``samples`` split the way the model's training split its data (the card's seed and fractions)."""
    cfg = card.training.get("config", {})
    cv = (int(cfg["cv_fold"]), int(cfg["cv_folds"])) if cfg.get("cv_folds") else None
    return make_split(samples, cfg.get("val_fraction", 0.2), cfg.get("seed", 0), cfg.get("val_fold"), cv)


def held_out_like_training(samples: list[Sample], card: ModelCard) -> list[Sample]:
    """The cross-validation fold the model never saw (its card's ``cv_fold`` of ``cv_folds``)."""
    cfg = card.training.get("config", {})
    if not cfg.get("cv_folds"):
        raise DataError("--split test needs a model trained as a cross-validation fold (train --folds K)")
    return cv_test_fold(samples, int(cfg["cv_fold"]), int(cfg["cv_folds"]), cfg.get("seed", 0))


def training_split(card: ModelCard, what: str = "this step") -> Split:
    """The train/validation split the model was trained with, rebuilt from its card's data and config."""
    data = card.training.get("data")
    if not data or not Path(data).exists():
        raise DataError(f"{what} needs the model's training data, which is not here ({data or 'not recorded'})")
    cfg = card.training.get("config", {})
    return split_like_training(load_samples(data, cfg.get("layout", "auto"), cfg.get("labels_csv")), card)


def images_of(root: str | Path, layout: str = "auto", what: str = "images") -> list[Sample]:
    """A labelled layout's samples, or else every image below ``root`` (label -1 where the name does
    not say; C-NMC file names carry it)."""
    from alnett_edge.data.preprocess import IMAGE_SUFFIXES

    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} not found: {root}")
    if layout != "auto":
        return load_samples(root, layout)
    try:
        detect_layout(root)
        return load_samples(root)
    except DataError:
        pass
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if root.is_dir() else [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
    if not files:
        raise DataError(f"no {what} in {root}")
    out = []
    for p in files:
        parsed = parse_cnmc_name(p.name)
        out.append(Sample(p, parsed[1] if parsed else -1, parsed[0] if parsed else None))
    return out


@dataclass
class LabelledInputs:
    inputs: np.ndarray  # N x C x H x W, the card's preprocessing
    labels: np.ndarray  # 1: a blast (by the cells' own dataset's classes), 0: not
    source: str
    blast: tuple[int, ...] = (1,)  # the model outputs' blast columns (the card's blast_columns)

    def prob(self, probs: np.ndarray) -> np.ndarray:
        """P(blast) of class probabilities (N x classes): the blast columns summed."""
        return blast_sum(probs, self.blast)


def labelled_inputs(samples: Sequence[Sample], card: ModelCard, source: str) -> LabelledInputs:
    inputs = np.stack([preprocess(load_image(s.path), card.input) for s in samples])
    return LabelledInputs(inputs, np.array([int(s.is_blast) for s in samples]), source, tuple(card.blast_columns))


def predict_batched(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([predict(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def gate_result(ref_prob_all: np.ndarray, prob_all: np.ndarray, labels: np.ndarray,
                allow_drop: float = DEFAULT_ALLOW_DROP, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> dict[str, Any]:
    a, b, labels = np.asarray(ref_prob_all, np.float64), np.asarray(prob_all, np.float64), np.asarray(labels)
    ref, got = summary(binary_metrics(labels, a)), summary(binary_metrics(labels, b))
    drops = {k: round(100.0 * (ref[k] - got[k]), 3) for k in SUMMARY_KEYS}
    # judged as a device reports: a change on an image both models hold below min_confidence is not counted
    changed, counted = changed_decisions(a, b)
    judged = summary(binary_metrics(labels, np.where(changed & ~counted, a, b)))
    counted_drops = {k: round(100.0 * (ref[k] - judged[k]), 3) for k in SUMMARY_KEYS}
    one_image = {"accuracy": len(labels), "sensitivity": int((labels == 1).sum()), "specificity": int((labels == 0).sum())}
    failures = [f"{k} drops {d:.2f} points (> {allow_drop}" + _resolution(one_image.get(k), allow_drop) + ")"
                for k, d in counted_drops.items() if d > allow_drop]
    agreement = device_agreement(a, b)
    if agreement < min_agreement:
        failures.append(f"agreement {agreement:.2%} < {min_agreement:.0%} ({int(counted.sum())} of {len(labels)} "
                        f"decisions changed where a model is >= {DEFAULT_MIN_CONFIDENCE} sure)")
    # the rule compares the two on fp32's bins: with its own, a cell at a bin edge moved by 0.001 can
    # shift one model's ECE by more than the allowed rise on a small gate set
    ece_ref, ece, ece_paired = _binary_ece(labels, a), _binary_ece(labels, b), _binary_ece(labels, b, a)
    if ece_paired > ece_ref + MAX_ECE_RISE:
        failures.append(f"calibration error {ece_paired:.3f} > fp32's {ece_ref:.3f} + {MAX_ECE_RISE} (on fp32's bins)")
    return {"passed": not failures, "metrics": got, "reference_metrics": ref, "drop_points": drops,
            "counted_drop_points": counted_drops, "agreement": agreement, "top1_agreement": top1_agreement(a, b),
            "changed": {"decisions": int(changed.sum()), "counted": int(counted.sum()),
                        "min_confidence": DEFAULT_MIN_CONFIDENCE},
            "ece": round(ece, 4), "ece_on_reference_bins": round(ece_paired, 4), "reference_ece": round(ece_ref, 4),
            "failures": failures, "n": int(len(labels))}


def _resolution(images: int | None, allow_drop: float) -> str:
    """"; one image is 1.12 points of 89" where one image is more than the allowed drop."""
    return f"; one image is {100 / images:.2f} points of {images}" if images and 100 / images > allow_drop else ""


def _binary_ece(labels: np.ndarray, prob_all: np.ndarray, bin_by: np.ndarray | None = None) -> float:
    if not len(prob_all):
        return 0.0
    return expected_calibration_error(_two_class(prob_all), np.asarray(labels).astype(int),
                                      bin_by=None if bin_by is None else _two_class(bin_by))


def _two_class(prob_all: np.ndarray) -> np.ndarray:
    p = np.asarray(prob_all, dtype=np.float64)
    return np.stack([1 - p, p], axis=1)
