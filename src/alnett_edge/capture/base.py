"""Frame sources: one file per source kind, one registry, all torch-free.

A source spec is ``kind:argument`` (``v4l2:0``, ``v4l2:/dev/video2``, ``gstreamer:<pipeline>``,
``picamera2:0``, ``video:clip.avi``, ``images:frames/``, ``url:rtsp://…``, ``synthetic:SEED``) or a
bare argument whose kind is guessed (a number or /dev/video* -> v4l2, a URL -> url, a folder ->
images, a file -> video, a string with ``!`` -> gstreamer, ``synthetic`` -> synthetic).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alnett_edge.errors import AlnettError, ConfigError


class FrameSkipped(AlnettError):
    """One frame could not be decoded; the source has moved past it (counted, no reconnect)."""


class SourceError(AlnettError):
    """A frame source that cannot be opened or read."""


@dataclass
class Frame:
    rgb: np.ndarray  # H x W x 3 uint8, RGB
    timestamp: float  # time.time() when captured
    index: int  # frame number within this daemon session (across reconnects)
    source_id: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. ground-truth boxes of a synthetic source


@dataclass
class SourceSettings:
    width: int | None = None
    height: int | None = None
    fps: float | None = None  # camera frame rate, or the pace at which files are replayed
    exposure: float | None = None  # microseconds where the source supports it
    loop: bool = False  # files and folders: start again at the end
    timeout: float | None = None  # network sources: seconds an open or a read may block


class Source:
    """Open, read frames (RGB), close. ``read()`` returns None when no frame is available (a stall, or
    the end of a file that does not loop: see :attr:`ended`)."""

    kind: ClassVar[str] = ""

    def __init__(self, arg: str, settings: SourceSettings | None = None) -> None:
        self.arg = arg
        self.settings = settings or SourceSettings()
        self.ended = False
        self._next_due = 0.0

    @property
    def source_id(self) -> str:
        return f"{self.kind}:{self.arg}"

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    #: files, folders and generators are replayed at ``settings.fps``; cameras pace themselves
    paced: ClassVar[bool] = False

    def pace(self) -> None:
        """Wait until the next frame is due (called by the capture thread, outside the timed read)."""
        fps = self.settings.fps
        if not fps:
            return
        now = time.monotonic()
        if self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due = max(now, self._next_due) + 1.0 / fps


#: kind -> "module:Class"; a new source is one file plus one line here.
SOURCES: dict[str, str] = {
    "v4l2": "alnett_edge.capture.v4l2:V4L2Source",
    "gstreamer": "alnett_edge.capture.gstreamer:GStreamerSource",
    "picamera2": "alnett_edge.capture.picamera2:Picamera2Source",
    "video": "alnett_edge.capture.video:VideoFileSource",
    "images": "alnett_edge.capture.images:ImageFolderSource",
    "url": "alnett_edge.capture.url:UrlSource",
    "synthetic": "alnett_edge.capture.synthetic:SyntheticSmearSource",
}


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, arg = spec.partition(":")
    if sep and kind in SOURCES and not spec.startswith(("rtsp:", "http:", "https:", "rtmp:")):
        return kind, arg
    if spec.startswith(("rtsp://", "rtmp://", "http://", "https://")):
        return "url", spec
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "v4l2", spec
    if "!" in spec:
        return "gstreamer", spec
    if spec == "synthetic":
        return "synthetic", "0"
    p = Path(spec)
    if p.is_dir():
        return "images", spec
    if p.is_file():
        return "video", spec
    raise ConfigError(f"cannot tell what source {spec!r} is (not a device, URL, folder or file); "
                      f"write it as KIND:ARG with KIND one of {', '.join(SOURCES)}")


def make_source(spec: str, settings: SourceSettings | None = None) -> Source:
    kind, arg = parse_spec(spec)
    module, cls = SOURCES[kind].split(":")
    return getattr(importlib.import_module(module), cls)(arg, settings)
