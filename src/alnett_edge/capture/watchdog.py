"""The capture thread: reads a source into a bounded queue, and survives a source that stalls or
vanishes (a USB camera unplugged, picamera2 stalling, an RTSP drop).

No frame for ``stall_timeout`` seconds, or a read error, closes the source and reopens it with
exponential backoff (``backoff_min`` doubling to ``backoff_max``), counting stalls and reconnects;
the process never restarts. The queue keeps the newest frames: when it is full the oldest frame is
dropped and counted, so a slow consumer sees fresh frames and memory stays flat.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import cv2

from alnett_edge.capture.base import FrameSkipped, Frame, Source, SourceError

log = logging.getLogger(__name__)


class FrameQueue:
    """Bounded FIFO: a camera's frame drops the oldest when it is full (a camera cannot wait); a file's
    waits for room (``put(frame, wait=stop_event)``: back-pressure, no drop). :meth:`close` ends it."""

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = max(1, maxsize)
        self._items: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, frame: Frame, wait: threading.Event | None = None) -> None:
        """Queue ``frame``; when full, drop the oldest, or with ``wait`` block until there is room (or the
        event is set, or the queue is closed: then the frame is dropped and counted)."""
        with self._cond:
            while wait is not None and len(self._items) >= self.maxsize and not self.closed and not wait.is_set():
                self._cond.wait(0.1)
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame; None when closed and empty, or after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()  # a file waiting for room
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class CaptureStats:
    frames: int = 0
    stalls: int = 0
    reconnects: int = 0
    read_errors: int = 0
    skipped_frames: int = 0  # frames a source could not decode and moved past
    state: str = "starting"  # running | reconnecting | ended | stopped
    last_frame_time: float = 0.0
    last_error: str = ""


class CaptureThread(threading.Thread):
    def __init__(self, source: Source, queue: FrameQueue, stall_timeout: float = 5.0, backoff_min: float = 0.5,
                 backoff_max: float = 30.0, max_frames: int | None = None, on_capture=None) -> None:  # noqa: ANN001
        super().__init__(name="capture", daemon=True)
        self.source, self.queue = source, queue
        self.stall_timeout, self.backoff_min, self.backoff_max = stall_timeout, backoff_min, backoff_max
        self.max_frames = max_frames
        self.on_capture = on_capture  # called with the read time in ms
        self.stats = CaptureStats()
        self.stop_event = threading.Event()
        self._opened = False
        # a file, a folder or a generator not paced at a camera's fps waits for the pipeline (no drop);
        # a camera, or a file replayed at --fps as a camera stand-in, drops the oldest frame when behind
        self.waits = bool(source.paced and not source.settings.fps)

    @property
    def delivery(self) -> str:
        if self.waits:
            return "back-pressure (a file or folder waits for the pipeline: no frame dropped)"
        if self.source.paced:
            return f"paced at {self.source.settings.fps:g} fps (a camera stand-in: the oldest frame is dropped when behind)"
        return "live (a camera cannot wait: the oldest frame is dropped when behind)"

    def open_now(self) -> None:
        """Open once, synchronously: an unopenable source at start-up is an error, not a retry loop."""
        self.source.open()
        self._opened = True

    def stop(self) -> None:
        self.stop_event.set()

    def _reopen(self) -> None:
        self.source.close()
        self._opened = False
        delay = self.backoff_min
        self.stats.state = "reconnecting"
        while not self.stop_event.is_set():
            try:
                self.source.open()
            except (SourceError, cv2.error, OSError) as exc:
                self.stats.last_error = str(exc)
                log.warning("reopening %s failed (%s); next try in %.1f s", self.source.source_id, exc, delay)
                self.stop_event.wait(delay)
                delay = min(self.backoff_max, delay * 2)
                continue
            self._opened = True
            self.stats.reconnects += 1
            self.stats.state = "running"
            self.stats.last_frame_time = time.time()
            log.warning("reconnected to %s", self.source.source_id)
            return

    def run(self) -> None:
        stats = self.stats
        stats.state = "running"
        stats.last_frame_time = time.time()
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and stats.frames >= self.max_frames:
                    break
                if not self._opened:
                    self._reopen()
                    continue
                if self.source.paced:
                    self.source.pace()
                t0, wall0 = time.perf_counter(), time.time()  # the frame's time: when its read began
                try:
                    rgb = self.source.read()
                except FrameSkipped as exc:
                    stats.skipped_frames += 1
                    stats.last_error = str(exc)
                    log.warning("%s: %s", self.source.source_id, exc)
                    continue
                except (SourceError, cv2.error, OSError) as exc:
                    stats.read_errors += 1
                    stats.last_error = str(exc)
                    log.warning("read from %s failed: %s", self.source.source_id, exc)
                    stats.stalls += 1
                    self._reopen()
                    continue
                read_ms = (time.perf_counter() - t0) * 1e3
                if rgb is None:
                    if self.source.ended:
                        stats.state = "ended"
                        break
                    if time.time() - stats.last_frame_time > self.stall_timeout:
                        stats.stalls += 1
                        log.warning("no frame from %s for %.1f s: reconnecting", self.source.source_id, self.stall_timeout)
                        self._reopen()
                    else:
                        self.stop_event.wait(0.005)
                    continue
                meta = {"objects": list(getattr(self.source, "last_objects", []))} if hasattr(self.source, "last_objects") else {}
                self.queue.put(Frame(rgb, wall0, stats.frames, self.source.source_id, meta),
                               self.stop_event if self.waits else None)
                stats.frames += 1
                stats.last_frame_time = time.time()
                if self.on_capture:
                    self.on_capture(read_ms)
        finally:
            if stats.state not in ("ended",):
                stats.state = "stopped"
            self.source.close()
            self.queue.close()
