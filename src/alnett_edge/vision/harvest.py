"""``alnett-edge harvest``: training cells from a microscope's own frames.

A source is a folder of field frames (each image a field of its own), class folders of frames
(``labels_from_folders``: every cell inherits its field's class as a *weak* label), a video file, or a
camera (tracked: each cell is written once, from its sharpest observation). Every cell goes through the
daemon's own vision path (:mod:`alnett_edge.vision`): the pixel size from the red cells, the detector,
the tracker, the quality gate and the crop builder, so a harvested cell is the exact image a model
is given before its card's preprocessing.

* **Sessions.** The pixel size is estimated per session (a folder that holds frames, a video, a
  camera run), never once for everything: two folders shot at different magnifications must not make
  one's cells look larger than the other's.
* **The canvas** is fixed in µm for the whole dataset, from the cells themselves (the 98th percentile
  of their extent plus a margin, over a sample of every session) unless given, and kept on re-runs;
  the crops differ in pixels from session to session, not in µm.
* **The dataset** is ``cells/<session>/<cell id>.png`` (lossless), ``manifest.csv`` (one row a cell;
  written whole to a temporary file and renamed, so a reader never sees half of it) and
  ``harvest.json`` (the canvas, the class mapping and each session's optics). Re-running adds cells:
  a cell already in the manifest (same source, frame and box) is not written again, and no label is
  overwritten. The ``patient_id`` column is the split group (the session, or the field where a
  folder is a class, not a slide), so ``train --data DATASET`` never puts one group on both sides.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.capture.base import FrameSkipped, SourceSettings, make_source, parse_spec
from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image
from alnett_edge.card import ClassSet
from alnett_edge.data.sources import BINARY, HARVEST_META, meta_classes, parse_label
from alnett_edge.errors import CheckpointError, ConfigError, DataError
from alnett_edge.files import atomic_text
from alnett_edge.runtime.base import Runtime
from alnett_edge.vision.cells import EDGE_TRIM_UM, QualityConfig, cell_image, crop_scale, gate
from alnett_edge.vision.detector import SMUDGE, CellDetector, Detection, DetectorConfig
from alnett_edge.vision.optics import CALIBRATION_FRAMES, OpticsConfig, estimate_um_per_px
from alnett_edge.vision.path import classify_crops
from alnett_edge.vision.tracking import Track, TrackBook, TrackingConfig

log = logging.getLogger(__name__)

MANIFEST, META = "manifest.csv", HARVEST_META
META_VERSION = 1
#: the manifest's columns, in order; ``prob_<class>`` columns follow when a bundle classified the cells
COLUMNS = ("filename", "label", "labelled_by", "weak_label", "field_class", "patient_id", "cell_id", "session", "source", "frame",
           "x0", "y0", "x1", "y1", "um_per_px", "track", "sharpness", "model_sha256", "appearance_distance")
#: the canvas is this quantile of the sampled cells' extent (µm), times CANVAS_MARGIN, rounded up to 1 µm (the
#: top percent is mostly masks that ran into red cells: on all-fields p95 26.7, p98 ~28, p99 31.9 µm)
CANVAS_QUANTILE, CANVAS_MARGIN = 0.98, 1.1
GROUP_BY = ("auto", "session", "field")


@dataclass
class SessionReport:
    session: str
    source: str
    um_per_px: float | None = None
    optics: str = ""
    frames: int = 0
    detections: int = 0
    written: int = 0
    already: int = 0  # cells already in the dataset (a re-run)
    unreadable: list[str] = field(default_factory=list)  # frames that could not be decoded (skipped)
    abstained: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "abstained"}, "abstained": dict(self.abstained)}


@dataclass
class _Session:
    name: str  # relative folder, video name or camera spec with its start time
    source: str
    frames: list[Path] | None  # a folder's frame files; None for a stream
    field_class: str = ""  # the class folder it lies in (labels_from_folders)


# -- the dataset on disk -------------------------------------------------------------------------------

def read_manifest(dataset: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The rows and columns of a harvest's manifest; a one-line error for a file that is not one."""
    path = dataset / MANIFEST
    if not path.is_file():
        return [], list(COLUMNS)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or ())
            missing = [c for c in ("filename", "label", "cell_id", "session", "patient_id") if c not in columns]
            if missing:
                raise DataError(f"{path} is not a harvest manifest (no column {', '.join(missing)})")
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{path}:{reader.line_num}: the row does not have the header's "
                                    f"{len(columns)} columns (edited by hand?)")
                if not row["cell_id"] or not row["filename"]:
                    raise DataError(f"{path}:{reader.line_num}: a row without cell_id or filename")
                rows.append(row)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text CSV (binary data?)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    return rows, columns


def write_manifest(dataset: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """The whole manifest, written to a temporary file and renamed over the old one (atomic)."""
    with atomic_text(dataset / MANIFEST) as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@contextlib.contextmanager
def manifest_lock(dataset: Path) -> Iterator[None]:
    """Held while a manifest is read, changed and written back (a harvest's re-run, a labeller, a second
    labeller in another process): an exclusive lock on ``DATASET/.manifest.lock``."""
    dataset.mkdir(parents=True, exist_ok=True)
    with open(dataset / ".manifest.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


#: the columns a person's labelling sets (``alnett-edge label``); a harvest re-run never overwrites them
LABEL_COLUMNS = ("label", "labelled_by")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_text(path) as f:
        f.write(json.dumps(data, indent=2))


def open_dataset(dataset: Path) -> dict[str, Any]:
    """The harvest's metadata (empty for a new or empty folder); anything else is refused in one line."""
    if dataset.exists() and not dataset.is_dir():
        raise ConfigError(f"--out {dataset} is a file, not a dataset folder")
    meta_path = dataset / META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{meta_path} is not valid JSON ({exc}); restore it or start a new dataset") from None
        canvas = meta.get("canvas_um") if isinstance(meta, dict) else None
        if not isinstance(canvas, (int, float)) or isinstance(canvas, bool) or not 1 <= canvas <= 500:
            raise DataError(f"{meta_path} has no valid canvas_um (edited by hand?); restore it or start a new dataset")
        return meta
    if dataset.is_dir() and any(not p.name.startswith(".") for p in dataset.iterdir()):  # .manifest.lock
        raise ConfigError(f"--out {dataset} is a folder with other files and no {META}: not a harvest dataset "
                          "(name a new or empty folder, or an earlier harvest to add to)")
    return {}


def init_dataset(dataset: Path, canvas_um: float, classes: ClassSet = BINARY) -> None:
    """An empty harvest of ``classes`` on a ``canvas_um`` canvas where there is none yet (the device page's
    label dataset before its first cell); an existing one must have that canvas and those classes."""
    with manifest_lock(dataset):
        meta = open_dataset(dataset)
        if meta and abs(float(meta["canvas_um"]) - canvas_um) > 1e-6:
            raise ConfigError(f"{dataset} holds cells cut on a {meta['canvas_um']} µm canvas; this model cuts "
                              f"{canvas_um} µm: name another label dataset")
        held = meta_classes(meta, dataset / META).names if meta else classes.names
        if held != classes.names:
            raise ConfigError(f"{dataset} holds cells of the classes {', '.join(held)}; this model's are "
                              f"{', '.join(classes.names)}: name another label dataset")
        if not meta:
            _write_json(dataset / META, {"version": META_VERSION, "canvas_um": canvas_um, "edge_trim_um": EDGE_TRIM_UM,
                                         "classes": {}, "class_names": list(classes.names),
                                         "blast_classes": list(classes.blast), "sessions": {}})
        if not (dataset / MANIFEST).is_file():
            write_manifest(dataset, [], COLUMNS)


def add_labelled_cell(dataset: Path, canvas_um: float, image_rgb: np.ndarray, row: dict[str, Any],
                      classes: ClassSet = BINARY) -> None:
    """One cell a person labelled elsewhere (the device page's gallery) added to a harvest dataset, made
    if new: its crop (cut on ``canvas_um``, which must be the dataset's) and its manifest row (``row``:
    manifest columns, ``cell_id`` and ``session`` among them). A cell already in it gets the new label."""
    init_dataset(dataset, canvas_um, classes)
    with manifest_lock(dataset):
        meta = open_dataset(dataset)
        rows, columns = read_manifest(dataset)
        for c in (*COLUMNS, *(k for k in row if k.startswith("prob_"))):
            if c not in columns:
                columns.append(c)
        known = next((r for r in rows if r["cell_id"] == row["cell_id"]), None)
        if known is not None:
            known.update({c: str(row.get(c, "")) for c in LABEL_COLUMNS})
        else:
            rel = Path("cells") / _slug(str(row["session"])) / f"{row['cell_id']}.png"
            (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(dataset / rel), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
                raise DataError(f"cannot write {dataset / rel}")
            rows.append({**{c: "" for c in columns}, **{k: str(v) for k, v in row.items()}, "filename": str(rel)})
        write_manifest(dataset, rows, columns)
        meta["sessions"].setdefault(str(row["session"]), {"source": str(row.get("source", "")),
                                                          "um_per_px": row.get("um_per_px") or None,
                                                          "optics": "the device page", "updated": time.time()})
        _write_json(dataset / META, meta)


def dataset_canvas_um(data: str | Path) -> float | None:
    """The canvas (µm) a harvest's crops were cut on, or None when ``data`` is not a harvest."""
    path = Path(data)
    path = path.parent if path.is_file() else path
    if not (path / META).is_file():
        return None
    return float(open_dataset(path)["canvas_um"])


# -- sources -------------------------------------------------------------------------------------------

def _frames_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def class_mapping(specs: Sequence[str], blast: Sequence[str] = (),
                  two_classes: str = "") -> tuple[dict[str, str], ClassSet]:
    """``["hem=Benign", "all=Early,Pre,Pro"]`` -> (folder name (lower case) -> class, the classes). Classes
    that are all/hem (or their aliases: benign, malignant, ...) need no ``blast``: C-NMC's two. Any other
    names (``benign=Benign early=Early pre=Pre pro=Pro``) are the model's classes, in the order given, and
    ``blast`` names those whose share is the blast ratio. ``two_classes``: only all/hem are taken, and
    this says why (a field is ALL or benign)."""
    out: dict[str, str] = {}
    order: list[str] = []
    for spec in specs:
        cls, sep, folders = spec.partition("=")
        cls = cls.strip().lower()
        names = [f.strip() for f in folders.split(",") if f.strip()]
        if not sep or not cls or not names:
            raise ConfigError(f"--classes {spec!r}: write CLASS=FOLDER[,FOLDER...], e.g. all=Early,Pre,Pro")
        if not _CLASS_NAME.match(cls) and not is_binary_class(cls):  # names, or C-NMC's 1 / 0
            raise ConfigError(f"--classes {spec!r}: a class name is 1 to 40 lower-case letters, digits, '_' or '-', "
                              "starting with a letter")
        order += [cls] if cls not in order else []
        for name in names:
            if name.lower() in out:
                raise ConfigError(f"--classes: folder {name!r} is given twice")
            out[name.lower()] = cls
    blast = [b.strip().lower() for item in blast for b in item.split(",") if b.strip()]
    if two_classes and not all(is_binary_class(c) for c in order):
        raise ConfigError(f"{two_classes}: map the folders onto all and hem (--classes hem=Benign --classes "
                          "all=Early,Pre,Pro)")
    if not blast and all(is_binary_class(c) for c in order):  # all/hem by any alias: C-NMC's two classes
        return {f: ("hem", "all")[parse_label(c, "--classes")] for f, c in out.items()}, BINARY
    if not blast:
        raise ConfigError(f"--classes {', '.join(order)}: name the classes whose share is the blast ratio with "
                          "--blast (e.g. --blast early,pre,pro)")
    if not order:
        raise ConfigError("--blast names blast classes of --classes CLASS=FOLDER,...; give the classes too")
    unknown = [b for b in blast if b not in order]
    if unknown:
        raise ConfigError(f"--blast {', '.join(unknown)}: not among the classes {', '.join(order)}")
    try:
        return out, ClassSet(tuple(order), tuple(c for c in order if c in blast))
    except CheckpointError as exc:
        raise ConfigError(f"--classes/--blast: {exc}") from None


def find_sessions(root: Path, labels_from_folders: bool, mapping: dict[str, str]) -> list[_Session]:
    """Every folder below ``root`` that holds frames is a session (class folders: below each class)."""
    if not root.is_dir():
        raise DataError(f"frames folder not found: {root}")
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES})
    if not folders:
        raise DataError(f"no frames (images) in {root}")
    sessions = []
    unknown: set[str] = set()
    for folder in folders:
        rel = folder.relative_to(root)
        cls_folder = rel.parts[0] if rel.parts else ""
        if labels_from_folders:
            if not rel.parts:
                raise DataError(f"{root} holds frames directly; with --labels-from-folders each class is a folder "
                                "(ROOT/CLASS/*.jpg)")
            known = cls_folder.lower() in mapping if mapping else is_binary_class(cls_folder)
            if not known:
                unknown.add(cls_folder)
                continue
        sessions.append(_Session(rel.as_posix() or ".", str(folder), _frames_in(folder),
                                 cls_folder if labels_from_folders else ""))
    if unknown:
        hint = "" if mapping else " (name each folder's class with --classes CLASS=FOLDER,...)"
        raise DataError(f"class folders that match no class: {', '.join(sorted(unknown))}{hint}")
    return sessions


def is_binary_class(name: str) -> bool:
    """Whether ``name`` is one of C-NMC's two classes by any alias (all, blast, malignant; hem, normal, benign)."""
    try:
        parse_label(name, "")
    except DataError:
        return False
    return True


def weak_label(field_class: str, mapping: dict[str, str]) -> str:
    """The class a field's folder gives its cells (the mapping's, else the folder's name as all/hem)."""
    if not field_class:
        return ""
    cls = mapping.get(field_class.lower())
    return cls if cls is not None else ("hem", "all")[parse_label(field_class, field_class)]


# -- the harvest ---------------------------------------------------------------------------------------

@dataclass
class HarvestOptions:
    labels_from_folders: bool = False
    classes: Sequence[str] = ()
    blast: Sequence[str] = ()  # the blast classes among ``classes`` (needed when they are not all/hem)
    canvas_um: float | None = None
    group_by: str = "auto"
    track: bool = False  # a folder's frames are consecutive frames of one field (tracked), not fields
    max_frames: int | None = None
    duration: float | None = None
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        if self.group_by not in GROUP_BY:
            raise ConfigError(f"--group-by must be one of {', '.join(GROUP_BY)}, got {self.group_by!r}")
        if self.canvas_um is not None and not 4 <= self.canvas_um <= 200:
            raise ConfigError(f"--canvas-um must be between 4 and 200 µm, got {self.canvas_um}")
        for what, v in (("--max-frames", self.max_frames), ("--duration", self.duration)):
            if v is not None and not v > 0:
                raise ConfigError(f"{what} must be > 0, got {v}")


def _cell_id(frame_key: str, box: tuple[int, int, int, int]) -> str:
    """A cell's identity: its frame's (the pixels of a still, a stream's session and index) and its box."""
    return hashlib.sha1(f"{frame_key}|{','.join(map(str, box))}".encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "root"


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def _extent_um(det: Detection, um_per_px: float) -> float:
    ys, xs = np.nonzero(det.mask)
    return (max(xs.max() - xs.min(), ys.max() - ys.min()) + 1) * um_per_px if len(xs) else 0.0


class Harvester:
    """One harvest run into ``dataset``; :meth:`run` over a source returns the per-session reports."""

    def __init__(self, dataset: str | Path, options: HarvestOptions, runtime: Runtime | None = None,
                 model_sha256: str = "") -> None:
        options.validate()
        self.dataset, self.opt, self.runtime, self.model_sha256 = Path(dataset), options, runtime, model_sha256
        self.meta = open_dataset(self.dataset)
        self.mapping, self.class_set = class_mapping(options.classes, options.blast)
        known = meta_classes(self.meta, self.dataset / META)
        if self.meta and options.labels_from_folders and known != self.class_set:
            raise ConfigError(f"{self.dataset} holds the classes {', '.join(known.names)} (blast: "
                              f"{', '.join(known.blast)}); "
                              f"this run gives {', '.join(self.class_set.names)} (blast: "
                              f"{', '.join(self.class_set.blast)}): harvest into a new folder")
        if self.meta and options.canvas_um and abs(options.canvas_um - self.meta["canvas_um"]) > 1e-6:
            raise ConfigError(f"{self.dataset} was harvested on a {self.meta['canvas_um']} µm canvas; a re-run keeps "
                              f"it (drop --canvas-um, or harvest into a new folder)")
        self.rows, self.columns = read_manifest(self.dataset)
        self.known = {r["cell_id"] for r in self.rows}
        self.class_names = runtime.card.class_names if runtime is not None else ()
        for c in (f"prob_{n}" for n in self.class_names):
            if c not in self.columns:
                self.columns.append(c)
        self.canvas_um: float = float(self.meta.get("canvas_um") or options.canvas_um or 0)
        self.reports: list[SessionReport] = []

    # -- the pieces of the path -------------------------------------------------------------------
    def _optics(self, frames: list[np.ndarray], report: SessionReport) -> CellDetector | None:
        um = self.opt.optics.resolve()
        if um:
            report.um_per_px, report.optics = um, "given"
        else:
            try:
                cal = estimate_um_per_px(iter(frames), self.opt.optics.rbc_um)
            except DataError as exc:
                report.optics = f"skipped: {exc}"
                log.warning("session %s skipped: %s", report.session, exc)
                return None
            report.um_per_px = round(cal.um_per_px, 5)
            report.optics = f"estimated from {cal.frames} frames (spread {100 * cal.spread:.1f} %)"
        return CellDetector(self.opt.detector, float(report.um_per_px))

    def _group(self, session: _Session, frame_name: str) -> str:
        by = self.opt.group_by
        if by == "auto":  # a class folder holding its fields directly is no slide: each field is its own group
            by = "field" if session.field_class and session.name == session.field_class else "session"
        return f"{session.name}/{frame_name}" if by == "field" else session.name

    def _decide(self, track: Track, session: _Session, report: SessionReport, frames: dict[int, tuple[str, str]],
                new_rows: list[dict[str, Any]]) -> None:
        """A track's one cell: its sharpest good observation written, or its most frequent reason counted."""
        if not track.candidates:
            report.abstained[track.reasons.most_common(1)[0][0] if track.reasons else "not classified"] += 1
            return
        best = track.candidates[0]
        track.candidates = []
        frame_name, frame_key = frames[best.frame]
        cid = _cell_id(frame_key, best.box)
        if cid in self.known:
            report.already += 1
            return
        rel = Path("cells") / _slug(session.name) / f"{cid}.png"
        if not cv2.imwrite(str(self.dataset / rel), cv2.cvtColor(best.crop, cv2.COLOR_RGB2BGR)):
            raise DataError(f"cannot write {self.dataset / rel}")
        weak = weak_label(session.field_class, self.mapping)
        row: dict[str, Any] = {
            "filename": rel.as_posix(), "label": "", "weak_label": weak, "field_class": session.field_class,
            "patient_id": self._group(session, frame_name), "cell_id": cid, "session": session.name,
            "source": session.source if session.frames is None else f"{session.source}/{frame_name}",
            "frame": best.frame, "x0": best.box[0], "y0": best.box[1], "x1": best.box[2], "y1": best.box[3],
            "um_per_px": report.um_per_px, "track": track.id, "sharpness": round(best.sharpness, 3),
            "model_sha256": self.model_sha256}
        if best.model_crop is not None:
            row["_model_crop"] = best.model_crop
        self.known.add(cid)
        new_rows.append(row)
        report.written += 1

    def _classify(self, rows: list[dict[str, Any]]) -> None:
        """The bundle's probabilities for the new cells, each at the bundle's own canvas, with the cell's
        distance from the bundle's training cells (recorded, never abstained: a cell unlike them is
        what a person should label first)."""
        todo = [r for r in rows if "_model_crop" in r]
        if self.runtime is None or not todo:
            return
        probs, dist, _, _ = classify_crops([r.pop("_model_crop") for r in todo], self.runtime, 0, "record")
        for r, p, d in zip(todo, probs, dist):
            r["appearance_distance"] = "" if d is None else round(float(d), 3)
            for name, v in zip(self.class_names, p if p is not None else [None] * len(self.class_names)):
                r[f"prob_{name}"] = "" if v is None else round(float(v), 6)

    def _read(self, path: Path, report: SessionReport) -> np.ndarray | None:
        """A still through the bounded decoder; an unreadable one is skipped and named in the report."""
        try:
            return load_image(path, what="frame")
        except DataError as exc:
            if str(path) not in report.unreadable:
                report.unreadable.append(str(path))
                log.warning("skipped: %s", exc)
            return None

    def _frames(self, session: _Session, report: SessionReport) -> Iterator[tuple[int, str, str, np.ndarray]]:
        """(index, name, identity, RGB) of a session's frames, bounded by max_frames / duration. A
        still's identity is a digest of its pixels (however its path is spelled on a re-run), a stream
        frame's its session and index."""
        t0 = time.monotonic()
        if session.frames is not None:
            for i, path in enumerate(session.frames):
                if (self.opt.max_frames and i >= self.opt.max_frames) or \
                        (self.opt.duration and time.monotonic() - t0 > self.opt.duration):
                    return
                rgb = self._read(path, report)
                if rgb is not None:
                    yield i, path.name, hashlib.sha1(rgb.tobytes()).hexdigest(), rgb
            return
        with make_source(session.source, SourceSettings(loop=False, timeout=5.0)) as source:
            i, skipped = 0, 0
            while not (self.opt.max_frames and i >= self.opt.max_frames) and \
                    not (self.opt.duration and time.monotonic() - t0 > self.opt.duration):
                try:
                    rgb = source.read()
                except FrameSkipped:
                    skipped += 1
                    if skipped > 100:
                        raise DataError(f"{session.source}: more than 100 unreadable frames in a row") from None
                    continue
                if rgb is None:
                    return
                skipped = 0
                yield i, f"frame{i:07d}", f"{session.name}#{i}", rgb
                i += 1

    def _sample(self, session: _Session, report: SessionReport) -> tuple[CellDetector | None, list[float]]:
        """The session's optics from its calibration frames, and its cells' extents there (µm)."""
        if session.frames is not None:
            frames = [f for f in (self._read(p, report) for p in _evenly(session.frames, CALIBRATION_FRAMES))
                      if f is not None]
        else:
            frames = [rgb for *_, rgb in _take(self._frames(session, report), CALIBRATION_FRAMES)]
        if not frames:
            raise DataError(f"{session.source} gave no frames")
        detector = self._optics(frames, report)
        if detector is None:
            return None, []
        extents = [_extent_um(d, detector.um_per_px) for rgb in frames for d in detector.detect(rgb)
                   if not d.touches_border and d.kind != SMUDGE]
        return detector, extents

    def _choose_canvas(self, extents: list[float]) -> None:
        if self.canvas_um:
            return
        if not extents:
            raise DataError("no whole cell was found in the sessions' calibration frames to size the canvas "
                            "(give --canvas-um, or check [optics] / the frames)")
        self.canvas_um = float(np.ceil(np.quantile(extents, CANVAS_QUANTILE) * CANVAS_MARGIN))
        log.info("canvas %.0f µm (the %d-th percentile of %d cells' extent, x%.1f)", self.canvas_um,
                 int(100 * CANVAS_QUANTILE), len(extents), CANVAS_MARGIN)

    def _harvest(self, session: _Session, detector: CellDetector, report: SessionReport) -> list[dict[str, Any]]:
        """The main pass over one session: detect -> track -> gate -> crop; each track's cell once."""
        canvas_px, trim_px = crop_scale(self.canvas_um, detector.um_per_px)
        card = self.runtime.card if self.runtime is not None else None
        # the bundle's own scale (a card without a canvas: zoomed to fit, as the daemon does)
        model_px = crop_scale(card.input.canvas_um, detector.um_per_px) if card is not None else None
        stills = session.frames is not None and not self.opt.track
        tracking = dataclasses.replace(self.opt.tracking, stage_motion=False) if stills else self.opt.tracking
        book = TrackBook(tracking, detector.um_per_px)
        frames: dict[int, tuple[str, str]] = {}
        done: set[int] = set()  # tracks whose cell is decided: later frames of it are not looked at
        new_rows: list[dict[str, Any]] = []
        (self.dataset / "cells" / _slug(session.name)).mkdir(parents=True, exist_ok=True)
        for index, name, key, rgb in self._frames(session, report):
            frames[index] = (name, key)
            report.frames += 1
            if stills:
                book.new_field()  # each image is a field of its own
            dets = detector.detect(rgb)
            report.detections += len(dets)
            for det, track in zip(dets, book.assign(rgb, dets, index)):
                if track.id in done:
                    continue
                reason, sharp = gate(rgb, det, self.opt.quality, canvas_px)
                track.observe(index, det, reason, sharp, None if reason else cell_image(rgb, det, canvas_px, trim_px),
                              1, None if reason or not model_px else cell_image(rgb, det, *model_px))
            watched = [t for t in book.open if t.good >= tracking.watch and t.id not in done]
            for track in [*(t for t in book.ended() if t.id not in done), *watched]:
                done.add(track.id)
                self._decide(track, session, report, frames, new_rows)
        for track in book.close():
            if track.id not in done:
                self._decide(track, session, report, frames, new_rows)
        self._classify(new_rows)
        return new_rows

    # -- the run ------------------------------------------------------------------------------------
    def run(self, source: str | Path) -> list[SessionReport]:
        sessions = self._sessions(source)
        samples: list[tuple[_Session, SessionReport, CellDetector | None]] = []
        extents: list[float] = []
        for s in sessions:
            report = SessionReport(s.name, s.source)
            detector, ext = self._sample(s, report)
            samples.append((s, report, detector))
            extents += ext
        self._choose_canvas(extents)
        self.dataset.mkdir(parents=True, exist_ok=True)
        meta = {"version": META_VERSION, "canvas_um": self.canvas_um, "edge_trim_um": EDGE_TRIM_UM,
                "classes": dict(self.mapping), "class_names": list(self.class_set.names),
                "blast_classes": list(self.class_set.blast), "sessions": dict(self.meta.get("sessions") or {})}
        for session, report, detector in samples:
            if detector is not None:
                new_rows = self._harvest(session, detector, report)
                self.rows.extend(new_rows)
                self._save()  # after each session: a stop loses one at most
            meta["sessions"][session.name] = {"source": session.source, "um_per_px": report.um_per_px,
                                              "optics": report.optics, "updated": time.time()}
            _write_json(self.dataset / META, meta)
            self.reports.append(report)
        return self.reports

    def _save(self) -> None:
        """The manifest written back with the labels set meanwhile (by ``alnett-edge label``) kept."""
        with manifest_lock(self.dataset):
            on_disk, columns = read_manifest(self.dataset)
            for c in columns:
                if c not in self.columns:
                    self.columns.append(c)
            labels = {r["cell_id"]: r for r in on_disk}
            for row in self.rows:
                if row["cell_id"] in labels:
                    row.update({c: labels[row["cell_id"]].get(c, "") for c in LABEL_COLUMNS if c in columns})
            write_manifest(self.dataset, self.rows, self.columns)

    def _sessions(self, source: str | Path) -> list[_Session]:
        path = Path(source)
        if path.is_dir():
            return find_sessions(path, self.opt.labels_from_folders, self.mapping)
        if self.opt.labels_from_folders:
            raise ConfigError("--labels-from-folders needs a folder of class folders")
        kind, _ = parse_spec(str(source))
        if kind not in ("video", "images") and not (self.opt.max_frames or self.opt.duration):
            raise ConfigError(f"{source} is a live source: give --max-frames or --duration")
        name = str(path.resolve()) if kind == "video" else f"{source}@{time.strftime('%Y%m%dT%H%M%S')}"
        return [_Session(name, str(source), None)]


def _take(it: Iterator, n: int) -> list:
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


def contact_sheet(dataset: str | Path, rows: Sequence[dict[str, str]], dest: str | Path, per_group: int = 16,
                  tile: int = 64, seed: int = 0) -> Path:
    """A PNG of harvested cells, a row of up to ``per_group`` (a random sample) for each field class
    (or session): every crop spans the same canvas in µm, so the tiles are at one scale."""
    dataset, groups = Path(dataset), {}
    for r in rows:
        groups.setdefault(r.get("field_class") or r.get("session") or "?", []).append(r)
    if not groups:
        raise DataError(f"{dataset} holds no cells to draw")
    rng, bands = np.random.default_rng(seed), []
    for name, members in sorted(groups.items()):
        pick = [members[i] for i in sorted(rng.choice(len(members), min(per_group, len(members)), replace=False))]
        tiles = []
        for r in pick:
            try:
                img = cv2.cvtColor(load_image(dataset / r["filename"], what="cell"), cv2.COLOR_RGB2BGR)
            except DataError as exc:
                log.warning("left out of the sheet: %s", exc)
                continue
            tiles.append(cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA))
        tiles += [np.full((tile, tile, 3), 255, np.uint8)] * (per_group - len(tiles))
        bar = np.full((22, tile * per_group, 3), 255, np.uint8)
        cv2.putText(bar, f"{name}: {len(members)} cells", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40), 1,
                    cv2.LINE_AA)
        bands.append(np.vstack([bar, np.hstack(tiles)]))
    dest = Path(dest)
    dest = dest if dest.suffix else dest.with_suffix(".png")
    if not cv2.imwrite(str(dest), np.vstack(bands)):
        raise DataError(f"cannot write {dest}")
    return dest
