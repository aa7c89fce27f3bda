"""The daemon: capture thread -> bounded queue (drop oldest) -> detect -> track -> quality gate ->
crop -> batched classification (the runtime) of the tracks not yet decided -> a decision per track ->
aggregator -> sinks, with every stage timed. Each physical cell is one track and one database row
(:mod:`alnett_edge.vision.tracking`); ``[tracking] enabled = false`` gives a row per detection per frame.

Stop (SIGTERM / SIGINT, ``--max-frames``, ``--duration`` or the end of a file source): capture stops,
the frames already queued are still processed, sinks are flushed and closed, and the session summary
is returned; no processed cell is lost (each frame's rows are committed before it counts). A source
hung in a read is waited for at most ``STOP_GRACE_S`` seconds. What happens when the database cannot
be written is the sink policy of :mod:`alnett_edge.daemon.sinks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shlex
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.capture.base import Frame, SourceSettings, make_source
from alnett_edge.capture.watchdog import CaptureThread, FrameQueue
from alnett_edge.daemon.config import DaemonConfig, load_config
from alnett_edge.daemon.page import LIVE_FPS, WATCH_S, Gallery, GalleryCell
from alnett_edge.daemon.sinks import CropSink, JsonlSink, Recorder, Sink, SnapshotSink, SqliteSink, annotate
from alnett_edge.errors import AlnettError, ConfigError, DataError
from alnett_edge.files import sha256_file
from alnett_edge.machine import inference_threads, isa_line
from alnett_edge.runtime.base import Runtime
from alnett_edge.runtime.loader import open_runtime
from alnett_edge.timing import StageTimes
from alnett_edge.vision.centres import CentreFinder, model_path
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.differential import Aggregator
from alnett_edge.vision.optics import estimate_um_per_px
from alnett_edge.vision.path import STAGES, decide_tracks, track_frame
from alnett_edge.vision.record import CellRecord
from alnett_edge.vision.tracking import Track, TrackBook

log = logging.getLogger(__name__)

#: after a stop, how long the capture thread may take to finish its read (a hung camera may never)
STOP_GRACE_S = 5.0


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        bundle = Path(cfg.runtime.bundle)
        if not bundle.exists():
            raise ConfigError(f"bundle not found: {bundle}")
        um_per_px = cfg.optics.resolve()
        if cfg.detector.centres:  # refused as POST /detector refuses it (field-eval may still measure it)
            refusal = CentreFinder(cfg.detector.centres, cfg.detector.centre_threshold).gate_refusal()
            if refusal:
                raise ConfigError(f"[detector] centres: {refusal}; mark more frames for its --gate or use another model")
        # the detector's settings in use: a swap (request_detector) replaces their centre detector
        self.detector_cfg: DetectorConfig = cfg.detector
        # without a configured pixel size the detector waits for the first frames to estimate one
        self.detector: CellDetector | None = CellDetector(cfg.detector, um_per_px) if um_per_px else None
        self._pending_detector: tuple[DetectorConfig, dict[str, Any]] | None = None  # from request_detector
        # every detector of the session, from the first frame (capture index) it looked at
        self.detectors = [{**describe_detector(cfg.detector), "from_frame": 0, "at": time.time()}]
        self.optics: dict[str, Any] = ({"um_per_px": um_per_px, "source": "config"} if um_per_px else
                                       {"um_per_px": None, "source": f"estimating from the first {cfg.optics.calibration_frames} frames"})
        self._calibration_frames: list[Frame] = []
        s = cfg.source
        settings = SourceSettings(s.width or None, s.height or None, s.fps or None, s.exposure or None, s.loop,
                                  timeout=s.stall_timeout)
        self.source = make_source(s.spec, settings)
        self.queue = FrameQueue(s.queue)
        self.times = StageTimes(STAGES)
        self.capture = CaptureThread(self.source, self.queue, s.stall_timeout, s.backoff_min, s.backoff_max,
                                     cfg.run.max_frames or None, on_capture=lambda ms: self.times.add("capture", ms))
        self.recorder = self._make_recorder()
        self.frames_processed = 0
        self.frames_uncalibrated = 0  # frames seen while no pixel size could be estimated
        self.cells_processed = 0  # decided (tracks; stored or pending); the session counts stored ones
        self.observations = 0  # detections, every frame
        self.inferences = 0  # crops the model ran on
        self.tracks: TrackBook | None = None  # made with the detector (it needs the pixel size)
        self.target_reached_at: float | None = None
        self.unlike_training = 0  # stored cells farther from the training cells' look than the card allows
        self.stopping = False
        self.stop_reason = ""
        self.preview_clients = 0
        self.latest_preview: bytes | None = None
        # the device page (daemon/page.py): the latest decided cells, the annotated frame while a page
        # watches, a minute of per-frame latency, and sessions started and stopped from the page
        self.gallery = Gallery()
        self._watched_until = 0.0
        self._live_at = 0.0
        self._latency: deque[tuple[float, dict[str, float]]] = deque(maxlen=8192)
        self.recording = True
        self.session_name = cfg.run.session_name
        self.target_cells = cfg.run.target_cells
        self._session_request: tuple[str | None, int | None] | None = None
        self._stop = threading.Event()
        self._recent: list[float] = []
        self.http = None
        self._closed = False
        self._swap_lock = threading.Lock()
        self._pending: tuple[Path, Runtime] | None = None  # a bundle opened by request_swap, used from the next frame
        # the one resource opened here, last: nothing above can fail after it and leak it
        self.runtime = open_runtime(bundle, cfg.runtime.backend or None, threads=inference_threads(cfg.runtime.threads))
        self.model_sha256 = self.runtime.sha256()
        self._check_gate_confidence()
        self.card = self.runtime.card
        self.agg = Aggregator.for_card(self.card)
        self.by_model = {self.model_sha256: Aggregator.for_card(self.card)}  # the session's counts split by model
        # every model of the session, from the first frame (capture index) it classified
        self.models = [{"model_sha256": self.model_sha256, "bundle": str(bundle), "from_frame": 0, "at": time.time()}]
        self.started = 0.0

    def _make_recorder(self) -> Recorder:
        cfg = self.cfg
        copies: list[Sink] = []
        if cfg.sinks.jsonl:
            copies.append(JsonlSink(cfg.sinks.jsonl))
        if cfg.sinks.snapshots:
            copies.append(SnapshotSink(cfg.sinks.snapshots, cfg.sinks.snapshot_every, cfg.sinks.snapshot_min_interval_s))
        if cfg.sinks.crops:
            copies.append(CropSink(cfg.sinks.crops))
        return Recorder(SqliteSink(cfg.sinks.db), copies, cfg.sinks.max_pending_cells, cfg.sinks.max_pending_s)

    def _check_gate_confidence(self) -> None:
        """The gate left out the changes its artifact made on cells both models hold below the
        ``min_confidence`` it assumed; a daemon reporting cells below that must say so."""
        artifacts = self.runtime.bundle.manifest.get("artifacts", []) if self.runtime.bundle else []
        gated = next((a.get("gate", {}).get("changed", {}).get("min_confidence") for a in artifacts
                      if a.get("file") == self.runtime.path.name), None)
        if gated is not None and self.cfg.quality.min_confidence < gated:
            log.warning("[quality] min_confidence %s is below the %s the bundle's accuracy gate assumed: %s may "
                        "decide cells below %s unlike fp32, and this daemon reports them; set it to %s",
                        self.cfg.quality.min_confidence, gated, self.runtime.path.name, gated, gated)

    # -- control -----------------------------------------------------------------------------------
    def request_stop(self, reason: str = "signal") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            log.info("stopping (%s): draining %d queued frames", reason, len(self.queue))
        self._stop.set()
        self.capture.stop()

    def _session_row(self) -> dict[str, Any]:
        return {"started": self.started, "source": self.source.source_id, "bundle": str(self.models[-1]["bundle"]),
                "model_sha256": self.model_sha256, "backend": self.runtime.backend, "precision": self.runtime.precision,
                "positive_class": "+".join(self.card.blast_names), "blast_classes": list(self.card.blast_names),
                "name": self.session_name}

    def start(self) -> None:
        self.started = time.time()
        self.session = self._session_row()
        self.recorder.open(self.session)  # a path that cannot be written fails here, in one line
        try:
            self.capture.open_now()  # so does an unopenable source
            if self.cfg.http.port:
                from alnett_edge.daemon.http import HttpServer

                h = self.cfg.http
                self.http = HttpServer(self, h.host, h.port, h.token, h.preview, h.read_only, h.label_dataset, h.labeller)
        except BaseException as exc:
            self.recorder.close({"stop_reason": f"failed to start: {exc}"})  # the session row says why it is empty
            self.close()
            raise
        if self.http:
            self.http.start()
        self.capture.start()

    def run(self) -> dict[str, Any]:
        self.start()
        deadline = self.started + self.cfg.run.duration if self.cfg.run.duration else None
        try:
            while True:
                if deadline and time.time() >= deadline and not self._stop.is_set():
                    self.request_stop("duration")
                frame = self.queue.get(timeout=0.1)
                if frame is None:
                    # a stopped daemon does not wait for a source that hangs in a read
                    if (self.queue.closed or self._stop.is_set()) and not len(self.queue):
                        break
                    continue
                self._apply_swap(frame.index)
                self._apply_detector(frame.index)
                self._apply_session()
                if self.recording:
                    self.process(frame)
                elif self._watched():  # between slides: the page still shows the camera
                    self._render_live(frame.rgb, [])
                if self.recorder.over_limit and not self._stop.is_set():
                    log.error("the database cannot be written and %d cells are waiting (limit [sinks] max_pending_cells"
                              " / max_pending_s):"
                              " stopping", self.recorder.pending_cells)
                    self.request_stop("database failing")
            self.capture.join(timeout=STOP_GRACE_S)  # a source hung in a read is left behind (a daemon thread)
            while len(self.queue):  # frames the capture thread queued while it stopped
                self.process(self.queue.get(timeout=0))
        finally:
            summary = self.finish()
        return summary

    def finish(self) -> dict[str, Any]:
        self.stopping = True
        self.capture.stop()
        reason = self.stop_reason or self.capture.stats.state
        if self.recording:
            if self.detector is None:
                self._calibrate(None)  # a run shorter than the calibration frames: estimate from what came
            summary = self._end_session(reason)
        else:  # the last session was stopped from the page and its summary stored then
            summary = {**self.status(), "stop_reason": reason, "machine": isa_line(), "store_error": None}
        self.close()
        return summary

    def close(self) -> None:
        """Release the HTTP server, the source and the runtime (idempotent; ``run`` does it at the end)."""
        if self._closed:
            return
        self._closed = True
        self.capture.stop()
        if self.http:
            self.http.stop()
        if not self.capture.is_alive():
            self.source.close()  # a capture thread still in a read closes its own source when it returns
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].close()
        self.runtime.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one frame ---------------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[CellRecord]:
        if self.detector is None:
            return self._calibrate(frame)
        return self._process(frame)

    # -- a new model without a restart ---------------------------------------------------------------
    def request_swap(self, bundle: str | Path) -> str:
        """Open ``bundle`` beside the running model (in the caller's thread: capture and classification
        go on meanwhile); the processing loop switches to it before its next frame. The bundle loader
        refuses a bundle that failed its gate or whose files do not match their sha256 (half-copied),
        in one line, and the running model stays. Returns the new model's hash."""
        path = Path(bundle)
        if not path.exists():
            raise ConfigError(f"bundle not found: {path}")
        if self.stopping:
            raise ConfigError("the daemon is stopping; the bundle was not changed")
        rt = open_runtime(path, self.cfg.runtime.backend or None, threads=inference_threads(self.cfg.runtime.threads))
        with self._swap_lock:
            old, self._pending = self._pending, (path, rt)
        if old is not None:  # a newer request replaces one not yet used
            old[1].close()
        log.warning("bundle %s (%s) accepted; classifying with it from the next frame", path, rt.describe())
        return rt.sha256()

    def request_detector(self, centres: str) -> dict[str, Any]:
        """Look for cells with another centre detector (``[detector] centres``: a model from ``alnett-edge
        detector train``, ``"builtin"``, or ``""`` for the rule-based nuclei) from the next frame, the
        detector's other settings and the pixel size unchanged. The model is opened here, in the caller's
        thread; one that cannot be read, carries no centre card or failed the marked frames of its
        ``--gate`` is refused in one line, and the running detector stays. Returns what was accepted."""
        if self.stopping:
            raise ConfigError("the daemon is stopping; the detector was not changed")
        new = dataclasses.replace(self.detector_cfg, centres=str(centres))
        new.validate()
        info = describe_detector(new)
        if new.centres:
            finder = CentreFinder(new.centres, new.centre_threshold)
            refusal = finder.gate_refusal()
            if refusal:
                raise ConfigError(f"{refusal}; the detector was not changed")
            info["threshold"] = finder.threshold
        with self._swap_lock:
            self._pending_detector = (new, info)
        log.warning("centre detector %s accepted; looking for cells with it from the next frame", info["centres"])
        return info

    def _apply_detector(self, next_frame: int) -> None:
        """Switch to a detector :meth:`request_detector` accepted, before frame ``next_frame`` is processed.
        Open tracks go on: a cell found by both detectors is matched by position as before."""
        with self._swap_lock:
            pending, self._pending_detector = self._pending_detector, None
        if pending is None:
            return
        new, info = pending
        self.detector_cfg = new
        if self.detector is not None:  # calibrated already (else _calibrate makes it with these settings)
            looked = self.detector.smudge_frames
            self.detector = CellDetector(new, self.detector.um_per_px)
            self.detector.smudge_frames = looked
        self.detectors.append({**info, "from_frame": next_frame, "at": time.time()})
        log.warning("now looking for cells with %s", info["centres"])

    def reload(self, config: str | Path) -> threading.Thread:
        """SIGHUP: read ``config`` again; when its ``[runtime] bundle`` names another bundle, swap to it
        (:meth:`request_swap`), and when its ``[detector] centres`` names another centre detector, to that
        (:meth:`request_detector`), on a thread of its own (a signal handler must not block or raise). A
        config, bundle or detector that cannot be used is one logged line; the running one stays."""
        def work() -> None:
            try:
                new = load_config(Path(config))
            except AlnettError as exc:
                log.error("SIGHUP: nothing was changed: %s", exc)
                return
            bundle, changed = Path(new.runtime.bundle), False
            if bundle.resolve() != Path(self.models[-1]["bundle"]).resolve():
                changed = True
                try:
                    self.request_swap(bundle)
                except AlnettError as exc:
                    log.error("SIGHUP: the bundle was not changed: %s", exc)
            if new.detector.centres != self.detector_cfg.centres:
                changed = True
                try:
                    self.request_detector(new.detector.centres)
                except AlnettError as exc:
                    log.error("SIGHUP: the detector was not changed: %s", exc)
            if not changed:
                log.warning("SIGHUP: %s still names %s and the same detector; nothing to change", config, bundle)

        thread = threading.Thread(target=work, name="reload", daemon=True)
        thread.start()
        return thread

    def _apply_swap(self, next_frame: int) -> None:
        """Switch to a bundle :meth:`request_swap` opened, before frame ``next_frame`` is processed."""
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        path, rt = pending
        if self.tracks is not None:  # tracks holding crops are decided by the model that watched them
            self._decide_now([t for t in self.tracks.open if t.decision is None and t.candidates])
        old = self.runtime
        self.runtime, self.card, self.model_sha256 = rt, rt.card, rt.sha256()
        self.by_model.setdefault(self.model_sha256, Aggregator.for_card(self.card))
        self.models.append({"model_sha256": self.model_sha256, "bundle": str(path), "from_frame": next_frame,
                            "at": time.time()})
        old.close()
        self._check_gate_confidence()
        log.warning("now classifying with %s (%s)", path, rt.describe())

    def _decide_now(self, tracks: list[Track]) -> None:
        """Decide ``tracks`` with the running model outside a frame (a stop, a swap) and store their rows."""
        rows, _, _, inferred = decide_tracks(tracks, self.runtime, self.cfg.quality, self.cfg.runtime.max_batch,
                                             self.model_sha256)
        self.inferences += inferred
        if rows:
            self.cells_processed += len(rows)
            self._count(self.recorder.write(None, -1, rows))

    def _calibrate(self, frame: Frame | None) -> list[CellRecord]:
        """Hold the first frames until the pixel size is estimated from them, then process them."""
        if frame is not None:
            self._calibration_frames.append(frame)
        want = self.cfg.optics.calibration_frames
        if not self._calibration_frames or (len(self._calibration_frames) < want and frame is not None):
            return []
        frames, self._calibration_frames = self._calibration_frames, []
        try:
            cal = estimate_um_per_px((f.rgb for f in frames), self.cfg.optics.rbc_um)
        except DataError:
            self.optics["source"] = f"estimating: no red cells in {len(frames)} frames (set [optics] um_per_px)"
            log.warning("no red cells to estimate the pixel size from in %d frames; those frames are skipped "
                        "(set [optics] um_per_px or run alnett-edge optics calibrate)", len(frames))
            self.frames_uncalibrated += len(frames)
            return []
        self.optics = {"um_per_px": round(cal.um_per_px, 5), "source": f"estimated from {cal.frames} frames",
                       "spread": round(cal.spread, 4), "rbc_px": round(cal.rbc_px, 2)}
        log.info("pixel size %.4f µm estimated from red cells in %d frames (spread %.1f %%)", cal.um_per_px,
                 cal.frames, 100 * cal.spread)
        self.detector = CellDetector(self.detector_cfg, cal.um_per_px)
        out: list[CellRecord] = []
        for f in frames:
            out.extend(self._process(f))
        return out

    def _process(self, frame: Frame) -> list[CellRecord]:
        detector = self.detector
        if detector is None:  # only _calibrate calls this, after it set the detector
            raise RuntimeError("frame processed before the pixel size was known")
        if self.tracks is None:
            self.tracks = TrackBook(self.cfg.tracking, detector.um_per_px)
        records, view, times, inferred = track_frame(frame, detector, self.cfg.quality, self.runtime,
                                                     self.cfg.runtime.max_batch, self.model_sha256, self.tracks)
        t3 = time.perf_counter()
        self._count(self.recorder.write(frame.rgb, frame.index, records, view))
        name = self.session_name or f"session {self.recorder.db.session_id}"
        for r in records:  # the crops sink has written them; a decided track keeps its row, not the pixels
            self.gallery.add(r, frame.rgb, frame.index, name, detector.um_per_px)
            r.crop = None
        if self.preview_clients or self._watched():
            self._render_live(frame.rgb, view)
        t4 = time.perf_counter()
        self.frames_processed += 1
        self.cells_processed += len(records)
        self.observations += len(view)
        self.inferences += inferred
        for stage, ms in times.items():
            self.times.add(stage, ms)
        self.times.add("sink", (t4 - t3) * 1e3)
        self.times.add("frame_to_decision", (time.time() - frame.timestamp) * 1e3)
        self._latency.append((time.monotonic(), {**times, "sink": (t4 - t3) * 1e3,
                                                 "frame_to_decision": (time.time() - frame.timestamp) * 1e3}))
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < 5.0] + [now]
        return records

    def _count(self, stored: list[CellRecord]) -> None:
        """Only rows committed to the database are counted (the sink policy in daemon/sinks.py)."""
        limit = self.card.appearance.get("max_distance", float("inf"))
        for r in stored:
            self.agg.add_record(r)
            if r.model_sha256 in self.by_model:
                self.by_model[r.model_sha256].add_record(r)
            d = r.appearance_distance
            self.unlike_training += d is not None and (d > limit or d < 0)
        self.agg.frames = self.recorder.db.frames
        target = self.target_cells
        if target and self.target_reached_at is None and sum(self.agg.labels.values()) >= target:
            self._target_reached(target)

    def _target_reached(self, target: int) -> None:
        """A differential of ``target`` decided cells is complete: log it, note it in /status, run the
        hook command (no shell; its failure is logged, never fatal) and stop if asked."""
        self.target_reached_at = time.time()
        log.warning("target reached: %d distinct cells decided", target)
        if self.cfg.run.on_target:
            try:
                subprocess.Popen(shlex.split(self.cfg.run.on_target), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            except (OSError, ValueError) as exc:
                log.error("the on_target command %r could not run: %s", self.cfg.run.on_target, exc)
        if self.cfg.run.stop_at_target:
            self.request_stop("target reached")

    # -- observability -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cap = self.capture.stats
        now = time.monotonic()
        recent = [t for t in self._recent if now - t < 5.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        elapsed = time.time() - self.started if self.started else 0.0
        return {
            "source": self.source.source_id, "backend": self.runtime.backend, "precision": self.runtime.precision,
            "model_sha256": self.model_sha256, "uptime_s": round(elapsed, 2), "fps": round(fps, 2),
            "mean_fps": round(self.frames_processed / elapsed, 2) if elapsed else 0.0,
            "frames_processed": self.frames_processed, "frames_dropped": self.queue.dropped,
            "queue_depth": len(self.queue), "cells_processed": self.cells_processed,
            "tracking": self.cfg.tracking.enabled, "observations": self.observations, "inferences": self.inferences,
            "tracks": {"open": len(self.tracks.open), "fields": self.tracks.fields, "flickers": self.tracks.flickers}
            if self.tracks is not None else None,
            "capture": {"delivery": self.capture.delivery, "frames": cap.frames, "stalls": cap.stalls, "reconnects": cap.reconnects,
                        "read_errors": cap.read_errors, "skipped_frames": cap.skipped_frames, "state": cap.state, "last_error": cap.last_error},
            "stages": self.times.summary(), "session": self.agg.snapshot(), "store": self.recorder.status(),
            "smudge_frames": self.detector.smudge_frames if self.detector is not None else 0,
            "optics": dict(self.optics), "frames_uncalibrated": self.frames_uncalibrated,
            "crops": str(Path(self.cfg.sinks.crops).resolve()) if self.cfg.sinks.crops else None,
            "out_of_distribution": {"mode": self.cfg.quality.out_of_distribution, "cells": self.unlike_training,
                                    "max_distance": self.card.appearance.get("max_distance")},
            "target": {"cells": self.target_cells, "reached_at": self.target_reached_at}
            if self.target_cells else None,
            "session_name": self.session_name, "recording": self.recording,
            "models": [{**m, "session": self.by_model[m["model_sha256"]].snapshot()} for m in self.models]
            if len(self.models) > 1 else None,
            "detector": {k: v for k, v in self.detectors[-1].items() if k not in ("from_frame", "at")},
            "detectors": list(self.detectors) if len(self.detectors) > 1 else None,
        }  # fmt: skip

    # -- the device page ---------------------------------------------------------------------------
    def page_watched(self) -> None:
        self._watched_until = time.monotonic() + WATCH_S

    def _watched(self) -> bool:
        return time.monotonic() < self._watched_until

    def _render_live(self, rgb: Any, view: list[CellRecord]) -> None:
        """The annotated frame for the page (at most LIVE_FPS a second) and the MJPEG preview (every frame)."""
        now = time.monotonic()
        if not self.preview_clients and now - self._live_at < 1.0 / LIVE_FPS:
            return
        self._live_at = now
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(annotate(rgb, view, self.agg.blast), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 80])
        self.latest_preview = jpg.tobytes() if ok else None

    def latency_last_minute(self) -> dict[str, Any]:
        """Per-stage p50/p99 over the last minute, and frame-to-decision p50/p99 per 5 s (the page's chart)."""
        now = time.monotonic()
        recent = [(t, s) for t, s in list(self._latency) if now - t <= 60.0]
        stages: dict[str, dict[str, float]] = {}
        for stage in (recent[-1][1] if recent else {}):
            v = np.array([s[stage] for _, s in recent if stage in s])
            stages[stage] = {"p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2)}
        series = []
        for start in range(-60, 0, 5):
            v = np.array([s["frame_to_decision"] for t, s in recent if start <= t - now < start + 5])
            series.append({"age": start + 5, "p50": round(float(np.percentile(v, 50)), 2) if len(v) else None,
                           "p99": round(float(np.percentile(v, 99)), 2) if len(v) else None, "frames": int(len(v))})
        return {"frames": len(recent), "stages": stages, "series": series}

    def request_session(self, name: str | None, target: int | None) -> None:
        """Start a new slide (``name``; None: stop the current one) from the next frame: the current
        session's open tracks are decided and its summary stored first."""
        if self.stopping:
            raise ConfigError("the daemon is stopping")
        with self._swap_lock:
            self._session_request = (name, target)

    def _apply_session(self) -> None:
        with self._swap_lock:
            req, self._session_request = self._session_request, None
        if req is None:
            return
        name, target = req
        if self.recording:
            ended = self._end_session("stopped from the page" if name is None else "a new slide was started")
            if ended["store_error"]:
                log.error("session %d: %s", self.recorder.db.session_id, ended["store_error"])
            log.warning("session %d ended (%s): %d cells", self.recorder.db.session_id, ended["stop_reason"],
                        ended["session"]["cells"])
        if name is None:
            return
        self.session_name, self.target_cells = name, int(target or 0)
        self.frames_processed = self.frames_uncalibrated = self.cells_processed = 0
        self.observations = self.inferences = self.unlike_training = 0
        self.target_reached_at, self.tracks = None, None
        self.times = StageTimes(STAGES)
        self.agg = Aggregator.for_card(self.card)
        self.by_model = {self.model_sha256: Aggregator.for_card(self.card)}
        self.models = [{**self.models[-1], "from_frame": 0, "at": time.time()}]
        self.detectors = [{**self.detectors[-1], "from_frame": 0, "at": time.time()}]
        self.started = time.time()
        self.gallery.clear()
        self.recorder = self._make_recorder()
        self.session = self._session_row()
        try:
            self.recorder.open(self.session)
        except AlnettError as exc:  # the database went away: say so and keep watching without recording
            log.error("the new session could not be opened: %s", exc)
            return
        self.recording = True
        log.warning("session %d (%s) started%s", self.recorder.db.session_id, name or "no name",
                    f", target {self.target_cells} cells" if self.target_cells else "")

    def _end_session(self, reason: str) -> dict[str, Any]:
        """End the recording session (a stop, or a slide stopped from the page): the tracks in flight are
        decided from what they have (none is lost), the pending rows stored and counted, and the summary
        stored; returns it, with ``store_error`` (what was not stored, or None)."""
        if self.tracks is not None:
            self._decide_now([t for t in self.tracks.close() if t.decision is None])
        self._count(self.recorder.flush())
        # latency means little without the CPU and ISA it ran on
        summary = {**self.status(), "stop_reason": reason, "machine": isa_line()}
        summary["store_error"] = self.recorder.close(summary)
        self.recording = False
        return summary

    def label_gallery_cell(self, cell: GalleryCell, label: Any) -> str:
        """A person's label of a cell on the page: the cell, as the model saw it, goes into
        ``[http] label_dataset`` with that label (a harvest: ``train --data`` and the label view read it)."""
        from alnett_edge.vision.harvest import add_labelled_cell

        dataset = self.cfg.http.label_dataset
        if not dataset:
            raise ConfigError("set [http] label_dataset to keep cells labelled on the page")
        choices = (*self.card.class_names, "reject")
        if label not in choices:
            raise ConfigError(f"label must be one of {', '.join(choices)}")
        r = cell.record
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(cell.crop_png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        row = {"label": label, "labelled_by": self.cfg.http.labeller, "session": cell.session, "patient_id": cell.session,
               "source": self.source.source_id, "frame": r.frame_index, "x0": r.box[0], "y0": r.box[1], "x1": r.box[2],
               "y1": r.box[3], "um_per_px": cell.um_per_px or "", "track": r.track_id if r.track_id is not None else "",
               "model_sha256": r.model_sha256, "prob_hem": r.prob_hem if r.prob_hem is not None else "",
               "prob_all": r.prob_all if r.prob_all is not None else "",
               "cell_id": hashlib.sha256(cell.crop_png).hexdigest()[:16]}
        add_labelled_cell(Path(dataset), float(self.card.input.canvas_um), image, row, self.card.class_set)
        cell.labelled = label
        return str(dataset)

    def healthy(self) -> tuple[bool, str]:
        if self.recorder.failing_since is not None:
            return False, f"database failing, {self.recorder.pending_cells} cells waiting ({self.recorder.health['db'].last_error})"
        cap = self.capture.stats
        if cap.state == "reconnecting":
            return False, f"source reconnecting ({cap.last_error})"
        if cap.state == "running" and time.time() - cap.last_frame_time > self.cfg.source.stall_timeout:
            return False, "no frame within the stall timeout"
        return True, cap.state


#: this share of the stored cells beyond the card's appearance limit makes the exit summary warn: with
#: ``[quality] out_of_distribution = "record"`` their calls are not to be trusted; with "abstain" the model
#: does not know this microscope's stain or optics
OOD_WARN_SHARE = 0.2


def ood_warning(summary: dict) -> str | None:
    """A warning when many cells looked unlike the model's training cells (classified anyway with
    ``record``, left unclassified with ``abstain``)."""
    ood, cells = summary.get("out_of_distribution") or {}, summary["session"]["cells"]
    if ood.get("mode") not in ("record", "abstain") or not cells or ood.get("cells", 0) < OOD_WARN_SHARE * cells:
        return None
    head = (f"warning: {ood['cells']} of {cells} cells look unlike the model's training cells (colour or size\n"
            "beyond the card's limit); ")
    if ood["mode"] == "abstain":
        return head + ("they were not classified. Check [optics] um_per_px, or\n"
                       "train the model on cells of this stain and microscope.")
    return head + ("their calls and the blast ratio are not to be trusted. Check the stain and\n"
                   "the optics, or set [quality] out_of_distribution = \"abstain\".")


def describe_detector(cfg: DetectorConfig) -> dict[str, Any]:
    """What finds the cells: ``rule-based``, or the centre detector's spec and its model file's sha256."""
    if not cfg.centres:
        return {"centres": "rule-based", "sha256": None}
    return {"centres": cfg.centres, "sha256": sha256_file(model_path(cfg.centres))}
