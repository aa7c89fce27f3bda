"""The per-frame path of cell vision, shared by the daemon, ``field-eval`` and ``harvest``:
detect -> (track) -> quality gate -> crop (scale-true, :mod:`alnett_edge.vision.cells`) -> the card's
one preprocessing -> the out-of-distribution check -> batched inference on a
:class:`~alnett_edge.runtime.base.Runtime` -> a verdict per cell (a label, or the reason it was
abstained), every stage timed."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from alnett_edge.capture.base import Frame
from alnett_edge.card import ModelCard
from alnett_edge.data.appearance import OOD_REASON, ood_distance
from alnett_edge.data.preprocess import normalize, prepare
from alnett_edge.runtime.base import Runtime
from alnett_edge.vision.cells import QualityConfig, cell_image, crop_scale, gate, quality_reason
from alnett_edge.vision.detector import CellDetector
from alnett_edge.vision.record import CellRecord
from alnett_edge.vision.tracking import Track, TrackBook

#: the stages a frame passes, in order: the daemon's stage table (``field-eval`` times the middle ones)
STAGES = ("capture", "detect", "track", "crop", "infer", "sink", "frame_to_decision")


def classify_crops(crops: list[np.ndarray], runtime: Runtime, max_batch: int, ood: str = "record"
              ) -> tuple[list[np.ndarray | None], list[float | None], float, float]:
    """Cell images (``cell_image``: scale-true, the card's ``canvas_um`` at the detector's pixel size)
    through the card's one preprocessing, the out-of-distribution check on the prepared crop (the card's
    ``appearance``), batched inference of the rest. Returns per crop its calibrated probabilities
    (None: out of distribution with ``ood`` "abstain", not classified) and its distance from the training
    cells (None: the card records no appearance, or ``ood`` is "off"), and the preprocessing and
    inference times in ms."""
    spec = runtime.card.input
    appearance = runtime.card.appearance if ood != "off" else {}
    t0 = time.perf_counter()
    prepared = [prepare(c, spec) for c in crops]
    dist = [ood_distance(appearance, p, spec.mask_threshold) for p in prepared]
    ok = [i for i, d in enumerate(dist) if ood != "abstain" or d is None or d <= appearance["max_distance"]]
    inputs = [normalize(prepared[i], spec) for i in ok]
    t1 = time.perf_counter()
    probs: list[np.ndarray | None] = [None] * len(crops)
    if inputs:
        x = np.stack(inputs)
        step = max_batch or runtime.max_batch or 1  # 0: the runtime's own batch, else one (RuntimeConfig.max_batch)
        out = np.concatenate([runtime.infer(x[i : i + step]) for i in range(0, len(x), step)])
        for i, p in zip(ok, out):
            probs[i] = p
    return probs, dist, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3


def rounded_distance(d: float | None) -> float | None:
    return None if d is None else (round(d, 3) if np.isfinite(d) else -1.0)  # -1: no cell pixels at all


def verdict(p: np.ndarray | None, card: ModelCard, min_confidence: float) -> tuple[str | None, str | None, list[float | None]]:
    """(label, abstain reason, [P(not blast), P(blast)]) of probabilities ``p`` (None: not classified).
    The call is blast or not (``card.blast_columns`` summed), abstained when less sure than ``min_confidence``;
    the label is the likeliest class on the side called (a card of two classes: that class)."""
    if p is None:
        return None, None, [None, None]
    blast = float(card.blast_probability(p))
    cols = card.blast_columns if blast >= 0.5 else [i for i in range(len(p)) if i not in card.blast_columns]
    k = max(cols, key=lambda i: p[i])
    label, reason = (None, "low confidence") if max(blast, 1.0 - blast) < min_confidence else (card.class_names[k], None)
    return label, reason, [round(1.0 - blast, 6), round(blast, 6)]


def classify_frame(frame: Frame, detector: CellDetector, quality: QualityConfig, runtime: Runtime, max_batch: int,
                   model_sha256: str) -> tuple[list[CellRecord], dict[str, float]]:
    """One frame on its own (``field-eval``, which scores frames against their annotations): detect ->
    quality gate -> crop and classify -> a record per detection (label, or the reason it was
    abstained). Returns the records and the stage times in ms."""
    card = runtime.card
    t0 = time.perf_counter()
    dets = detector.detect(frame.rgb)
    detect_ms = (time.perf_counter() - t0) * 1e3
    canvas_px, trim_px = crop_scale(card.input.canvas_um, detector.um_per_px)
    reasons = [quality_reason(frame.rgb, d, quality, canvas_px) for d in dets]
    keep = [i for i, r in enumerate(reasons) if r is None]
    t1 = time.perf_counter()
    crops = [cell_image(frame.rgb, dets[i], canvas_px, trim_px) for i in keep]
    cut_ms = (time.perf_counter() - t1) * 1e3
    probs, dist, crop_ms, infer_ms = classify_crops(crops, runtime, max_batch, quality.out_of_distribution)
    crop_ms += cut_ms
    row, far = {i: p for i, p in zip(keep, probs) if p is not None}, {i for i, p in zip(keep, probs) if p is None}
    dist_of = dict(zip(keep, dist))
    now, records = time.time(), []
    for i, det in enumerate(dets):
        label, reason, (p_hem, p_all) = verdict(row.get(i), card, quality.min_confidence)
        records.append(CellRecord(now, frame.index, det.box, p_hem, p_all, label,
                                  reasons[i] or (OOD_REASON if i in far else reason), model_sha256,
                                  round(det.edge_weight, 4), classified=int(i in row),
                                  appearance_distance=rounded_distance(dist_of.get(i))))
    return records, {"detect": detect_ms, "crop": crop_ms, "infer": infer_ms}


def decide_track(track: Track, card: ModelCard, min_confidence: float, model_sha256: str) -> CellRecord:
    """A track's one row: the mean of its classified observations' probabilities and the verdict on it,
    or, with none classified, an abstain for its most frequent quality reason."""
    label, reason, (p_hem, p_all) = verdict(track.fused, card, min_confidence)
    if not track.probs:
        reason = track.reasons.most_common(1)[0][0] if track.reasons else "not classified"
    track.decision = CellRecord(
        time.time(), track.last_frame, track.box, p_hem, p_all, label, reason, model_sha256, round(track.edge_weight, 4),
        track_id=track.id, first_frame=track.first_frame, observations=track.seen, classified=len(track.probs),
        observed_prob_all=[round(float(card.blast_probability(q)), 6) for q in track.probs], observed_frames=list(track.frames),
        appearance_distance=track.distance, crop=track.crop)
    track.crop = None  # the row carries it to the crops sink, which drops it (see Daemon._process)
    return track.decision


def decide_tracks(tracks: list[Track], runtime: Runtime, quality: QualityConfig, max_batch: int, model_sha256: str
                  ) -> tuple[list[CellRecord], float, float, int]:
    """Classify the kept (sharpest) candidates of ``tracks`` in one batch and decide each track.
    Returns their rows, the preprocessing and inference times in ms and the crops the model ran on."""
    crops = [c.crop for t in tracks for c in t.candidates]
    probs, dist, crop_ms, infer_ms = classify_crops(crops, runtime, max_batch, quality.out_of_distribution)
    k = 0
    for t in tracks:
        n = len(t.candidates)
        t.classified(probs[k : k + n], [rounded_distance(d) for d in dist[k : k + n]], OOD_REASON)
        k += n
    rows = [decide_track(t, runtime.card, quality.min_confidence, model_sha256) for t in tracks]
    return rows, crop_ms, infer_ms, sum(p is not None for p in probs)


def track_frame(frame: Frame, detector: CellDetector, quality: QualityConfig, runtime: Runtime, max_batch: int,
                model_sha256: str, book: TrackBook) -> tuple[list[CellRecord], list[CellRecord], dict[str, float], int]:
    """The daemon's per-frame path: detect -> track -> quality gate and a crop of each good observation
    of the tracks not yet decided (their sharpest kept) -> classification of the tracks watched long
    enough or ended -> their rows. Returns those rows, every detection as shown on the frame, the stage
    times in ms and the number of crops the model ran on."""
    canvas_px, trim_px = crop_scale(runtime.card.input.canvas_um, detector.um_per_px)
    cfg = book.cfg
    t0 = time.perf_counter()
    dets = detector.detect(frame.rgb)
    t1 = time.perf_counter()
    tracks = book.assign(frame.rgb, dets, frame.index)
    t2 = time.perf_counter()
    reasons: list[str | None] = []
    for det, track in zip(dets, tracks):
        if track.decision is not None:  # decided: seen, nothing more
            track.seen, track.last_frame = track.seen + 1, frame.index
            reasons.append(None)
            continue
        reason, sharp = gate(frame.rgb, det, quality, canvas_px)
        track.observe(frame.index, det, reason, sharp, None if reason else cell_image(frame.rgb, det, canvas_px, trim_px),
                      cfg.observations)
        reasons.append(reason)
    ended = [t for t in book.ended() if t.decision is None]  # with tracking off: every track of this frame
    ready = list({id(t): t for t in [*(t for t in tracks if t.decision is None and t.good >= cfg.watch), *ended]}.values())
    t3 = time.perf_counter()
    rows, crop_ms, infer_ms, inferred = decide_tracks(ready, runtime, quality, max_batch, model_sha256)
    view, now = [], time.time()
    for det, track, reason in zip(dets, tracks, reasons):
        shown = track.decision or CellRecord(
            now, frame.index, det.box, None, None, None, reason or f"deciding {track.good}/{cfg.watch}",
            model_sha256, track_id=track.id)
        view.append(shown if shown.box == det.box else dataclasses.replace(shown, box=det.box))
    times = {"detect": (t1 - t0) * 1e3, "track": (t2 - t1) * 1e3, "crop": (t3 - t2) * 1e3 + crop_ms, "infer": infer_ms}
    return rows, view, times, inferred


def detect_only(frame: Frame, detector: CellDetector, quality: QualityConfig) -> tuple[list[CellRecord], dict[str, float]]:
    """The detector and the quality gate of the daemon's path, without a model (``field-eval`` with no
    bundle: is my microscope's every cell found?). Records carry no label; abstentions keep their reason."""
    t0 = time.perf_counter()
    dets = detector.detect(frame.rgb)
    ms = (time.perf_counter() - t0) * 1e3
    now = time.time()
    return [CellRecord(now, frame.index, d.box, None, None, None, quality_reason(frame.rgb, d, quality), "")
            for d in dets], {"detect": ms}
