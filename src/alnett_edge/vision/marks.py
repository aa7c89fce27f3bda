"""Cell centres marked by hand on a folder of field frames (``alnett-edge mark``): the training and gate
data of the learned centre detector (``detector train --data``, ``--gate``) and what ``field-eval`` scores
a detector against. Kept in a points CSV (``image,x,y,kind``; an image marked as holding no cell is one
row with empty ``x`` and ``y``), rewritten whole and atomically at each save, so a crash never leaves
half a file and a second session resumes where the first stopped.

A frame not yet marked is offered with the detector's cells as proposals (the rule-based detector, or
learned centres with ``[detector] centres``): a person corrects them rather than clicking every cell,
and the proposal is saved only once the person saves that frame. A frame is named by its index in the
sorted list of the folder's images; no path is ever taken from a request.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image
from alnett_edge.errors import DataError
from alnett_edge.vision.annotations import image_size, read_truth
from alnett_edge.vision.detector import SMUDGE, CellDetector

#: the most points one frame may hold (a 2592x1944 field at 0.12 µm/px holds about 150 white cells)
MAX_POINTS = 2000
#: kinds of a mark: a white cell, or a smudge cell (counted apart)
KINDS = ("cell", SMUDGE)


class MarkBook:
    """The marks of one folder of frames, kept in ``out``."""

    def __init__(self, frames: Path, out: Path, detector: CellDetector | None = None) -> None:
        if not frames.is_dir():
            raise DataError(f"frames folder not found: {frames}")
        self.frames, self.out, self.detector = frames, out, detector
        self.images = sorted(p for p in frames.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.images:
            raise DataError(f"no images in {frames}")
        self.names = [p.relative_to(frames).as_posix() for p in self.images]
        self.marks: dict[str, list[tuple[float, float, str]]] = {}
        if out.exists():
            if not out.is_file():
                raise DataError(f"{out} is not a file (the marks are a CSV)")
            for t in read_truth(out, frames)[1]:
                name = t.image.relative_to(os.path.abspath(frames)).as_posix()  # read_truth keeps it inside
                self.marks[name] = [(x, y, "cell") for x, y in t.centres] + [(x, y, SMUDGE) for x, y in t.smudges]

    def _index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.images):
            raise DataError(f"frame index must be a whole number 0..{len(self.images) - 1}")
        return index

    def first_unmarked(self) -> int:
        return next((i for i, n in enumerate(self.names) if n not in self.marks), 0)

    def state(self, index: Any) -> dict[str, Any]:
        """One frame: its name and size, its saved marks (or the detector's proposals), the progress."""
        i = self._index(index)
        name = self.names[i]
        h, w = image_size(self.images[i])
        saved = name in self.marks
        if saved:
            points = self.marks[name]
        elif self.detector is not None:
            points = [(d.centre[0], d.centre[1], d.kind) for d in self.detector.detect(self.frame(i))
                      if d.centre is not None]
        else:
            points = []
        return {"index": i, "frames": len(self.images), "name": name, "width": int(w), "height": int(h),
                "saved": saved, "proposed": not saved and bool(points),
                "points": [{"x": round(x, 1), "y": round(y, 1), "kind": k} for x, y, k in points],
                "marked_frames": len(self.marks), "cells": sum(k == "cell" for v in self.marks.values() for *_, k in v),
                "smudges": sum(k == SMUDGE for v in self.marks.values() for *_, k in v), "out": str(self.out)}

    def frame(self, index: Any) -> np.ndarray:
        return load_image(self.images[self._index(index)], what="frame")

    def save(self, index: Any, points: Any) -> dict[str, Any]:
        """Set one frame's marks (``[{"x", "y", "kind"}]``, frame pixels; an empty list: no cell) and
        rewrite the CSV; returns the frame's state."""
        i = self._index(index)
        if not isinstance(points, list) or len(points) > MAX_POINTS:
            raise DataError(f"points must be a list of at most {MAX_POINTS} marks")
        h, w = image_size(self.images[i])
        clean = []
        for p in points:
            if not isinstance(p, dict) or not {"x", "y"} <= set(p) or p.get("kind", "cell") not in KINDS:
                raise DataError(f"a mark is {{\"x\", \"y\", \"kind\"}} with kind {' or '.join(KINDS)}")
            x, y = p["x"], p["y"]
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in (x, y)) \
                    or not (0 <= x <= w and 0 <= y <= h):
                raise DataError(f"a mark must be a point inside the {w}x{h} frame, got ({x!r}, {y!r})")
            clean.append((float(x), float(y), str(p.get("kind", "cell"))))
        self.marks[self.names[i]] = clean
        self._write()
        return self.state(i)

    def _write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["image", "x", "y", "kind"])
            for name in self.names:
                if name not in self.marks:
                    continue
                if not self.marks[name]:
                    out.writerow([name, "", "", ""])
                out.writerows([name, f"{x:.1f}", f"{y:.1f}", k] for x, y, k in self.marks[name])
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.out)
