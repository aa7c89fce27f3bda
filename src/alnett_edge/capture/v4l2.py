"""A USB microscope camera through V4L2 (a device index or a /dev/video path)."""

from __future__ import annotations

import cv2

from alnett_edge.capture.cv import OpenCVSource


class V4L2Source(OpenCVSource):
    api = cv2.CAP_V4L2

    def target(self) -> str | int:
        return int(self.arg) if self.arg.isdigit() else self.arg

    def configure(self) -> None:
        s = self.settings
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a backlog
        if s.fps:
            self.cap.set(cv2.CAP_PROP_FPS, s.fps)
        if s.exposure:
            self.cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
            self.cap.set(cv2.CAP_PROP_EXPOSURE, s.exposure / 100.0)  # V4L2 exposure_absolute is in 100 µs
