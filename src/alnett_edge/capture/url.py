"""A network camera: RTSP, RTMP or HTTP (MJPEG) URL through OpenCV's FFmpeg backend."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import cv2

from alnett_edge.capture.cv import OpenCVSource


def redact_url(url: str) -> str:
    """The URL without credentials: no ``user:password@`` and no query string (``?token=…``, ``?key=…``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:  # not parseable: keep only what cannot be a secret
        return re.sub(r"[?#].*$", "", url.split("@")[-1])


class UrlSource(OpenCVSource):
    api = cv2.CAP_FFMPEG

    @property
    def source_id(self) -> str:
        return "url:" + redact_url(self.arg)  # never store or log credentials (status, database, JSONL)

    def open_params(self) -> list[int]:
        # a camera server that hangs must not hold a read (or a stop) for FFmpeg's default 30 s
        ms = int(1000 * (self.settings.timeout or 5.0))
        return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]

    def configure(self) -> None:
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
