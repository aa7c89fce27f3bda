"""``alnett-edge field-eval``: the daemon's per-frame path over annotated field frames, scored.

Frames and their white-cell boxes come in Pascal VOC or YOLO (:mod:`alnett_edge.vision.annotations`).
The pixel size comes from the ``[optics]`` config or ``--um-per-px``; without either it is estimated
from the frames' red cells (:mod:`alnett_edge.vision.optics`), as the daemon does at start-up. Every
frame goes through :func:`alnett_edge.vision.path.classify_frame` — the detector, quality
gate, crop, the card's preprocessing and the runtime, exactly as the daemon runs them. Scores:
detection recall / precision at an IoU threshold (one-to-one matching, best IoU first), centroid
recall (a true cell's centre inside exactly one detection), cells found once (one detection, and only
one, centred within ``match_um`` of the cell's centre: the measure for touching cells, whose boxes
overlap, and for cells counted by hand as points) and extra detections, both per cluster size where
the truth gives it, smudge cells boxed as white cells, abstentions by reason, per-cell
accuracy and predicted vs true blast ratio where the truth has labels, and per-stage latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.capture.base import Frame
from alnett_edge.data.preprocess import load_image
from alnett_edge.errors import ConfigError, DataError
from alnett_edge.metrics import binary_metrics, cell_score, decide_field, roc_auc, rule_score
from alnett_edge.runtime.base import Runtime
from alnett_edge.timing import StageTimes
from alnett_edge.vision.annotations import Truth, inside, match, match_points, read_truth
from alnett_edge.vision.cells import QualityConfig
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.differential import Aggregator, wilson_interval
from alnett_edge.vision.harvest import class_mapping, find_sessions, weak_label
from alnett_edge.vision.optics import OpticsConfig, calibration_sample, estimate_um_per_px
from alnett_edge.vision.path import STAGES, classify_frame, detect_only
from alnett_edge.vision.record import SMUDGE_REASON, CellRecord


#: a detection finds a true cell when its centre lies this close to the cell's centre (µm): within a
#: nucleus, and closer than two touching cells' centres ever are
MATCH_UM = 4.0


@dataclass
class FrameResult:
    truth: Truth
    records: list[CellRecord]
    pairs: list[tuple[int, int]]  # (record, true box) at the IoU threshold
    centre_pairs: list[tuple[int, int]] = field(default_factory=list)  # (record, true cell) by centre
    match_px: float = 0.0  # the centres' largest distance for a match, in this frame's pixels
    smudges: list[CellRecord] = field(default_factory=list)  # the detections of smudge cells (not in records)


def folder_scale(frames: Sequence[Path], optics: OpticsConfig) -> tuple[float, Any]:
    """One folder of frames (a slide or session): the optics config's pixel size, or the estimate from
    its frames' red cells (then returned too); DataError when it cannot be estimated."""
    um = optics.resolve()
    if um:
        return um, None
    cal = estimate_um_per_px((load_image(p, what="frame") for p in calibration_sample(list(frames))), optics.rbc_um)
    return cal.um_per_px, cal


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def field_eval(runtime: Runtime | None, folder: str | Path, detector: DetectorConfig | None = None,
               quality: QualityConfig | None = None, iou: float = 0.5, limit: int | None = None,
               max_batch: int = 0, optics: OpticsConfig | None = None, match_um: float = MATCH_UM,
               images: str | Path | None = None) -> tuple[dict[str, Any], list[FrameResult]]:
    """Score the daemon's per-frame path on annotated frames (see the module doc); ``runtime=None``
    scores the detector and quality gate alone. The pixel size is the optics config's, or estimated from
    the frames' red cells as the daemon would. ``folder`` may be a points file (its images in ``images``)."""
    if not 0 < iou <= 1:
        raise ConfigError(f"--iou must be in (0, 1], got {iou}")
    if not match_um > 0:
        raise ConfigError(f"--match-um must be > 0, got {match_um}")
    layout, truths = read_truth(folder, images)
    truths = truths[:limit] if limit else truths
    optics = optics or OpticsConfig()
    groups: dict[Path, list[Truth]] = {}  # a folder of frames is a slide or session: its own pixel size
    for t in truths:
        groups.setdefault(t.image.parent, []).append(t)
    scale: dict[Path, float] = {}
    optics_report: dict[str, Any] = {"um_per_px": optics.resolve(), "source": "config"}
    for where, group in groups.items():
        scale[where], cal = folder_scale([t.image for t in group], optics)
        if cal is not None:
            if len(groups) == 1:
                optics_report = {**cal.to_dict(), "source": f"estimated from {cal.frames} of the frames"}
            else:
                optics_report.setdefault("folders", {})[where.name] = round(cal.um_per_px, 5)
    if not optics_report["um_per_px"]:  # several folders: each its own estimate (the first one shown)
        optics_report.update(um_per_px=next(iter(scale.values())),
                             source=f"estimated per folder of frames ({len(groups)} folders)")
    detectors = {where: CellDetector(detector or DetectorConfig(), um) for where, um in scale.items()}
    quality = quality or QualityConfig()
    times = StageTimes(STAGES)
    agg = Aggregator.for_card(runtime.card) if runtime is not None else None
    results = []
    for k, truth in enumerate(truths):
        det = detectors[truth.image.parent]
        frame = Frame(load_image(truth.image, what="frame"), time.time(), k, f"field-eval:{truth.image.name}")
        records, stage_ms = classify_frame(frame, det, quality, runtime, max_batch, "") if runtime is not None \
            else detect_only(frame, det, quality)
        for stage, ms in stage_ms.items():
            times.add(stage, ms)
        for rec in records if agg is not None else ():
            agg.add_record(rec)
        max_px = match_um / det.um_per_px
        smudges = [r for r in records if r.abstain_reason == SMUDGE_REASON]  # counted apart, never as white cells
        records = [r for r in records if r.abstain_reason != SMUDGE_REASON]
        results.append(FrameResult(truth, records, match([r.box for r in records], truth.boxes, iou),
                                   match_points([_centre(r.box) for r in records], truth.centres, max_px), max_px,
                                   smudges))
    blast = runtime.card.blast_names if runtime is not None else ()
    report = _report(results, layout, str(folder), iou, times, blast)
    report.update(found_once_report(results))
    report["match_um"] = match_um
    report["smudge_frames"] = sum(d.smudge_frames for d in detectors.values())  # frames the smudge look ran in
    report["optics"] = optics_report
    if agg is not None:  # the daemon's session estimate over these frames (edge- and error-corrected)
        report["blast_ratio_estimate"] = agg.snapshot()["blast_ratio_estimate"]
    return report, results


def _report(results: list[FrameResult], layout: str, folder: str, iou: float, times: StageTimes,
            blast: tuple[str, ...]) -> dict[str, Any]:
    """The scores; ``blast``: the card's blast classes (the truth's blast label is "all", see
    :mod:`alnett_edge.vision.annotations`)."""
    n_true = sum(len(r.truth.boxes) for r in results)
    n_det = sum(len(r.records) for r in results)
    tp = sum(len(r.pairs) for r in results)
    centroid_hits = 0
    for r in results:
        for g in r.truth.boxes:
            cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
            centroid_hits += sum(inside(rec.box, cx, cy) for rec in r.records) == 1
    abstained: dict[str, int] = {}
    for r in results:
        for rec in r.records:
            if rec.abstain_reason:
                abstained[rec.abstain_reason] = abstained.get(rec.abstain_reason, 0) + 1
    labelled = [(r.records[i].label, r.truth.labels[j]) for r in results for i, j in r.pairs if r.truth.labels[j]]
    judged = [(p, t) for p, t in labelled if p is not None]
    true_labels = [lab for r in results for lab in r.truth.labels if lab]
    pred_labels = [rec.label for r in results for rec in r.records if rec.label]
    blasts_pred = sum(lab in blast for lab in pred_labels)
    report: dict[str, Any] = {
        "frames": len(results), "layout": layout, "folder": folder, "iou": iou,
        "true_cells": n_true, "detections": n_det, "matched": tp,
        "recall": round(tp / n_true, 4) if n_true else None,
        "precision": round(tp / n_det, 4) if n_det and n_true else None,  # points: no boxes to match
        "centroid_recall": round(centroid_hits / n_true, 4) if n_true else None,
        "classified": len(pred_labels), "abstained": dict(sorted(abstained.items())),
        "cell_accuracy": round(sum((p in blast) == (t == "all") for p, t in judged) / len(judged), 4)
        if judged else None,
        "cells_with_truth_label": len(labelled),
        "blast_ratio_predicted": round(blasts_pred / len(pred_labels), 4) if pred_labels else None,
        "blast_ratio_predicted_ci95": [round(v, 4) for v in wilson_interval(blasts_pred, len(pred_labels))]
        if pred_labels else None,
        "blast_ratio_true": round(sum(t == "all" for t in true_labels) / len(true_labels), 4) if true_labels else None,
        "stages": times.summary(),
    }
    return report


def found_once_report(results: list[FrameResult]) -> dict[str, Any]:
    """Cells found once and extra detections, overall and per cluster size (a detection that found no
    cell is put to the cluster of the nearest true cell within twice the match distance, unless it lies
    on a smudge cell); smudge cells found as smudge cells, boxed as white cells, and the smudge detections
    that hold no true smudge cell."""
    by: dict[int, list[int]] = {}  # cluster size -> [cells, found, detections]
    n_true = n_det = found = sm_true = sm_boxed = sm_found = sm_dets = sm_false = 0
    for r in results:
        t = r.truth
        n_true, n_det, found = n_true + len(t.centres), n_det + len(r.records), found + len(r.centre_pairs)
        matched = dict(r.centre_pairs)
        for size in t.clusters:
            by.setdefault(size, [0, 0, 0])[0] += 1
        for i, rec in enumerate(r.records):
            j = matched.get(i)
            if j is None and t.centres and not any(inside(rec.box, *s) for s in t.smudges):
                c = _centre(rec.box)
                near = min(range(len(t.centres)), key=lambda k: np.hypot(c[0] - t.centres[k][0], c[1] - t.centres[k][1]))
                if np.hypot(c[0] - t.centres[near][0], c[1] - t.centres[near][1]) <= 2 * r.match_px:
                    j = near
            if j is not None:
                row = by.setdefault(t.clusters[j], [0, 0, 0])
                row[2] += 1
                row[1] += i in matched
        sm_true += len(t.smudges)
        sm_boxed += sum(any(inside(rec.box, *s) for rec in r.records) for s in t.smudges)
        sm_found += sum(any(inside(rec.box, *s) for rec in r.smudges) for s in t.smudges)
        sm_dets += len(r.smudges)
        sm_false += sum(not any(inside(rec.box, *s) for s in t.smudges) for rec in r.smudges)
    out: dict[str, Any] = {
        "found_once": round(found / n_true, 4) if n_true else None,
        "extra": round((n_det - found) / n_det, 4) if n_det and n_true else None,
        "by_cluster": {str(k): {"cells": v[0], "found_once": round(v[1] / v[0], 4) if v[0] else None,
                                "detections": v[2], "precision": round(v[1] / v[2], 4) if v[2] else None}
                       for k, v in sorted(by.items())} if any(k > 1 for k in by) else {},
    }
    if sm_true or sm_dets:
        out["smudges"] = {"true": sm_true, "found": sm_found, "boxed_as_white_cells": sm_boxed,
                          "detections": sm_dets, "on_no_smudge": sm_false}
    calls = calls_by_cluster(results)
    if calls:
        out["calls_by_cluster"] = calls
    return out


def calls_by_cluster(results: list[FrameResult]) -> dict[str, dict[str, Any]]:
    """The model's sensitivity and specificity on the cells found once, alone against in a cluster (true
    labels and cluster sizes needed): a cell of a touching cluster reaches the model cut by its
    neighbours' share, and the ratio estimate's error correction assumes the validation's rates. Every
    classified cell counts by its top class, as in the estimate; {} when no frame has a cluster."""
    if not any(k > 1 for r in results for k in r.truth.clusters):
        return {}
    rows: dict[str, list[int]] = {}  # alone / in a cluster -> [blasts, called blast, normal, called normal]
    for r in results:
        for i, j in r.centre_pairs:
            rec, label = r.records[i], r.truth.labels[j]
            if label is None or rec.prob_all is None or rec.prob_hem is None:
                continue
            row = rows.setdefault("alone" if r.truth.clusters[j] == 1 else "in a cluster", [0, 0, 0, 0])
            blast = rec.prob_all >= rec.prob_hem
            if label == "all":
                row[0], row[1] = row[0] + 1, row[1] + blast
            else:
                row[2], row[3] = row[2] + 1, row[3] + (not blast)
    return {k: {"blasts": v[0], "sensitivity": round(v[1] / v[0], 4) if v[0] else None,
                "normal": v[2], "specificity": round(v[3] / v[2], 4) if v[2] else None}
            for k, v in sorted(rows.items())}


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


def field_eval_fields(runtime: Runtime, folder: str | Path, classes: Sequence[str] = (),
                      detector: DetectorConfig | None = None, quality: QualityConfig | None = None,
                      optics: OpticsConfig | None = None, max_batch: int = 0, limit: int | None = None,
                      threshold: float | None = None) -> dict[str, Any]:
    """Fields labelled per field (class folders, ``classes`` as ``harvest --classes``), decided by the
    field path: per session (folder) the pixel size, then each field's cells detected, gated, cut and
    classified as the daemon does, its score (the card's ``field_decision``: the mean log-odds of blast,
    or the blast fraction, over the cells the model classified) and the rule's threshold (or
    ``threshold``, on the card's score, else on the blast fraction). Scores ALL vs benign: accuracy,
    sensitivity, specificity and the AUC of the field score; fields with no classified cell are
    undecided and counted apart."""

    rule = dict(runtime.card.field_decision)
    if threshold is not None:
        rule = {**rule, "threshold": float(threshold), "score": rule_score(rule)}
    if not rule:
        raise ConfigError(f"{runtime.path.name}'s card has no field decision (train on a harvest of fields labelled "
                          "per field); give --threshold to score the blast fraction at a threshold of your own")
    mapping, _ = class_mapping(classes, two_classes="field-eval --fields scores ALL against benign fields, whatever "
                                                    "classes the model has")
    sessions = find_sessions(Path(folder), True, mapping)
    optics = optics or OpticsConfig()
    quality, times = quality or QualityConfig(), StageTimes(STAGES)
    fields, skipped = [], []
    for s in sessions:
        files = s.frames[:limit] if limit else s.frames
        try:
            um, _ = folder_scale(files, optics)
        except DataError as exc:
            skipped.append(f"{s.name}: {exc}")
            continue
        det = CellDetector(detector or DetectorConfig(), um)
        label = int(weak_label(s.field_class, mapping) == "all")
        for k, path in enumerate(files):
            frame = Frame(load_image(path, what="frame"), time.time(), k, f"field-eval:{path.name}")
            records, stage_ms = classify_frame(frame, det, quality, runtime, max_batch, "")
            for stage, ms in stage_ms.items():
                times.add(stage, ms)
            probs = [r.prob_all for r in records if r.prob_all is not None]
            call = decide_field(rule, float(np.sum(cell_score(np.array(probs), rule_score(rule)))), len(probs))
            fields.append({"field": f"{s.name}/{path.name}", "label": label, "cells": len(probs),
                           "detections": len(records), "score": call["value"] if call else None,
                           "blast_fraction": round(float(np.mean(np.array(probs) >= 0.5)), 4) if probs else None,
                           "all": call["all"] if call else None, "um_per_px": round(um, 5)})
    decided = [f for f in fields if f["all"] is not None]
    if not decided:
        raise DataError(f"{folder}: no field had a classified cell to decide from" + (f" ({skipped[0]})" if skipped else ""))
    y = np.array([f["label"] for f in decided])
    m = binary_metrics(y, np.array([f["all"] for f in decided], float), 0.5)
    cells = np.array([f["cells"] for f in fields])
    return {"folder": str(folder), "fields": len(fields), "decided": len(decided), "undecided": len(fields) - len(decided),
            "all_fields": int(y.sum()), "benign_fields": int(len(y) - y.sum()), "score": rule_score(rule),
            "threshold": rule["threshold"],
            "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "auc": roc_auc(y, np.array([f["score"] for f in decided])),
            "cells_per_field": {"median": float(np.median(cells)), "min": int(cells.min()), "max": int(cells.max())},
            "skipped_sessions": skipped, "stages": times.summary(), "per_field": fields}
