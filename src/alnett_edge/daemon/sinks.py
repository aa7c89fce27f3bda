"""Where decisions go: SQLite (WAL; one row per cell, one per session), JSON lines, and annotated
snapshots (every N frames and on each blast). A sink is one class with ``open``, ``write`` and
``close``; every write for a frame happens before the frame counts as processed."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.errors import ConfigError


@dataclass
class CellRecord:
    time: float
    frame_index: int
    box: tuple[int, int, int, int]
    prob_hem: float | None
    prob_all: float | None
    label: str | None  # None when abstained
    abstain_reason: str | None
    model_sha256: str


class Sink:
    def open(self, session: dict[str, Any]) -> None:
        pass

    def write(self, frame_rgb: np.ndarray, frame_index: int, cells: list[CellRecord]) -> None:
        raise NotImplementedError

    def close(self, summary: dict[str, Any]) -> None:
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, ended REAL, source TEXT, bundle TEXT,
    model_sha256 TEXT, frames INTEGER DEFAULT 0, cells INTEGER DEFAULT 0, summary TEXT);
CREATE TABLE IF NOT EXISTS cells (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL REFERENCES sessions(id), time REAL NOT NULL,
    frame_index INTEGER NOT NULL, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER, prob_hem REAL, prob_all REAL,
    label TEXT, abstain_reason TEXT, model_sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cells_session ON cells(session_id, frame_index);
"""


class SqliteSink(Sink):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def open(self, session: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the database {self.path}: {exc}") from exc
        cur = self.db.execute("INSERT INTO sessions (started, source, bundle, model_sha256) VALUES (?, ?, ?, ?)",
                              (session["started"], session["source"], session["bundle"], session["model_sha256"]))
        self.session_id = cur.lastrowid
        self.db.commit()
        self.frames = self.cells = 0

    def write(self, frame_rgb: np.ndarray, frame_index: int, cells: list[CellRecord]) -> None:
        self.db.executemany(
            "INSERT INTO cells (session_id, time, frame_index, x0, y0, x1, y1, prob_hem, prob_all, label, abstain_reason,"
            " model_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(self.session_id, c.time, c.frame_index, *c.box, c.prob_hem, c.prob_all, c.label, c.abstain_reason,
              c.model_sha256) for c in cells])
        self.frames += 1
        self.cells += len(cells)
        self.db.execute("UPDATE sessions SET frames = ?, cells = ? WHERE id = ?", (self.frames, self.cells, self.session_id))
        self.db.commit()

    def close(self, summary: dict[str, Any]) -> None:
        self.db.execute("UPDATE sessions SET ended = ?, summary = ? WHERE id = ?",
                        (time.time(), json.dumps(summary), self.session_id))
        self.db.commit()
        self.db.close()


class JsonlSink(Sink):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def open(self, session: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", buffering=1)
        self.f.write(json.dumps({"session": session}) + "\n")

    def write(self, frame_rgb: np.ndarray, frame_index: int, cells: list[CellRecord]) -> None:
        for c in cells:
            self.f.write(json.dumps(asdict(c)) + "\n")

    def close(self, summary: dict[str, Any]) -> None:
        self.f.write(json.dumps({"summary": summary}) + "\n")
        self.f.close()


COLOURS = {"all": (220, 30, 30), "hem": (30, 160, 60), None: (150, 150, 150)}


def annotate(frame_rgb: np.ndarray, cells: list[CellRecord]) -> np.ndarray:
    img = frame_rgb.copy()
    for c in cells:
        x0, y0, x1, y1 = c.box
        colour = COLOURS.get(c.label, COLOURS[None])
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

    def open(self, session: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, frame_rgb: np.ndarray, frame_index: int, cells: list[CellRecord]) -> None:
        now = time.monotonic()
        blast = any(c.label == "all" for c in cells) and now - self._last_blast >= self.min_interval_s
        if frame_index % self.every and not blast:
            return
        if blast:
            self._last_blast = now
        name = f"frame{frame_index:07d}{'-blast' if blast else ''}.jpg"
        cv2.imwrite(str(self.folder / name), cv2.cvtColor(annotate(frame_rgb, cells), cv2.COLOR_RGB2BGR))
        self.written += 1
