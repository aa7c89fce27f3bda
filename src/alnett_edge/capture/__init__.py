"""Frame capture for the daemon (torch-free): sources, the capture thread with its watchdog, and the
drop-oldest frame queue."""

from alnett_edge.capture.base import SOURCES, Frame, Source, SourceError, SourceSettings, make_source, parse_spec
from alnett_edge.capture.watchdog import CaptureStats, CaptureThread, FrameQueue

__all__ = ["SOURCES", "CaptureStats", "CaptureThread", "Frame", "FrameQueue", "Source", "SourceError", "SourceSettings",
           "make_source", "parse_spec"]
