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
    kind = "url"
    api = cv2.CAP_FFMPEG

    @property
    def source_id(self) -> str:
        return "url:" + redact_url(self.arg)  # never store or log credentials (status, database, JSONL)

    def configure(self) -> None:
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
