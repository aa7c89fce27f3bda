"""Where decisions go: SQLite (WAL; one row per cell, that is per track (``vision/tracking.py``), one
per session), JSON lines, and annotated snapshots (every N frames and on each blast). A sink is one class with ``open``, ``write`` and
``close``.

The sink policy (:class:`Recorder`; docs/daemon.md, "When the disk fails"):

- The database is the store of record. A cell counts (status, metrics, the session row, the summary)
  only once its frame's rows are committed; a frame is one transaction.
- A failed commit (disk full, I/O error, a read-only file system) or a database file that was deleted
  or replaced while running does not stop capture: the frame's rows are kept in memory (up to
  ``[sinks] max_pending_cells``) and retried with every later frame, ``/healthz`` answers 503 and
  ``/status`` says why. A deleted database is restored from the open connection, rows and all.
- When the pending rows pass the limit, the daemon stops cleanly (stop reason "database failing"); at
  exit, rows that still could not be stored are named in a one-line error (exit code 3), never counted.
- JSONL and snapshots are copies for people: their failures are logged once per kind, counted in
  ``/status`` and never stop the daemon; a deleted JSONL file or snapshot folder is made again.
- Paths that cannot be written at all are one-line errors at start-up, before capture opens.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.errors import AlnettError, ConfigError
from alnett_edge.vision.differential import session_blast
from alnett_edge.vision.record import CellRecord

log = logging.getLogger(__name__)


class StoreError(AlnettError):
    """Classified cells that could not be stored (the database could not be written)."""

    exit_code = 3


class SinkFault(Exception):
    """One write of a sink failed (internal: the :class:`Recorder` applies the policy)."""


def _writable_folder(folder: Path, what: str) -> None:
    """Make ``folder`` and prove a file can be written in it, or a one-line ConfigError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".alnett-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write {what} in {folder}: {exc.strerror or exc}") from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Sink:
    def open(self, session: dict[str, Any]) -> None:
        pass

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> None:
        """``cells``: the rows decided now (tracks); ``view``: every detection of this frame as shown on
        it (for pictures); ``frame_rgb`` None: rows without a frame (the tracks a stop decided)."""
        raise NotImplementedError

    def close(self, summary: dict[str, Any]) -> None:
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, ended REAL, source TEXT, bundle TEXT,
    model_sha256 TEXT, frames INTEGER DEFAULT 0, cells INTEGER DEFAULT 0, summary TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL REFERENCES sessions(id), time REAL NOT NULL,
    frame_index INTEGER NOT NULL, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER, prob_hem REAL, prob_all REAL,
    label TEXT, abstain_reason TEXT, model_sha256 TEXT NOT NULL, track_id INTEGER, first_frame INTEGER,
    observations INTEGER, classified INTEGER);
CREATE INDEX IF NOT EXISTS cells_session ON cells(session_id, frame_index);
"""


class SqliteSink(Sink):
    """The store of record. ``write`` raises :class:`SinkFault` when the frame's rows were not committed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frames = self.cells = 0
        self.restored = 0  # times the database file was deleted under us and restored

    def open(self, session: dict[str, Any]) -> None:
        if self.path.is_dir():
            raise ConfigError(f"the database {self.path} is a folder; give a file path (e.g. {self.path / 'cells.db'})")
        _writable_folder(self.path.parent, "the database")
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            have = {row[1] for row in self.db.execute("PRAGMA table_info(cells)")}
            for column in ("track_id", "first_frame", "observations", "classified"):  # a database from before tracking
                if column not in have:
                    self.db.execute(f"ALTER TABLE cells ADD COLUMN {column} INTEGER")
            if "name" not in {row[1] for row in self.db.execute("PRAGMA table_info(sessions)")}:  # before named slides
                self.db.execute("ALTER TABLE sessions ADD COLUMN name TEXT")
            cur = self.db.execute("INSERT INTO sessions (started, source, bundle, model_sha256, name) VALUES (?, ?, ?, ?, ?)",
                                  (session["started"], session["source"], session["bundle"], session["model_sha256"],
                                   session.get("name", "")))
            self.db.commit()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot write the database {self.path}: {exc}") from exc
        self.session_id = cur.lastrowid
        self.ident = _identity(self.path)

    def _ensure_file(self) -> None:
        """The database file is still ours; if it was deleted or replaced, write it again from the
        open connection (which still holds every row)."""
        if _identity(self.path) == self.ident:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # replaced by another file: keep it, write ours beside it
                self.path.rename(self.path.with_name(self.path.name + f".replaced-{int(time.time())}"))
            fresh = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.backup(fresh)
            fresh.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise SinkFault(f"the database file {self.path} was deleted and cannot be written again: {exc}") from exc
        self.db.close()
        self.db = fresh
        self.ident = _identity(self.path)
        self.restored += 1
        log.warning("the database %s was deleted or replaced while running; restored it with every row", self.path)

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> None:
        self.write_frames([cells], int(frame_rgb is not None))

    def write_frames(self, frames: list[list[CellRecord]], n_frames: int | None = None) -> None:
        """Commit several batches of rows in one transaction (all or none); ``n_frames`` of them were
        frames (default: all)."""
        self._ensure_file()
        n = sum(len(c) for c in frames)
        n_frames = len(frames) if n_frames is None else n_frames
        try:
            self.db.executemany(
                "INSERT INTO cells (session_id, time, frame_index, x0, y0, x1, y1, prob_hem, prob_all, label, abstain_reason,"
                " model_sha256, track_id, first_frame, observations, classified) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.session_id, c.time, c.frame_index, *c.box, c.prob_hem, c.prob_all, c.label, c.abstain_reason,
                  c.model_sha256, c.track_id, c.first_frame, c.observations, c.classified)
                 for cells in frames for c in cells])
            self.db.execute("UPDATE sessions SET frames = ?, cells = ? WHERE id = ?",
                            (self.frames + n_frames, self.cells + n, self.session_id))
            self.db.commit()
        except sqlite3.Error as exc:
            try:
                self.db.rollback()
            except sqlite3.Error:
                pass
            raise SinkFault(f"cannot write the database {self.path}: {exc}") from exc
        self.frames += n_frames
        self.cells += n

    def close(self, summary: dict[str, Any]) -> None:
        if getattr(self, "db", None) is None:  # never opened, or closed already
            return
        try:
            self._ensure_file()
            self.db.execute("UPDATE sessions SET ended = ?, summary = ? WHERE id = ?",
                            (time.time(), json.dumps(summary), self.session_id))
            self.db.commit()
        except (sqlite3.Error, SinkFault) as exc:
            raise SinkFault(f"cannot write the session summary to {self.path}: {exc}") from exc
        finally:
            self.db.close()
            self.db = None


class JsonlSink(Sink):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def open(self, session: dict[str, Any]) -> None:
        if self.path.is_dir():
            raise ConfigError(f"the JSONL file {self.path} is a folder; give a file path")
        _writable_folder(self.path.parent, "the JSONL file")
        existed = self.path.exists()
        self._open()
        try:
            self._line({"session": session})
        except SinkFault as exc:  # a full disk at start-up: one line, and no empty file left behind
            try:
                self.f.close()
            except OSError:
                pass
            if not existed and self.path.is_file() and self.path.stat().st_size == 0:
                self.path.unlink()
            raise ConfigError(str(exc)) from None

    def _open(self) -> None:
        try:
            self.f = open(self.path, "a", buffering=1)
        except OSError as exc:
            raise ConfigError(f"cannot write the JSONL file {self.path}: {exc.strerror or exc}") from None
        self.ident = _identity(self.path)

    def _line(self, obj: dict[str, Any]) -> None:
        try:
            if _identity(self.path) != self.ident:  # deleted or rotated away: start the file again
                self.f.close()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.f = open(self.path, "a", buffering=1)
                self.ident = _identity(self.path)
                log.warning("the JSONL file %s was deleted or moved while running: the lines written before are "
                            "not in the new file (the database holds every row)", self.path)
            self.f.write(json.dumps(obj) + "\n")
        except OSError as exc:
            raise SinkFault(f"cannot write the JSONL file {self.path}: {exc.strerror or exc}") from exc

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> None:
        for c in cells:
            self._line({f.name: getattr(c, f.name) for f in fields(c) if f.name != "crop"})

    def close(self, summary: dict[str, Any]) -> None:
        if getattr(self, "f", None) is None or self.f.closed:
            return
        try:
            self._line({"summary": summary})
        finally:
            try:
                self.f.close()
            except OSError:
                pass


#: box colours (RGB): the card's blast class, any other class, abstained
BLAST_COLOUR, OTHER_COLOUR, ABSTAIN_COLOUR = (220, 30, 30), (30, 160, 60), (150, 150, 150)


def annotate(frame_rgb: np.ndarray, cells: list[CellRecord], blast: tuple[str, ...]) -> np.ndarray:
    """The frame with each cell's box, coloured by its verdict (``blast``: the card's blast classes)."""
    img = frame_rgb.copy()
    for c in cells:
        x0, y0, x1, y1 = c.box
        colour = ABSTAIN_COLOUR if c.label is None else BLAST_COLOUR if c.label in blast else OTHER_COLOUR
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        text = f"{c.label} {max(c.prob_all or 0, c.prob_hem or 0):.2f}" if c.label else f"abstain: {c.abstain_reason}"
        cv2.putText(img, text, (x0 + 3, max(12, y0 + 14)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return img


class SnapshotSink(Sink):
    """Annotated JPEGs every ``every`` frames and whenever a blast is called."""

    def __init__(self, folder: str | Path, every: int = 100, min_interval_s: float = 1.0) -> None:
        self.folder, self.every, self.min_interval_s = Path(folder), max(1, every), min_interval_s
        self.written = 0
        self._last_blast = 0.0
        self.blast: tuple[str, ...] = ()  # the card's blast classes, from the session (open)

    def open(self, session: dict[str, Any]) -> None:
        _writable_folder(self.folder, "snapshots")
        self.blast = session_blast(session)

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> None:
        if frame_rgb is None:
            return
        shown = cells if view is None else view
        now = time.monotonic()
        blast = any(c.label in self.blast for c in cells) and now - self._last_blast >= self.min_interval_s
        if frame_index % self.every and not blast:
            return
        if blast:
            self._last_blast = now
        name = f"frame{frame_index:07d}{'-blast' if blast else ''}.jpg"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # made again if it was deleted
            ok = cv2.imwrite(str(self.folder / name), cv2.cvtColor(annotate(frame_rgb, shown, self.blast), cv2.COLOR_RGB2BGR))
        except (OSError, cv2.error) as exc:
            raise SinkFault(f"cannot write snapshot {self.folder / name}: {exc}") from exc
        if not ok:  # OpenCV says nothing more than False
            raise SinkFault(f"cannot write snapshot {self.folder / name}")
        self.written += 1


class CropSink(Sink):
    """Each decided cell's crop as the model saw it (the masked cell at the model's scale), a JPEG named
    after its session, track and outcome: what ``alnett-edge report`` shows for a person to check."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.written = 0

    def open(self, session: dict[str, Any]) -> None:
        _writable_folder(self.folder, "crops")
        self.prefix = f"s{int(session['started'])}"

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> None:
        for c in cells:
            if c.crop is None or not c.crop.size:
                continue
            name = f"{self.prefix}-t{c.track_id or 0:07d}-f{c.frame_index:07d}-{c.label or 'abstain'}.jpg"
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                ok = cv2.imwrite(str(self.folder / name), cv2.cvtColor(c.crop, cv2.COLOR_RGB2BGR))
            except (OSError, cv2.error) as exc:
                raise SinkFault(f"cannot write crop {self.folder / name}: {exc}") from exc
            if not ok:
                raise SinkFault(f"cannot write crop {self.folder / name}")
            self.written += 1


@dataclass
class SinkHealth:
    errors: int = 0
    last_error: str = ""
    _logged: set[str] = field(default_factory=set)

    def fault(self, name: str, exc: Exception) -> None:
        self.errors += 1
        self.last_error = str(exc)
        kind = str(exc).split(":")[-1].strip()
        if kind not in self._logged:  # once per kind of failure, not once per frame
            self._logged.add(kind)
            log.error("%s: %s (the daemon goes on; see /status)", name, exc)


class Recorder:
    """The sink policy above: the database is the store of record, the other sinks are copies."""

    def __init__(self, db: SqliteSink, copies: list[Sink], max_pending_cells: int, max_pending_s: float = 300.0) -> None:
        self.db, self.copies, self.max_pending_cells, self.max_pending_s = db, copies, max_pending_cells, max_pending_s
        self.pending: list[list[CellRecord]] = []
        self.pending_frames = 0  # of the pending batches, the frames (the others: rows a stop decided)
        self.health = {"db": SinkHealth(), **{type(c).__name__: SinkHealth() for c in copies}}
        self.failing_since: float | None = None
        self.closed = False

    @property
    def pending_cells(self) -> int:
        return sum(len(c) for c in self.pending)

    @property
    def over_limit(self) -> bool:
        # frames count too: a full disk during hours of empty fields must not grow memory without end; and
        # time: a slide is not left unrecorded for long however few cells it has
        failing_for = time.time() - self.failing_since if self.failing_since is not None else 0.0
        return (self.pending_cells > self.max_pending_cells or len(self.pending) > self.max_pending_cells
                or (self.max_pending_s > 0 and failing_for > self.max_pending_s))

    def open(self, session: dict[str, Any]) -> None:
        for sink in (self.db, *self.copies):  # every path is checked before capture starts
            sink.open(session)

    def write(self, frame_rgb: np.ndarray | None, frame_index: int, cells: list[CellRecord],
              view: list[CellRecord] | None = None) -> list[CellRecord]:
        """Write one frame's decided rows (``frame_rgb`` None: rows without a frame); returns the rows
        committed to the database now (these and any that were pending), the only ones the caller may
        count."""
        for sink in self.copies:
            try:
                sink.write(frame_rgb, frame_index, cells, view)
            except SinkFault as exc:
                self.health[type(sink).__name__].fault(type(sink).__name__, exc)
        self.pending.append(cells)
        self.pending_frames += int(frame_rgb is not None)
        return self.flush()

    def flush(self) -> list[CellRecord]:
        if not self.pending:
            return []
        try:
            self.db.write_frames(self.pending, self.pending_frames)
        except SinkFault as exc:
            self.health["db"].fault("database", exc)
            if self.failing_since is None:
                self.failing_since = time.time()
            return []
        if self.failing_since is not None:
            log.warning("the database %s is writable again: %d pending cells stored", self.db.path, self.pending_cells)
            self.failing_since = None
        stored = [c for cells in self.pending for c in cells]
        self.pending, self.pending_frames = [], 0
        return stored

    def close(self, summary: dict[str, Any]) -> str | None:
        """The summary row, then the copies (call :meth:`flush` first and count what it stored). Returns
        what was not stored, in one line, or None. Idempotent."""
        if self.closed:
            return None
        self.closed = True
        problems = []
        if self.pending:
            problems.append(f"{self.pending_cells} classified cells of {self.pending_frames} frames were not stored "
                            f"and not counted ({self.health['db'].last_error})")
        try:
            self.db.close(summary)
        except SinkFault as exc:
            problems.append(str(exc))
        for sink in self.copies:
            try:
                sink.close(summary)
            except SinkFault as exc:
                self.health[type(sink).__name__].fault(type(sink).__name__, exc)
        return "; ".join(problems) or None

    def status(self) -> dict[str, Any]:
        return {"db": str(self.db.path), "stored_frames": self.db.frames, "stored_cells": self.db.cells,
                "pending_cells": self.pending_cells, "pending_frames": self.pending_frames,
                "max_pending_cells": self.max_pending_cells, "restored": self.db.restored,
                "failing_since": self.failing_since,
                "errors": {k: {"count": h.errors, "last": h.last_error} for k, h in self.health.items() if h.errors}}
