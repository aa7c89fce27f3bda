"""Each cell counted once: detections tied into tracks across frames, a track classified from its best
few observations and decided once.

Association: each detection is the centre of its cell's nucleus in *slide coordinates* (frame pixels
less the measured stage shift), where a cell on a smear stands still, so a track is where it was last
seen (no motion model: a Kalman filter's velocity would have nothing to learn and would overshoot
after a stage jerk). Detections and open tracks are matched by an optimal assignment of their
distances (``lap.lapjv`` from ``lapx``, MIT: the Jonker-Volgenant solver Ultralytics' ByteTrack uses;
C, numpy only), no pair farther than ``max_jump_um`` micrometres at the detector's pixel size, so it
means the same on any microscope. An unmatched detection opens a track; a track unseen for more than
``lost_frames`` frames ends. (norfair, used before, did the same with a filter that had nothing to
do, but imported scipy.stats: +69 MB RSS and 1.5 s at start, and 1.1-1.3 ms a frame at 10 cells.)
Stage motion (the whole field shifting) is measured by OpenCV's phase correlation of consecutive
frames and taken off each detection's position, so a panned or jerked field keeps its ids; a frame
that does not correlate with the last one is a new field of view, and every track ends there
(norfair's optical-flow ``MotionEstimator`` measured 4-6 ms a frame here against 0.8 ms, and cannot
tell a new field).

A track is decided once, from its sharpest good observations: every observation that passes the
quality gate (not cut by an edge, sharp, fits the model's field) is a candidate, and the track keeps
the ``observations`` sharpest (variance of the Laplacian in the cell mask; the earlier of equals) as
it is watched for ``watch_frames`` good observations. Then those are classified in one batch: the
fused probabilities are the **mean of the observations' calibrated probabilities**
(``Runtime.infer``; temperature applied), and the decision is the fused top class, or an abstain for
low confidence below ``[quality] min_confidence``. Frames of a track being watched cost a crop, not a
model call; later frames of a decided track cost nothing. A track that ends before that (it left the
field, it was lost for ``lost_frames`` frames, or the session stopped) is classified and decided on
the sharpest it has, or abstained with its most frequent quality reason when it has none. A decided
track is one database row.

With ``enabled = false`` every detection is its own track of one observation, decided in its frame:
the per-frame behaviour of earlier versions.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import cv2
import lap
import numpy as np

from alnett_edge.errors import ConfigError
from alnett_edge.vision.detector import Detection
from alnett_edge.vision.record import CellRecord

log = logging.getLogger(__name__)

#: stage motion: phase correlation of the central CENTRE of each frame, shrunk by a whole factor to at
#: most MOTION_SIDE px on a side (a whole factor takes OpenCV's fast area-resize path: 0.2 ms against
#: 0.6 ms for 384 -> 160 px). Its peak (response) between two different fields stayed below 0.20 at p99
#: (BCCD, 80 frames; smartphone 0.23), and 0.30-0.93 between a frame and the same field shifted up to
#: 60 px or jerked 110 px, with camera noise; below the threshold a frame is taken for a new field.
MOTION_SIDE = 192
CENTRE = 0.6
NEW_FIELD_RESPONSE = 0.3


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True  # one track per cell, decided once (off: every detection of every frame is a row)
    observations: int = 3  # the sharpest good observations classified and fused into a track's decision
    watch_frames: int = 6  # good observations a track is watched for before its sharpest are classified (at least
    # `observations`): 0.2 s at 30 fps, long enough to pass through a focus sweep's best plane
    max_jump_um: float = 8.0  # farthest a cell centre may land from its track's prediction, frame to frame
    lost_frames: int = 8  # frames a track may go unseen before it ends (focus hunting, a missed detection)
    min_frames: int = 3  # a track that vanished from a field still in view after fewer frames is a flicker
    stage_motion: bool = True  # measure the field's shift (stage moved; a new field ends every track)

    @property
    def watch(self) -> int:
        return max(self.watch_frames, self.observations)

    def validate(self) -> None:
        if self.observations < 1:
            raise ConfigError("[tracking] observations must be >= 1")
        if self.watch_frames < 1:
            raise ConfigError("[tracking] watch_frames must be >= 1")
        if not self.max_jump_um > 0:
            raise ConfigError("[tracking] max_jump_um must be > 0")
        if self.lost_frames < 0 or self.min_frames < 1:
            raise ConfigError("[tracking] lost_frames must be >= 0 and min_frames >= 1")


@dataclass
class Candidate:
    """A good observation of a track, kept until the track is classified."""
    sharpness: float
    frame: int
    crop: np.ndarray  # the cell image as the model will see it (uint8 RGB, see daemon.cells.cell_image)
    box: tuple[int, int, int, int]
    edge_weight: float
    model_crop: np.ndarray | None = None  # the same cell at a second scale (harvest: the bundle's own canvas)


@dataclass
class Track:
    id: int
    first_frame: int
    last_frame: int
    box: tuple[int, int, int, int]
    seen: int = 0  # frames it was detected in
    good: int = 0  # of those, the ones that passed the quality gate
    candidates: list[Candidate] = field(default_factory=list)  # the sharpest good ones, sharpest first
    probs: list[np.ndarray] = field(default_factory=list)  # the classified observations' probabilities
    frames: list[int] = field(default_factory=list)  # and their frames
    edge_weights: list[float] = field(default_factory=list)  # and their edge weights
    last_edge_weight: float = 1.0
    reasons: Counter = field(default_factory=Counter)  # why the other observations were not classified
    decision: CellRecord | None = None  # its row, once decided
    lost: bool = False  # ended because it vanished while its field stayed in view (not a new field, not a stop)
    crop: np.ndarray | None = None  # the sharpest classified observation's cell image (uint8 RGB)
    distance: float | None = None  # the sharpest observation's distance from the training cells' appearance
    pos: np.ndarray | None = None  # where it was last seen, slide coordinates (frame px less the stage shift)
    missed: int = 0  # frames in a row it went unseen

    def observe(self, frame_index: int, det: Detection, reason: str | None, sharpness: float = 0.0,
                crop: np.ndarray | None = None, keep: int = 3, model_crop: np.ndarray | None = None) -> None:
        """One frame's detection of this track: ``reason`` why the gate refused it, or None and its
        ``crop``, kept as a candidate while it is among the ``keep`` sharpest."""
        self.seen += 1
        self.last_frame, self.last_edge_weight = frame_index, float(det.edge_weight)
        if reason is not None or crop is None:
            self.reasons[reason or "not classified"] += 1
            if not self.candidates:
                self.box = det.box
            return
        self.good += 1
        self.candidates.append(Candidate(float(sharpness), frame_index, crop, det.box, float(det.edge_weight),
                                         model_crop))
        self.candidates.sort(key=lambda c: -c.sharpness)  # stable: the earlier of two equals first
        del self.candidates[keep:]
        self.box = self.candidates[0].box  # the box of the sharpest observation

    def classified(self, probs: list[np.ndarray | None], distances: list[float | None], refused: str) -> None:
        """The model's answers for :attr:`candidates`, in their order (None: not classified, for the
        ``refused`` reason); the candidates' pixels are let go."""
        for c, p in zip(self.candidates, probs):
            if p is None:
                self.reasons[refused] += 1
                continue
            self.probs.append(np.asarray(p, np.float64))
            self.frames.append(c.frame)
            self.edge_weights.append(c.edge_weight)
            self.crop = c.crop if self.crop is None else self.crop
        self.distance = distances[0] if distances else self.distance
        self.candidates = []

    @property
    def fused(self) -> np.ndarray | None:
        return np.mean(self.probs, axis=0) if self.probs else None

    @property
    def edge_weight(self) -> float:
        return float(np.mean(self.edge_weights)) if self.edge_weights else self.last_edge_weight


def _centre(det: Detection) -> tuple[float, float]:
    """The point a track follows: the nucleus's centre as the detector found it (the nucleus is the
    cell's sharpest, most stable part), else the centre of its box."""
    if det.centre is not None:
        return det.centre
    x0, y0, x1, y1 = det.box
    return (x0 + x1) / 2, (y0 + y1) / 2


class TrackBook:
    """The tracks of one session. :meth:`assign` ties a frame's detections to tracks (one per
    detection, in order); :meth:`ended` hands over the tracks that ended since the last call."""

    def __init__(self, cfg: TrackingConfig, um_per_px: float) -> None:
        cfg.validate()
        self.cfg, self.um_per_px = cfg, um_per_px
        self.max_jump_px = cfg.max_jump_um / um_per_px
        self.open: list[Track] = []  # the tracks of the current field of view
        self._ended: list[Track] = []
        self._next_id = 1  # session-wide track ids
        self.fields = 1  # fields of view seen (a new one: every track ends)
        self.flickers = 0  # tracks dropped as detector flickers (see ended)
        self._prev: np.ndarray | None = None  # the last frame's central gray copy (stage motion)
        self._shift = np.zeros(2)  # the field's shift since the current field began, frame px
        self._window: np.ndarray | None = None

    def _track(self, frame_index: int, box: tuple[int, int, int, int]) -> Track:
        track = Track(self._next_id, frame_index, frame_index, box)
        self._next_id += 1
        return track

    def assign(self, frame_rgb: np.ndarray, dets: list[Detection], frame_index: int) -> list[Track]:
        if not self.cfg.enabled:  # tracking off: a track per detection, ended with its frame
            out = [self._track(frame_index, d.box) for d in dets]
            self._ended.extend(out)
            return out
        self._stage_shift(frame_rgb)
        points = np.array([_centre(d) for d in dets], np.float64).reshape(-1, 2) - self._shift  # slide coordinates
        matched = np.full(len(dets), -1)
        if self.open and len(dets):
            last = np.stack([t.pos for t in self.open])
            cost = np.sqrt(((last[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
            _, matched_det, _ = lap.lapjv(cost, extend_cost=True, cost_limit=self.max_jump_px)
            for k, i in enumerate(matched_det):
                if i >= 0:
                    matched[i] = k
        hit = set(matched[matched >= 0].tolist())
        unseen = [t for k, t in enumerate(self.open) if k not in hit]
        out: list[Track] = []
        for i, d in enumerate(dets):
            track = self.open[matched[i]] if matched[i] >= 0 else self._track(frame_index, d.box)
            track.pos, track.missed = points[i], 0
            out.append(track)
        for track in unseen:  # a track unseen for more than lost_frames frames ends
            track.missed += 1
            if track.missed > self.cfg.lost_frames:
                track.lost = True
                self._ended.append(track)
        self.open = [t for t in self.open if not t.lost] + [t for i, t in enumerate(out) if matched[i] < 0]
        return out

    def _stage_shift(self, frame_rgb: np.ndarray) -> None:
        """Add the field's shift since the last frame to :attr:`_shift`, from OpenCV's phase
        correlation of the central part of consecutive frames (grey, at most MOTION_SIDE px on a side:
        a whole-field translation needs no detail; the centre stays clear of an eyepiece's fixed rim).
        A correlation peak below NEW_FIELD_RESPONSE means another field of view: every track ends and a
        new association starts (a cell of the old field must not lend its id to one of the new)."""
        if not self.cfg.stage_motion:
            return
        h, w = frame_rgb.shape[:2]
        cy, cx, ry, rx = h // 2, w // 2, int(h * CENTRE / 2), int(w * CENTRE / 2)
        k = max(1, -(-2 * max(ry, rx) // MOTION_SIDE))  # the whole shrink factor
        centre = frame_rgb[cy - ry : cy - ry + (2 * ry) // k * k, cx - rx : cx - rx + (2 * rx) // k * k]
        s = 1.0 / k
        size = (max(8, centre.shape[1] // k), max(8, centre.shape[0] // k))
        gray = cv2.resize(cv2.cvtColor(centre, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA).astype(np.float32)
        prev, self._prev = self._prev, gray
        if prev is None or prev.shape != gray.shape:
            return
        if self._window is None or self._window.shape != gray.shape:
            self._window = cv2.createHanningWindow(size, cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(prev, gray, self._window)
        if response < NEW_FIELD_RESPONSE:
            self.new_field()
            return
        self._shift += (dx / s, dy / s)

    def new_field(self) -> None:
        """Another field of view: every open track ends; association starts again."""
        self._ended.extend(self.open)
        self.open = []
        self._shift = np.zeros(2)
        self.fields += 1

    def ended(self) -> list[Track]:
        """The tracks that ended since the last call, less flickers: an undecided track that vanished
        from a field still in view after fewer than ``min_frames`` frames (a detector's passing false or
        split detection; counted in :attr:`flickers`, never a row). A track ended by a new field or a
        stop is kept however short: a field seen for one frame is all the camera gave."""
        taken, self._ended = self._ended, []
        out = []
        for track in taken:
            if track.lost and track.decision is None and track.seen < self.cfg.min_frames:
                self.flickers += 1
            else:
                out.append(track)
        return out

    def close(self) -> list[Track]:
        """Every track still open ends (the session stops)."""
        self._ended.extend(self.open)
        self.open = []
        return self.ended()
