"""A network camera: RTSP, RTMP or HTTP (MJPEG) URL through OpenCV's FFmpeg backend."""

from __future__ import annotations

import cv2

from alnett_edge.capture.cv import OpenCVSource


class UrlSource(OpenCVSource):
    kind = "url"
    api = cv2.CAP_FFMPEG

    @property
    def source_id(self) -> str:
        return "url:" + self.arg.split("@")[-1]  # never log credentials

    def configure(self) -> None:
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
