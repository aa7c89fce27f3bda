"""A GStreamer pipeline ending in ``appsink`` (the Jetson CSI preset is in the Jetson device profiles:
``nvarguscamerasrc … ! appsink``). Needs an OpenCV built with GStreamer; the PyPI wheels are not, so
this says so instead of failing obscurely (JetPack's OpenCV is)."""

from __future__ import annotations

import re

import cv2

from alnett_edge.capture.base import SourceError
from alnett_edge.capture.cv import OpenCVSource


def opencv_has_gstreamer() -> bool:
    m = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(m and m.group(1).upper() == "YES")


class GStreamerSource(OpenCVSource):
    api = cv2.CAP_GSTREAMER

    def open(self) -> None:
        if not opencv_has_gstreamer():
            raise SourceError("this OpenCV was built without GStreamer (cv2.getBuildInformation() says NO); "
                              "on a Jetson use JetPack's python3-opencv, or a v4l2 source")
        super().open()
