"""People's labels on a harvest (``alnett-edge label DATASET``, and the device page's label view).

* **Who said what.** Each labeller's labels are ``labels/<name>.csv`` (cell id, label, time), written
  whole to a temporary file and renamed: a reader never sees half of one. The manifest's ``label``
  column (what ``train --data DATASET`` reads) is the latest label anyone gave a cell, and
  ``labelled_by`` says whose; both are written under the manifest's lock
  (:func:`alnett_edge.vision.harvest.manifest_lock`), so two labellers, in one process or two, and a
  harvest re-run never overwrite each other.
* **What to label first** (:data:`ORDERS`): the cells the model is least sure of (``uncertain``), those
  where the model's call contradicts the field's weak label, most confident first (``disagree``),
  those two people labelled differently (``labellers``: to settle), the farthest from the training
  cells' look (``outliers``), or the harvest's own order (``harvest``).
* **Agreement.** :func:`agreement`: Cohen's kappa for every pair of labellers on the cells both
  labelled.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from alnett_edge.card import ClassSet
from alnett_edge.data.sources import dataset_classes
from alnett_edge.errors import ConfigError, DataError
from alnett_edge.files import atomic_text
from alnett_edge.vision.harvest import META, manifest_lock, open_dataset, read_manifest, write_manifest

log = logging.getLogger(__name__)

LABELS_DIR = "labels"
#: a cell a person judged unusable (not a white cell, out of focus, two cells): left out of training
REJECT = "reject"
ORDERS = ("uncertain", "disagree", "labellers", "outliers", "harvest")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_CELL_ID = re.compile(r"^[0-9a-f]{8,64}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"labeller name {name!r}: 1 to 40 letters, digits, '.', '_' or '-' (it names a file)")
    return name


def classes_of(dataset: Path) -> ClassSet:
    """The classes a cell of this harvest can be labelled with: the harvest's own (``harvest --classes``
    with other names than all/hem, ``--blast``), else hem and all."""
    return dataset_classes(dataset / "manifest.csv")


def read_labels(path: Path) -> dict[str, tuple[str, float]]:
    """One labeller's file: cell id -> (label, time); a file edited into nonsense is a one-line error."""
    out: dict[str, tuple[str, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if list(reader.fieldnames or ()) != ["cell_id", "label", "time"]:
                raise DataError(f"{path} is not a label file (its header must be cell_id,label,time)")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()) or not _CELL_ID.match(row["cell_id"] or ""):
                    raise DataError(f"{where}: not a label row (cell_id,label,time; edited by hand?)")
                try:
                    t = float(row["time"])
                except ValueError:
                    raise DataError(f"{where}: time {row['time']!r} is not a number") from None
                out[row["cell_id"]] = (row["label"], t)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text CSV (binary data?)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    return out


def _write_labels(path: Path, labels: dict[str, tuple[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text(path) as f:
        w = csv.writer(f)
        w.writerow(["cell_id", "label", "time"])
        w.writerows([cid, lab, f"{t:.3f}"] for cid, (lab, t) in labels.items())


def all_labels(dataset: Path) -> dict[str, dict[str, tuple[str, float]]]:
    """Every labeller's labels: name -> cell id -> (label, time)."""
    folder = dataset / LABELS_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: read_labels(p) for p in sorted(folder.glob("*.csv")) if _NAME.match(p.stem)}


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two labellers' labels of the same cells (None when chance agreement is total:
    both gave one and the same class to every cell, so agreement beyond chance is undefined)."""
    if len(a) != len(b):
        raise ValueError("two label lists of one length are needed")
    n = len(a)
    if not n:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement(dataset: str | Path) -> dict[str, Any]:
    """Cohen's kappa for each pair of labellers on the cells both labelled, with the observed agreement,
    the number of cells and the disagreements by pair of labels."""
    people = all_labels(Path(dataset))
    pairs = []
    for (na, la), (nb, lb) in combinations(sorted(people.items()), 2):
        common = sorted(set(la) & set(lb))
        a, b = [la[c][0] for c in common], [lb[c][0] for c in common]
        k = cohen_kappa(a, b)
        pairs.append({"a": na, "b": nb, "cells": len(common), "kappa": None if k is None else round(k, 4),
                      "observed": round(sum(x == y for x, y in zip(a, b)) / len(common), 4) if common else None,
                      "disagreements": dict(Counter(f"{x}/{y}" for x, y in zip(a, b) if x != y))})
    return {"labellers": {n: len(v) for n, v in people.items()}, "pairs": pairs,
            "note": "kappa: (observed - chance agreement) / (1 - chance), on the cells both people labelled; "
                    "1 is perfect, 0 what chance gives"}


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


@dataclass
class Cell:
    """What the label view shows of one cell."""

    cell_id: str
    filename: str
    session: str
    group: str
    weak_label: str
    prob: dict[str, float]
    appearance_distance: float | None
    row: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "session": self.session, "group": self.group, "weak_label": self.weak_label,
                "prob": self.prob, "appearance_distance": self.appearance_distance,
                "um_per_px": _float(self.row.get("um_per_px")), "frame": self.row.get("frame", ""),
                "source": Path(self.row.get("source", "")).name,
                "box": [int(float(self.row.get(k) or 0)) for k in ("x0", "y0", "x1", "y1")]}


class LabelBook:
    """One labeller's view of a harvest: the queue in the chosen order, labels and undo."""

    def __init__(self, dataset: str | Path, labeller: str, order: str = "uncertain") -> None:
        self.dataset = Path(dataset)
        self.labeller = check_name(labeller)
        if order not in ORDERS:
            raise ConfigError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.meta = open_dataset(self.dataset)
        if not self.meta or not (self.dataset / "manifest.csv").is_file():
            raise ConfigError(f"{self.dataset} is not a harvest (no {META} and manifest.csv; make one with "
                              "alnett-edge harvest)")
        self.order = order
        self.class_set = classes_of(self.dataset)
        self.classes = self.class_set.names
        self.choices = (*self.classes, REJECT)
        self.canvas_um = float(self.meta["canvas_um"])
        self._lock = threading.Lock()
        self._undo: list[tuple[str, tuple[str, float] | None]] = []  # (cell, its label before) of this run
        self._skipped: set[str] = set()
        self.path = self.dataset / LABELS_DIR / f"{self.labeller}.csv"
        self.mine = read_labels(self.path) if self.path.is_file() else {}
        self.reload()

    def _stamp(self) -> tuple:
        paths = [self.dataset / "manifest.csv", *sorted((self.dataset / LABELS_DIR).glob("*.csv"))]
        return tuple((p.name, p.stat().st_mtime_ns) for p in paths if p.exists())

    def reload(self) -> None:
        """The manifest and the other labellers' files read again (a harvest added cells, a colleague labelled)."""
        self.stamp = self._stamp()
        rows, columns = read_manifest(self.dataset)
        probs = [c for c in columns if c.startswith("prob_")]
        self.cells = {r["cell_id"]: Cell(r["cell_id"], r["filename"], r["session"], r["patient_id"],
                                         r.get("weak_label", ""),
                                         {c[5:]: p for c in probs if (p := _float(r.get(c))) is not None},
                                         _float(r.get("appearance_distance")), r) for r in rows}
        self.others = {n: v for n, v in all_labels(self.dataset).items() if n != self.labeller}
        self.queue = self._ordered([c for c in self.cells.values() if c.cell_id not in self.mine])

    def _ordered(self, cells: list[Cell]) -> list[Cell]:
        blast = self.class_set.blast

        def p(c: Cell) -> float | None:  # P(blast): the bundle's blast classes (a two-class bundle's "all")
            named = [c.prob[b] for b in blast if b in c.prob]
            return sum(named) if named else c.prob.get("all")

        if self.order == "uncertain":
            key = lambda c: (p(c) is None, abs((p(c) or 0.0) - 0.5))  # noqa: E731
        elif self.order == "disagree":
            def key(c: Cell) -> tuple:
                if p(c) is None or not c.weak_label:
                    return (2, 0.0)
                confidence = abs(p(c) - 0.5)  # type: ignore[operator]
                contradicts = (p(c) >= 0.5) != (c.weak_label in blast)  # type: ignore[operator]
                return (0, -confidence) if contradicts else (1, confidence)
        elif self.order == "labellers":
            def key(c: Cell) -> tuple:
                given = {v[c.cell_id][0] for v in self.others.values() if c.cell_id in v}
                return (0 if len(given) > 1 else 1 if given else 2,)
        elif self.order == "outliers":
            key = lambda c: (c.appearance_distance is None, -(c.appearance_distance or 0.0))  # noqa: E731
        else:
            return cells
        return sorted(cells, key=key)

    def next_cells(self, n: int = 1) -> list[Cell]:
        with self._lock:
            if self._stamp() != self.stamp:  # changed by someone else (a harvest, a colleague, the device's gallery)
                self.mine = read_labels(self.path) if self.path.is_file() else {}
                self.reload()
            out = [c for c in self.queue if c.cell_id not in self.mine and c.cell_id not in self._skipped][:n]
            if len(out) < n:  # skipped cells come back once the rest is labelled
                out += [c for c in self.queue if c.cell_id in self._skipped and c not in out][: n - len(out)]
            return out

    def skip(self, cell_id: str) -> None:
        with self._lock:
            self._cell(cell_id)
            self._skipped.add(cell_id)

    def _cell(self, cell_id: str) -> Cell:
        if not isinstance(cell_id, str) or cell_id not in self.cells:
            raise DataError(f"no cell {str(cell_id)[:80]!r} in {self.dataset}")
        return self.cells[cell_id]

    def label(self, cell_id: str, label: str) -> None:
        """Set this labeller's label of a cell: their file and the manifest, both atomically."""
        if label not in self.choices:
            raise DataError(f"label {str(label)[:40]!r} is not one of {', '.join(self.choices)}")
        with self._lock:
            self._cell(cell_id)
            self._undo.append((cell_id, self.mine.get(cell_id)))
            self._set(cell_id, (label, time.time()))
            self._skipped.discard(cell_id)

    def undo(self) -> str | None:
        """Take back this run's last label (the cell goes back to the head of the queue); None when none."""
        with self._lock:
            if not self._undo:
                return None
            cell_id, before = self._undo.pop()
            self._set(cell_id, before)
            self.queue = [self.cells[cell_id], *[c for c in self.queue if c.cell_id != cell_id]]
            return cell_id

    def _set(self, cell_id: str, value: tuple[str, float] | None) -> None:
        with manifest_lock(self.dataset):
            mine = read_labels(self.path) if self.path.is_file() else {}  # another window of the same person
            if value is None:
                mine.pop(cell_id, None)
            else:
                mine[cell_id] = value
            _write_labels(self.path, mine)
            self.mine = mine
            rows, columns = read_manifest(self.dataset)
            if "labelled_by" not in columns:  # a manifest from before labelling had this column
                columns.insert(columns.index("label") + 1, "labelled_by")
            latest = value and (value[0], self.labeller, value[1])
            if value is None:  # the cell keeps the latest label anyone else gave it, if any
                others = [(v[cell_id][0], n, v[cell_id][1]) for n, v in all_labels(self.dataset).items()
                          if n != self.labeller and cell_id in v]
                latest = max(others, key=lambda x: x[2]) if others else None
            for r in rows:
                if r["cell_id"] == cell_id:
                    r["label"], r["labelled_by"] = (latest[0], latest[1]) if latest else ("", "")
            write_manifest(self.dataset, rows, columns)
            self.stamp = self._stamp()  # our own write is no news: the queue keeps its order

    def progress(self) -> dict[str, Any]:
        """Cells labelled by this labeller, per slide/session and in all."""
        with self._lock:
            per: dict[str, list[int]] = {}
            for c in self.cells.values():
                s = per.setdefault(c.session, [0, 0])
                s[0] += c.cell_id in self.mine
                s[1] += 1
            counts = Counter(v[0] for k, v in self.mine.items() if k in self.cells)
            return {"labeller": self.labeller, "labelled": sum(s[0] for s in per.values()), "cells": len(self.cells),
                    "skipped": len(self._skipped), "by_label": dict(counts), "can_undo": len(self._undo),
                    "sessions": [{"session": k, "labelled": v[0], "cells": v[1]} for k, v in sorted(per.items())]}

    def crop_path(self, cell_id: str) -> Path:
        """The cell's crop file, which must lie inside the dataset (a manifest edited to point elsewhere
        is refused)."""
        path = (self.dataset / self._cell(cell_id).filename).resolve()
        if not path.is_relative_to(self.dataset.resolve()):
            raise DataError(f"the manifest's file for cell {cell_id} lies outside {self.dataset}")
        return path

    def source_frame(self, cell_id: str) -> Path | None:
        """The frame file a cell was cut from, when it is a still image that can still be found (a path
        as harvested, else relative to the dataset's folder); None for a video, a camera or a moved file."""
        src = Path(self._cell(cell_id).row.get("source", ""))
        for p in (src, self.dataset.parent / src):
            if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
                return p
        return None
