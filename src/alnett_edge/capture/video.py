"""A video file (a recorded session or a test clip), optionally looped and replayed at ``fps``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alnett_edge.capture.base import SourceError
from alnett_edge.capture.cv import OpenCVSource


class VideoFileSource(OpenCVSource):
    paced = True

    def open(self) -> None:
        if not Path(self.arg).is_file():
            raise SourceError(f"video file not found: {self.arg}")
        if _is_still_image(Path(self.arg)):  # FFmpeg would play it as a one-frame "video"
            raise SourceError(f"{self.arg} is a still image, not a video; for image files use images:FOLDER")
        super().open()
        # a file OpenCV opens but cannot decode (a text file, a truncated header) would give 0 frames and
        # exit 0: its first frame is read now, so that is a one-line error at start-up
        self._first = super().grab_bgr()
        if self._first is None:
            self.close()
            raise SourceError(f"{self.arg}: no frame could be decoded (not a video file OpenCV can read)")

    def grab_bgr(self) -> np.ndarray | None:
        first, self._first = getattr(self, "_first", None), None
        if first is not None:
            return first
        frame = super().grab_bgr()
        if frame is None and self.settings.loop:
            self.cap.set(0, 0)  # CAP_PROP_POS_MSEC
            frame = super().grab_bgr()
        if frame is None:
            self.ended = True
        return frame


def _is_still_image(path: Path) -> bool:
    """Whether Pillow recognises the file as an image (it reads only the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False
