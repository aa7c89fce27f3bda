"""``alnett-edge field-eval``: the daemon's per-frame path over annotated field frames, scored.

Frames and their white-cell boxes come in either layout users have:

* Pascal VOC (BCCD): ``Annotations/*.xml`` + ``JPEGImages/``, or the XML beside each image; objects
  named ``WBC`` (any case) are white cells, and an optional ``<label>all|hem</label>`` (the synthetic
  smear generator writes it) gives the truth for per-cell accuracy and the blast ratio.
* YOLO (Roboflow exports such as wbc-smartphone): ``images/`` + ``labels/*.txt`` with normalised
  ``class cx cy w h``; the white-cell class is 0 unless a ``data.yaml``/``classes.txt`` names one
  (``wbc``, ``white``, ``leuko``).

The pixel size comes from the ``[optics]`` config or ``--um-per-px``; without either it is estimated
from the frames' red cells (:mod:`alnett_edge.daemon.optics`), as the daemon does at start-up. Every
frame goes through :func:`alnett_edge.daemon.service.classify_frame` — the detector, quality
gate, crop, the card's preprocessing and the runtime, exactly as the daemon runs them. Scores:
detection recall / precision at an IoU threshold (one-to-one matching, best IoU first), centroid
recall (a true cell's centre inside exactly one detection), abstentions by reason, per-cell accuracy
and predicted vs true blast ratio where the truth has labels, and per-stage latency.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.capture.base import Frame
from alnett_edge.daemon.cells import QualityConfig, quality_reason
from alnett_edge.daemon.detector import CellDetector, DetectorConfig
from alnett_edge.daemon.optics import OpticsConfig, estimate_um_per_px
from alnett_edge.daemon.service import classify_frame
from alnett_edge.daemon.sinks import CellRecord
from alnett_edge.daemon.stats import Aggregator, StageTimes, wilson_interval
from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image
from alnett_edge.errors import ConfigError, DataError

Box = tuple[int, int, int, int]
WBC_NAMES = re.compile(r"wbc|white|leuk|leuc", re.IGNORECASE)
#: frames (evenly spaced) the pixel size is estimated from when the optics are not given
CALIBRATION_FRAMES = 40


@dataclass
class Truth:
    image: Path
    boxes: list[Box] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # "all" / "hem" / None per box


def _voc(xml: Path, images: dict[str, Path]) -> Truth | None:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml} is not valid Pascal VOC XML ({exc})") from None
    name = (root.findtext("filename") or "").strip()
    image = images.get(name) or images.get(Path(name).stem) or images.get(xml.stem)
    if image is None:
        return None
    truth = Truth(image)
    for obj in root.iter("object"):
        if not WBC_NAMES.search(obj.findtext("name") or ""):
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            truth.boxes.append(tuple(int(float(bb.findtext(k) or "")) for k in ("xmin", "ymin", "xmax", "ymax")))  # type: ignore[arg-type]
        except ValueError:
            raise DataError(f"{xml}: a box with a non-numeric corner") from None
        label = (obj.findtext("label") or "").strip().lower()
        truth.labels.append(label if label in ("all", "hem") else None)
    return truth


def _yolo_class(root: Path) -> int:
    for cfg in (root / "data.yaml", root.parent / "data.yaml", root / "classes.txt", root.parent / "classes.txt"):
        if cfg.is_file():
            text = cfg.read_text(errors="replace")
            names = re.findall(r"['\"]?([A-Za-z][\w -]*)['\"]?", text.split("names:", 1)[1]) if "names:" in text \
                else [line.strip() for line in text.splitlines() if line.strip()]
            for i, n in enumerate(names):
                if WBC_NAMES.search(n):
                    return i
    return 0


def _yolo(txt: Path, image: Path, cls: int) -> Truth:
    h, w = _size(image)
    truth = Truth(image)
    for n, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise DataError(f"{txt}:{n}: not a YOLO line (class cx cy w h)") from None
        if c != cls:
            continue
        truth.boxes.append((int(round((cx - bw / 2) * w)), int(round((cy - bh / 2) * h)),
                            int(round((cx + bw / 2) * w)), int(round((cy + bh / 2) * h))))
        truth.labels.append(None)
    return truth


def _size(image: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image) as im:
        return im.size[1], im.size[0]


def read_truth(folder: str | Path) -> tuple[str, list[Truth]]:
    """(layout, frames with their white-cell boxes) of a VOC or YOLO folder; one-line errors otherwise."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"annotated frames not found: {root}")
    images = {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    images.update({p.stem: p for p in images.values()})
    xmls = sorted(root.rglob("*.xml"))
    txts = sorted(p for p in root.rglob("*.txt") if p.parent.name == "labels")
    if xmls:
        frames = [t for t in (_voc(x, images) for x in xmls) if t is not None]
        layout = "voc"
    elif txts:
        cls = _yolo_class(root)
        frames = [_yolo(t, images[t.stem], cls) for t in txts if t.stem in images]
        layout = "yolo"
    else:
        raise DataError(f"{root}: no annotations found (expected Pascal VOC *.xml or YOLO labels/*.txt)")
    if not frames:
        raise DataError(f"{root}: {len(xmls) or len(txts)} annotation files but none names an image found here "
                        "(annotations that do not match the images?)")
    return layout, frames


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(dets: list[Box], gts: list[Box], threshold: float) -> list[tuple[int, int]]:
    """One-to-one (detection, truth) pairs with IoU >= threshold, best IoU first."""
    pairs = sorted(((_iou(d, g), i, j) for i, d in enumerate(dets) for j, g in enumerate(gts)), reverse=True)
    used_d, used_g, out = set(), set(), []
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_d and j not in used_g:
            used_d.add(i)
            used_g.add(j)
            out.append((i, j))
    return out


def _inside(box: Box, x: float, y: float) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


@dataclass
class FrameResult:
    truth: Truth
    records: list[CellRecord]
    pairs: list[tuple[int, int]]


def detect_only(frame: Frame, detector: CellDetector, quality: QualityConfig) -> tuple[list[CellRecord], dict[str, float]]:
    """The detector and the quality gate of the daemon's path, without a model (``field-eval`` with no
    bundle: is my microscope's every cell found?). Records carry no label; abstentions keep their reason."""
    t0 = time.perf_counter()
    dets = detector.detect(frame.rgb)
    ms = (time.perf_counter() - t0) * 1e3
    now = time.time()
    return [CellRecord(now, frame.index, d.box, None, None, None, quality_reason(frame.rgb, d, quality), "")
            for d in dets], {"detect": ms}


def field_eval(runtime: Any, folder: str | Path, detector: DetectorConfig | None = None,
               quality: QualityConfig | None = None, iou: float = 0.5, limit: int | None = None,
               max_batch: int = 0, optics: OpticsConfig | None = None) -> tuple[dict[str, Any], list[FrameResult]]:
    """Score the daemon's per-frame path on annotated frames (see the module doc); ``runtime=None``
    scores the detector and quality gate alone. The pixel size is the optics config's, or estimated from
    the frames' red cells as the daemon would."""
    if not 0 < iou <= 1:
        raise ConfigError(f"--iou must be in (0, 1], got {iou}")
    layout, truths = read_truth(folder)
    truths = truths[:limit] if limit else truths
    optics = optics or OpticsConfig()
    um_per_px = optics.resolve()
    optics_report: dict[str, Any] = {"um_per_px": um_per_px, "source": "config"}
    if not um_per_px:
        step = max(1, len(truths) // CALIBRATION_FRAMES)
        cal = estimate_um_per_px((load_image(t.image, what="frame") for t in truths[::step]), optics.rbc_um)
        um_per_px = cal.um_per_px
        optics_report = {**cal.to_dict(), "source": f"estimated from {cal.frames} of the frames"}
    det, quality = CellDetector(detector or DetectorConfig(), um_per_px), quality or QualityConfig()
    times = StageTimes()
    agg = Aggregator.for_card(runtime.card) if runtime is not None else None
    results = []
    for k, truth in enumerate(truths):
        frame = Frame(load_image(truth.image, what="frame"), time.time(), k, f"field-eval:{truth.image.name}")
        records, stage_ms = classify_frame(frame, det, quality, runtime, max_batch, "") if runtime is not None \
            else detect_only(frame, det, quality)
        for stage, ms in stage_ms.items():
            times.add(stage, ms)
        for rec in records if agg is not None else ():
            agg.add_record(rec)
        results.append(FrameResult(truth, records, match([r.box for r in records], truth.boxes, iou)))
    report = _report(results, layout, str(folder), iou, times)
    report["optics"] = optics_report
    if agg is not None:  # the daemon's session estimate over these frames (edge- and error-corrected)
        report["blast_ratio_estimate"] = agg.snapshot()["blast_ratio_estimate"]
    return report, results


def _report(results: list[FrameResult], layout: str, folder: str, iou: float, times: StageTimes) -> dict[str, Any]:
    n_true = sum(len(r.truth.boxes) for r in results)
    n_det = sum(len(r.records) for r in results)
    tp = sum(len(r.pairs) for r in results)
    centroid_hits = 0
    for r in results:
        for g in r.truth.boxes:
            cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
            centroid_hits += sum(_inside(rec.box, cx, cy) for rec in r.records) == 1
    abstained: dict[str, int] = {}
    for r in results:
        for rec in r.records:
            if rec.abstain_reason:
                abstained[rec.abstain_reason] = abstained.get(rec.abstain_reason, 0) + 1
    labelled = [(r.records[i].label, r.truth.labels[j]) for r in results for i, j in r.pairs if r.truth.labels[j]]
    judged = [(p, t) for p, t in labelled if p is not None]
    true_labels = [lab for r in results for lab in r.truth.labels if lab]
    pred_labels = [rec.label for r in results for rec in r.records if rec.label]
    blasts_pred = sum(lab == "all" for lab in pred_labels)
    report: dict[str, Any] = {
        "frames": len(results), "layout": layout, "folder": folder, "iou": iou,
        "true_cells": n_true, "detections": n_det, "matched": tp,
        "recall": round(tp / n_true, 4) if n_true else None,
        "precision": round(tp / n_det, 4) if n_det else None,
        "centroid_recall": round(centroid_hits / n_true, 4) if n_true else None,
        "classified": len(pred_labels), "abstained": dict(sorted(abstained.items())),
        "cell_accuracy": round(sum(p == t for p, t in judged) / len(judged), 4) if judged else None,
        "cells_with_truth_label": len(labelled),
        "blast_ratio_predicted": round(blasts_pred / len(pred_labels), 4) if pred_labels else None,
        "blast_ratio_predicted_ci95": [round(v, 4) for v in wilson_interval(blasts_pred, len(pred_labels))]
        if pred_labels else None,
        "blast_ratio_true": round(sum(t == "all" for t in true_labels) / len(true_labels), 4) if true_labels else None,
        "stages": times.summary(),
    }
    return report


def contact_sheet(results: list[FrameResult], dest: str | Path, columns: int = 3, tiles: int = 12,
                  tile_width: int = 320) -> Path:
    """A PNG of the first frames: found cells green (grey when abstained, with the reason), false
    detections red, missed true cells blue."""
    out = []
    for r in results[:tiles]:
        img = cv2.cvtColor(load_image(r.truth.image, what="frame"), cv2.COLOR_RGB2BGR)
        hit_d, hit_g = {i for i, _ in r.pairs}, {j for _, j in r.pairs}
        for j, g in enumerate(r.truth.boxes):
            if j not in hit_g:
                cv2.rectangle(img, g[:2], (g[2] - 1, g[3] - 1), (230, 120, 20), 2)
        for i, rec in enumerate(r.records):
            colour = (40, 170, 40) if i in hit_d else (30, 30, 220)
            if rec.abstain_reason and i in hit_d:
                colour = (150, 150, 150)  # found, but not classified
            cv2.rectangle(img, rec.box[:2], (rec.box[2] - 1, rec.box[3] - 1), colour, 2)
            text = rec.label or rec.abstain_reason or ""
            cv2.putText(img, text, (rec.box[0] + 2, max(12, rec.box[1] + 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
        scale = tile_width / img.shape[1]
        out.append(cv2.resize(img, (tile_width, int(round(img.shape[0] * scale)))))
    if not out:
        raise DataError("no frames to draw")
    h = max(t.shape[0] for t in out)
    out = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)) for t in out]
    while len(out) % columns:
        out.append(np.full_like(out[0], 255))
    rows = [np.hstack(out[i : i + columns]) for i in range(0, len(out), columns)]
    dest = Path(dest)
    dest = dest if dest.suffix else dest.with_suffix(".png")
    if not cv2.imwrite(str(dest), np.vstack(rows)):
        raise DataError(f"cannot write {dest}")
    return dest
