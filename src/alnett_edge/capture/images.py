"""A folder of frames (JPEG/PNG/BMP), in name order, optionally looped and replayed at ``fps``. The
folder is listed again on every pass, so frames dropped in by another program are picked up; a folder
that disappears is a read failure the watchdog reconnects from. A file that does not decode is skipped
and counted (``skipped_frames``), never retried from the start."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alnett_edge.capture.base import FrameSkipped, Source, SourceError
from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image
from alnett_edge.errors import DataError



class ImageFolderSource(Source):
    paced = True

    def open(self) -> None:
        self.files = self._list()
        self.pos = 0
        self.ended = False

    def _list(self) -> list[Path]:
        root = Path(self.arg)
        if not root.is_dir():
            raise SourceError(f"image folder not found: {root}")
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images in {root}")
        return files

    def read(self) -> np.ndarray | None:
        if self.pos >= len(self.files):
            if not self.settings.loop:
                self.ended = True
                return None
            self.files, self.pos = self._list(), 0
        path = self.files[self.pos]
        self.pos += 1
        try:
            return load_image(path, what="frame")
        except DataError as exc:  # skipped, not a reconnect: reopening would replay the frames before it forever
            raise FrameSkipped(f"{exc}; skipped") from exc
