"""Frame sources: one file per source kind, one registry, all torch-free.

A source spec is ``kind:argument`` (``v4l2:0``, ``v4l2:/dev/video2``, ``gstreamer:<pipeline>``,
``picamera2:0``, ``video:clip.avi``, ``images:frames/``, ``url:rtsp://…``, ``synthetic:SEED``) or a
bare argument whose kind is guessed (a number or /dev/video* -> v4l2, a URL -> url, a folder ->
images, a file -> video, a string with ``!`` -> gstreamer, ``synthetic`` -> synthetic).
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alnett_edge.errors import AlnettError, ConfigError
from alnett_edge.plugins import registered_name


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

    @property
    def kind(self) -> str:
        """This source's kind: its key in :data:`SOURCES` (written nowhere else)."""
        return registered_name(type(self), SOURCES)


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
        """Release the device or file (idempotent: a source may be closed by its thread and its owner)."""

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


@dataclass(frozen=True)
class SourceSpec:
    """A capture source: its class, an example spec for help texts, and how a spec without a
    ``KIND:`` prefix is recognised as this kind (a regular expression, or an existing path's kind)."""

    target: str  # "module:Class", imported only when used
    example: str
    claims: str = ""  # regex a bare spec must match (re.search) to be this kind
    claims_path: str = ""  # "dir" or "file": a bare spec naming an existing folder / file
    default_arg: str = ""  # the argument when the bare kind name is given (e.g. "synthetic")


#: kind -> spec; a new source is one file plus one entry here. The order is the order in which
#: bare specs are recognised.
SOURCES: dict[str, SourceSpec] = {
    "url": SourceSpec("alnett_edge.capture.url:UrlSource", "url:rtsp://…", claims=r"^(rtsp|rtmp|https?)://"),
    "v4l2": SourceSpec("alnett_edge.capture.v4l2:V4L2Source", "v4l2:0", claims=r"^(\d+|/dev/video\d+)$"),
    "gstreamer": SourceSpec("alnett_edge.capture.gstreamer:GStreamerSource", "gstreamer:PIPELINE", claims=r"!"),
    "picamera2": SourceSpec("alnett_edge.capture.picamera2:Picamera2Source", "picamera2:0"),
    "images": SourceSpec("alnett_edge.capture.images:ImageFolderSource", "images:DIR", claims_path="dir"),
    "video": SourceSpec("alnett_edge.capture.video:VideoFileSource", "video:FILE", claims_path="file"),
    "synthetic": SourceSpec("alnett_edge.capture.synthetic:SyntheticSmearSource", "synthetic:SEED", default_arg="0"),
}


def source_help() -> str:
    """Every registered kind as an example spec (plugins included)."""
    return ", ".join(spec.example for spec in SOURCES.values())


def parse_spec(spec: str) -> tuple[str, str]:
    """``KIND:ARG`` for a registered kind, else the first kind whose rule claims the bare spec."""
    kind, sep, arg = spec.partition(":")
    if sep and kind in SOURCES:
        return kind, arg
    if spec in SOURCES and SOURCES[spec].default_arg:
        return spec, SOURCES[spec].default_arg
    path = Path(spec)
    for name, s in SOURCES.items():
        if s.claims and re.search(s.claims, spec):
            return name, spec
        if (s.claims_path == "dir" and path.is_dir()) or (s.claims_path == "file" and path.is_file()):
            return name, spec
    raise ConfigError(f"cannot tell what source {spec!r} is (not a device, URL, folder or file); "
                      f"write it as KIND:ARG, one of {source_help()}")


def make_source(spec: str, settings: SourceSettings | None = None) -> Source:
    kind, arg = parse_spec(spec)
    module, cls = SOURCES[kind].target.split(":")
    return getattr(importlib.import_module(module), cls)(arg, settings)
