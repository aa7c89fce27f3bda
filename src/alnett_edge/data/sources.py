"""Dataset layouts users have, read into a list of :class:`Sample` (path, label, patient, fold).

Layouts (``layout="auto"`` picks the first that matches):

* ``cnmc``     C-NMC 2019 training data: ``<root>[/training_data]/fold_<k>/{all,hem}/*.bmp``.
* ``cnmc-prelim``  the preliminary-test set: ``<root>/*.bmp`` named ``N.bmp`` plus the official
  label CSV (``Patient_ID,new_names,labels``; ``Patient_ID`` holds the original UID, 1 = ALL).
* ``manifest`` a CSV ``filename,label[,patient_id]`` (paths relative to the CSV).
* ``folders``  plain class folders ``<root>/<class>/*`` (``all``/``hem`` and common aliases).

Torch-free: the device runtime and calibration can use these loaders too.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alnett_edge.card import CLASS_NAMES, ClassSet
from alnett_edge.data.preprocess import IMAGE_SUFFIXES
from alnett_edge.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "cnmc", "cnmc-prelim", "manifest", "folders")

#: UID_<patient>_<image>_<cell>_<all|hem>.bmp; normal donors have an H before the number (UID_H10_...).
_UID = re.compile(r"UID_(H?\d+)_(\d+)_(\d+)_(all|hem)", re.IGNORECASE)

_LABEL_ALIASES = {
    "all": 1, "blast": 1, "leukemia": 1, "leukemic": 1, "malignant": 1, "1": 1,
    "hem": 0, "normal": 0, "healthy": 0, "benign": 0, "0": 0,
}  # fmt: skip

_PRELIM_CSV_NAMES = ("C-NMC_test_prelim_phase_data_labels.csv",)

#: a harvest's own file beside its manifest (``alnett-edge harvest``): the canvas, the classes, the optics
HARVEST_META = "harvest.json"
BINARY = ClassSet()


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into classes.names (C-NMC's: 0 = hem, 1 = all)
    patient_id: str | None = None
    fold: str | None = None
    weak: bool = False  # the label is its field's (a harvest's weak label), not this cell's own
    classes: ClassSet = BINARY  # its dataset's classes

    @property
    def label_name(self) -> str:
        return self.classes.names[self.label]

    @property
    def is_blast(self) -> bool:
        return self.label_name in self.classes.blast


def parse_label(value: str, source: str, classes: ClassSet = BINARY) -> int:
    """A label's index in ``classes``: C-NMC's two by any alias (all/blast/1, hem/normal/0), a harvest's
    own classes by name (case does not matter)."""
    key = str(value).strip().lower()
    if not classes.binary:
        if key not in classes.names:
            raise DataError(f"{source}: unknown label {value!r} (this dataset's classes: {', '.join(classes.names)})")
        return classes.names.index(key)
    if key not in _LABEL_ALIASES:
        raise DataError(f"{source}: unknown label {value!r} (use all/hem or 1/0)")
    return _LABEL_ALIASES[key]


def dataset_classes(csv_path: Path) -> ClassSet:
    """The classes of a manifest: a harvest's own (``class_names`` and ``blast_classes`` in its
    ``harvest.json``, when it was harvested with more than all/hem), else C-NMC's two."""
    meta_path = csv_path.parent / HARVEST_META
    if not meta_path.is_file():
        return BINARY
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path} cannot be read as JSON ({exc}); it is the harvest's own file") from None
    return meta_classes(meta, meta_path)


def meta_classes(meta: Any, where: Path) -> ClassSet:
    """The classes a harvest's metadata (``harvest.json`` read as JSON) records; C-NMC's two when it
    records none (a harvest of all/hem, or one from before there could be others)."""
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not names:
        return BINARY
    blast = meta.get("blast_classes")
    try:
        if not isinstance(names, list) or not isinstance(blast, list):
            raise CheckpointError("class_names and blast_classes must be lists of names")
        return ClassSet(tuple(str(n) for n in names), tuple(str(n) for n in blast))
    except CheckpointError as exc:
        raise DataError(f"{where}: {exc} (the harvest's own file was edited)") from None


def parse_cnmc_name(name: str) -> tuple[str, int] | None:
    """``UID_H10_100_1_hem.bmp`` -> (``"H10"``, 0); ``None`` when the name is not a C-NMC UID."""
    m = _UID.search(name)
    if not m:
        return None
    return m.group(1).upper(), _LABEL_ALIASES[m.group(4).lower()]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _child(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir():
        if p.is_dir() and p.name.lower() == name:
            return p
    return None


def _cnmc_root(root: Path) -> Path | None:
    for candidate in (root, root / "training_data", root / "C-NMC_training_data"):
        if candidate.is_dir() and any(p.is_dir() and p.name.lower().startswith("fold_") for p in candidate.iterdir()):
            return candidate
    return None


def load_cnmc(root: Path) -> list[Sample]:
    base = _cnmc_root(root)
    if base is None:
        raise DataError(f"{root}: no C-NMC fold_<k>/ folders found")
    samples = []
    for fold_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.lower().startswith("fold_")):
        for cls_name in CLASS_NAMES:
            cls_dir = _child(fold_dir, cls_name)
            if cls_dir is None:
                continue
            for path in _images_in(cls_dir):
                parsed = parse_cnmc_name(path.name)
                samples.append(Sample(path, CLASS_NAMES.index(cls_name), parsed[0] if parsed else None, fold_dir.name))
    return samples


def find_prelim_csv(root: Path) -> Path | None:
    for name in _PRELIM_CSV_NAMES:
        for candidate in (root / name, root.parent / name):
            if candidate.is_file():
                return candidate
    return None


def read_prelim_labels(csv_path: Path) -> dict[str, tuple[int, str | None]]:
    """The official prelim label table: ``new_names`` -> (label, patient id parsed from ``Patient_ID``)."""
    table: dict[str, tuple[int, str | None]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Patient_ID", "new_names", "labels"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{csv_path}: not a C-NMC prelim label CSV (missing columns {sorted(missing)})")
        for row in reader:
            parsed = parse_cnmc_name(row["Patient_ID"])
            table[row["new_names"].strip()] = (
                parse_label(row["labels"], f"{csv_path}:{reader.line_num}"),
                parsed[0] if parsed else None,
            )
    return table


def load_cnmc_prelim(root: Path, labels_csv: Path | None = None) -> list[Sample]:
    csv_path = labels_csv or find_prelim_csv(root)
    if csv_path is None:
        raise DataError(f"{root}: the C-NMC prelim layout needs its label CSV (--labels-csv)")
    table = read_prelim_labels(Path(csv_path))
    samples, unlabelled = [], 0
    for path in _images_in(root):
        if path.name not in table:
            unlabelled += 1
            continue
        label, patient = table[path.name]
        samples.append(Sample(path, label, patient, "prelim"))
    if unlabelled:
        log.warning("%d images in %s are not in %s and were ignored", unlabelled, root, csv_path.name)
    return samples


def load_manifest(csv_path: Path) -> list[Sample]:
    """A CSV ``filename,label[,patient_id][,fold]``. A harvest's manifest (``alnett-edge harvest``) also
    has ``weak_label``: a cell a person has not labelled takes its field's class (the naive rule: every
    cell inherits its field's label); a row with neither label is left out, and the count is logged."""
    samples, unlabelled, rejected = [], 0, 0
    classes = dataset_classes(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"filename", "label"} <= fields:
            raise DataError(f"{csv_path}: a manifest needs the columns filename,label[,patient_id]")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            own = (row.get("label") or "").strip()
            label = own or (row.get("weak_label") or "").strip()
            if not label and "weak_label" in fields:
                unlabelled += 1
                continue
            if own.lower() == "reject":  # a person judged the crop unusable (alnett-edge label)
                rejected += 1
                continue
            path = Path(row["filename"] or "")
            path = path if path.is_absolute() else csv_path.parent / path
            patient = (row.get("patient_id") or "").strip() or None
            if patient is None:
                parsed = parse_cnmc_name(path.name)
                patient = parsed[0] if parsed else None
            fold = (row.get("fold") or "").strip() or None
            samples.append(Sample(path, parse_label(label, where, classes), patient, fold, weak=not own, classes=classes))
    if unlabelled:
        log.warning("%s: %d cells have no label and no weak label; left out", csv_path, unlabelled)
    if rejected:
        log.info("%s: %d cells a labeller rejected (not a usable cell); left out", csv_path, rejected)
    return samples


def load_folders(root: Path) -> list[Sample]:
    samples = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        key = cls_dir.name.strip().lower()
        if key not in _LABEL_ALIASES:
            log.warning("ignoring folder %s: not a class name (all/hem or an alias)", cls_dir)
            continue
        for path in _images_in(cls_dir):
            parsed = parse_cnmc_name(path.name)
            samples.append(Sample(path, _LABEL_ALIASES[key], parsed[0] if parsed else None))
    return samples


def detect_layout(root: Path) -> str:
    if root.is_file() and root.suffix.lower() == ".csv":
        return "manifest"
    if not root.is_dir():
        raise DataError(f"dataset not found: {root}")
    if _cnmc_root(root) is not None:
        return "cnmc"
    if (root / "manifest.csv").is_file():
        return "manifest"
    # class folders by any name the folder loader accepts (all/hem, blast/normal, ...), not digits alone
    if any(p.is_dir() and p.name.strip().lower() in _LABEL_ALIASES and not p.name.strip().isdigit()
           for p in root.iterdir()):
        return "folders"
    if find_prelim_csv(root) is not None:
        return "cnmc-prelim"
    raise DataError(
        f"{root}: no known dataset layout (C-NMC folds, class folders, manifest.csv or a prelim label CSV)"
    )


def load_samples(root: str | Path, layout: str = "auto", labels_csv: str | Path | None = None) -> list[Sample]:
    """Read a dataset's file list and labels. Raises :class:`DataError` when it is empty or one-class."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DataError(f"dataset not found: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "cnmc":
        samples = load_cnmc(root)
    elif layout == "cnmc-prelim":
        samples = load_cnmc_prelim(root, Path(labels_csv) if labels_csv else None)
    elif layout == "manifest":
        samples = load_manifest(root if root.is_file() else root / "manifest.csv")
    else:
        samples = load_folders(root)
    check_classes(samples, str(root))
    log.info("%s: %d images (%s layout)", root, len(samples), layout)
    return samples


def classes_of(samples: list[Sample]) -> ClassSet:
    """The one class set of ``samples`` (C-NMC's when there are none)."""
    sets = {s.classes for s in samples}
    if len(sets) > 1:
        raise DataError("these cells come from datasets with different classes: "
                        + "; ".join(", ".join(c.names) for c in sets))
    return sets.pop() if sets else BINARY


def check_classes(samples: list[Sample], source: str) -> None:
    if not samples:
        raise DataError(f"{source}: the dataset is empty")
    names = classes_of(samples).names
    counts = Counter(s.label for s in samples)
    empty = [names[i] for i in range(len(names)) if counts.get(i, 0) == 0]
    if empty:
        raise DataError(f"{source}: class {', '.join(empty)} has no images")


def class_counts(samples: list[Sample]) -> dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(classes_of(samples).names)}
