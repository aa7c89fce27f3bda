"""Patient-disjoint train/validation splits.

* With official folds (C-NMC ``fold_<k>``), one fold is the validation set; a patient who also
  appears in a training fold is removed from training (with a warning), so no patient is on both sides.
* Otherwise a grouped, stratified split: patients are grouped by their majority label and shuffled
  with the seed; whole patients go to validation until each class holds ``val_fraction`` of its
  images. Images without a patient id are their own group.
* Cross-validation (:func:`cv_partition`): K patient-disjoint folds stratified by class; a fold's
  run leaves its fold out and splits the rest as above.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from alnett_edge.data.sources import Sample, check_classes
from alnett_edge.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    method: str

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method,
            "train": len(self.train),
            "val": len(self.val),
            "train_patients": len(patients_of(self.train)),
            "val_patients": len(patients_of(self.val)),
        }


def group_key(sample: Sample) -> str:
    return sample.patient_id if sample.patient_id is not None else f"file:{sample.path}"


def patients_of(samples: list[Sample]) -> set[str]:
    return {s.patient_id for s in samples if s.patient_id is not None}


def split_by_fold(samples: list[Sample], val_fold: str) -> Split:
    folds = sorted({s.fold for s in samples if s.fold})
    if val_fold not in folds:
        raise DataError(f"validation fold {val_fold!r} not in the dataset's folds {folds}")
    val = [s for s in samples if s.fold == val_fold]
    val_patients = patients_of(val)
    train = [s for s in samples if s.fold != val_fold]
    dropped = [s for s in train if s.patient_id in val_patients]
    if dropped:
        log.warning("%d training images share a patient with fold %s and were left out", len(dropped), val_fold)
        train = [s for s in train if s.patient_id not in val_patients]
    return Split(train, val, f"fold:{val_fold}")


def grouped_stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> Split:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[group_key(s)].append(s)
    rng = np.random.default_rng(seed)
    val_keys: set[str] = set()
    for label in sorted({s.label for s in samples}):
        keys = sorted(k for k, g in groups.items() if _majority(g) == label)
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        if len(keys) < 2:
            raise DataError(f"class {label} has {len(keys)} patient(s): a patient-disjoint split needs at least 2")
        taken = 0
        for k in keys[:-1]:  # always leave at least one patient of the class for training
            if taken >= val_fraction * total:
                break
            val_keys.add(k)
            taken += len(groups[k])
    train = [s for s in samples if group_key(s) not in val_keys]
    val = [s for s in samples if group_key(s) in val_keys]
    return Split(train, val, f"grouped-stratified:{val_fraction}:seed{seed}")


def _majority(group: list[Sample]) -> int:
    labels = [s.label for s in group]
    return max(set(labels), key=lambda lbl: (labels.count(lbl), lbl))


def cv_partition(samples: list[Sample], folds: int, seed: int = 0) -> list[list[Sample]]:
    """``folds`` patient-disjoint folds, stratified by class: each class's patients (grouped by their
    majority label, shuffled with the seed, largest first) go one by one to the fold that holds the
    fewest images of that class so far. Every fold gets patients of every class."""
    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[group_key(s)].append(s)
    rng = np.random.default_rng(seed)
    assigned: dict[str, int] = {}
    for label in sorted({s.label for s in samples}):
        keys = sorted(k for k, g in groups.items() if _majority(g) == label)
        if len(keys) < folds:
            raise DataError(f"class {label} has {len(keys)} patient(s): {folds}-fold cross-validation needs at "
                            f"least {folds} (use fewer folds)")
        rng.shuffle(keys)
        keys.sort(key=lambda k: -len(groups[k]))  # stable: ties keep the shuffled order
        load = [0] * folds
        for k in keys:
            f = int(np.argmin(load))
            assigned[k] = f
            load[f] += len(groups[k])
    return [[s for s in samples if assigned[group_key(s)] == f] for f in range(folds)]


def make_split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0, val_fold: str | None = None,
               cv: tuple[int, int] | None = None) -> Split:
    """Patient-disjoint split; uses the official folds when the samples have them. With ``cv`` =
    (fold, folds) the held-out fold of :func:`cv_partition` is left out first and the rest is split
    into training and validation cells (``val_fraction``, grouped and stratified)."""
    if cv is not None:
        fold, n = cv
        rest = [s for f, part in enumerate(cv_partition(samples, n, seed)) if f != fold for s in part]
        split = grouped_stratified_split(rest, val_fraction, seed)
        split = Split(split.train, split.val, f"cv:{fold}/{n}:" + split.method)
        check_classes(split.train, "training split")
        check_classes(split.val, "validation split")
        return split
    folds = sorted({s.fold for s in samples if s.fold})
    if val_fold is None and len(folds) >= 2:
        val_fold = folds[-1]
    split = split_by_fold(samples, val_fold) if val_fold else grouped_stratified_split(samples, val_fraction, seed)
    check_classes(split.train, "training split")
    check_classes(split.val, "validation split")
    overlap = patients_of(split.train) & patients_of(split.val)
    if overlap:  # cannot happen by construction; checked because a leak would silently inflate metrics
        raise DataError(f"patients on both sides of the split: {sorted(overlap)[:5]}")
    return split


def cv_test_fold(samples: list[Sample], fold: int, folds: int, seed: int = 0) -> list[Sample]:
    """The held-out cells of fold ``fold`` (what :func:`make_split` with ``cv`` left out)."""
    return cv_partition(samples, folds, seed)[fold]
