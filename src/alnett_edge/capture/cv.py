"""The OpenCV ``VideoCapture`` part shared by the V4L2, GStreamer, video-file and URL sources."""

from __future__ import annotations

import cv2
import numpy as np

from alnett_edge.capture.base import Source, SourceError


class OpenCVSource(Source):
    api: int = cv2.CAP_ANY

    def target(self) -> str | int:
        return self.arg

    def open_params(self) -> list[int]:
        """``cv2.CAP_PROP_*`` id/value pairs given to ``VideoCapture`` when it opens."""
        return []

    def open(self) -> None:
        params = self.open_params()
        self.cap = cv2.VideoCapture(self.target(), self.api, params) if params else cv2.VideoCapture(self.target(), self.api)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(f"cannot open {self.source_id}")
        s = self.settings
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, s.width), (cv2.CAP_PROP_FRAME_HEIGHT, s.height)):
            if value:
                self.cap.set(prop, value)
        self.configure()
        self.ended = False

    def configure(self) -> None:
        """Camera settings; files ignore them."""

    def grab_bgr(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        return frame if ok else None

    def read(self) -> np.ndarray | None:
        frame = self.grab_bgr()
        if frame is None:
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)

    def close(self) -> None:
        cap = getattr(self, "cap", None)
        if cap is not None:
            cap.release()
            self.cap = None
