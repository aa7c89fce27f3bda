"""A video file (a recorded session or a test clip), optionally looped and replayed at ``fps``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alnett_edge.capture.base import SourceError
from alnett_edge.capture.cv import OpenCVSource


class VideoFileSource(OpenCVSource):
    kind = "video"
    paced = True

    def open(self) -> None:
        if not Path(self.arg).is_file():
            raise SourceError(f"video file not found: {self.arg}")
        super().open()

    def grab_bgr(self) -> np.ndarray | None:
        frame = super().grab_bgr()
        if frame is None and self.settings.loop:
            self.cap.set(0, 0)  # CAP_PROP_POS_MSEC
            frame = super().grab_bgr()
        if frame is None:
            self.ended = True
        return frame
