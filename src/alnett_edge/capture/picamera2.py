"""The Raspberry Pi camera through picamera2 (``pip install alnett-edge[rpi]`` on Raspberry Pi OS uses
the system ``python3-picamera2``; create the venv with ``--system-site-packages``). Imported lazily.

picamera2's ``RGB888`` format is stored B, G, R in memory, so frames are swapped to RGB here. A camera
that stops delivering (picamera2 issues 883/962: a stalled pipeline, a cable that reseats) is closed
and reopened by the daemon's watchdog like any other source.
"""

from __future__ import annotations

import numpy as np

from alnett_edge.capture.base import Source, SourceError


class Picamera2Source(Source):

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError("picamera2 is not installed (Raspberry Pi OS: sudo apt install python3-picamera2, "
                              "and a venv with --system-site-packages)") from exc
        s = self.settings
        try:
            self.cam = Picamera2(int(self.arg or 0))
            size = (s.width or 1280, s.height or 960)
            self.cam.configure(self.cam.create_video_configuration(main={"size": size, "format": "RGB888"},
                                                                   buffer_count=4))
            controls: dict[str, float] = {}
            if s.fps:
                controls["FrameRate"] = s.fps
            if s.exposure:
                controls["ExposureTime"] = int(s.exposure)
                controls["AeEnable"] = 0
            if controls:
                self.cam.set_controls(controls)
            self.cam.start()
        except (RuntimeError, IndexError, ValueError) as exc:
            raise SourceError(f"cannot open Raspberry Pi camera {self.arg or 0}: {exc}") from exc

    def read(self) -> np.ndarray | None:
        bgr = self.cam.capture_array("main")
        return None if bgr is None else np.ascontiguousarray(bgr[..., 2::-1])

    def close(self) -> None:
        cam = getattr(self, "cam", None)
        if cam is not None:
            try:
                cam.stop()
                cam.close()
            finally:
                self.cam = None
