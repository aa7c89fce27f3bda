"""The differential of a session or a set of frames: counts per class and abstention reason, the
blast ratio with its Wilson 95 % interval, cells per minute, and the edge- and error-corrected estimate
of the slide's blast ratio (:func:`ratio_estimate`)."""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from alnett_edge.metrics import cell_score, decide_field, rule_score
from alnett_edge.vision.record import SMUDGE_REASON

if TYPE_CHECKING:
    from alnett_edge.card import ModelCard
    from alnett_edge.vision.record import CellRecord


def wilson_interval(k: float, n: float, z: float = 1.959964) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion k/n (None when n = 0); ``n`` may be an effective
    sample size (weighted counts)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


#: below this Youden index (sensitivity + specificity - 1) the error correction is not applied: it
#: would divide by a number near zero and the estimate would be noise
MIN_YOUDEN = 0.5


def _rate_variance(rate: float, n: int) -> float:
    """The variance of a rate measured on ``n`` cells, Agresti-Coull style (two successes and two failures
    added), so a validation sensitivity of 1.0 on a few cells is not taken as certain."""
    p = (rate * n + 2) / (n + 4)
    return p * (1 - p) / (n + 4)


def ratio_estimate(positive_w: float, total_w: float, total_w2: float, cells: int,
                   sensitivity: float | None = None, specificity: float | None = None,
                   val_cells: tuple[int, int] | None = None, z: float = 1.959964) -> dict[str, Any] | None:
    """The slide's blast ratio from the cells the model saw whole, with its 95 % interval.

    * Edge correction: each cell carries a Miles-Lantuéjoul weight (``detector.field_weights``), so a
      large cell, which the frame edge cuts more often, counts for the large cells cut and abstained.
      The interval is Wilson's on the weighted proportion with Kish's effective sample size
      ``(Σw)² / Σw²``.
    * Error correction (Rogan-Gladen): with the model's validation sensitivity and specificity (the
      card's ``metrics.val``), the observed share q of blast calls becomes ``(q + spec - 1) / (sens +
      spec - 1)``, clipped to [0, 1], and so do the interval's ends. It assumes the model errs on field
      cells as it did on its validation cells; it is skipped when sens + spec - 1 < :data:`MIN_YOUDEN`.
    * The correction's own uncertainty: with ``val_cells`` (the validation's blasts and normal cells,
      from its confusion matrix) sens and spec are estimates too. Their delta-method spread at the
      estimate p, ``z sqrt(p² var(sens) + (1 - p)² var(spec)) / (sens + spec - 1)``, is added to each
      side of the interval in quadrature (independent errors), so a model validated on 190 cells gets a
      wider interval than one validated on 19,000.
    Every cell the model classified counts here by its top class, low-confidence ones too (the
    validation sensitivity and specificity were measured so)."""
    if total_w <= 0 or total_w2 <= 0:
        return None
    q = positive_w / total_w
    n_eff = total_w * total_w / total_w2
    lo, hi = wilson_interval(q * n_eff, n_eff, z) or (0.0, 1.0)
    method = ["edge-weighted (Miles-Lantuéjoul)"]
    if sensitivity is not None and specificity is not None and sensitivity + specificity - 1 >= MIN_YOUDEN:
        j = sensitivity + specificity - 1

        def adjust(v: float) -> float:
            return min(1.0, max(0.0, (v + specificity - 1) / j))

        q, lo, hi = adjust(q), adjust(lo), adjust(hi)
        method.append(f"corrected for sensitivity {sensitivity:.3f} / specificity {specificity:.3f} (Rogan-Gladen)")
        if val_cells is not None and min(val_cells) > 0:
            spread = z * math.sqrt(q * q * _rate_variance(sensitivity, val_cells[0])
                                   + (1 - q) ** 2 * _rate_variance(specificity, val_cells[1])) / j
            lo, hi = max(0.0, q - math.hypot(q - lo, spread)), min(1.0, q + math.hypot(hi - q, spread))
            method.append(f"interval widened for their uncertainty ({val_cells[0]} blasts / {val_cells[1]} "
                          "normal validation cells)")
    return {"value": round(q, 4), "ci95": [round(lo, 4), round(hi, 4)], "cells": cells, "n_eff": round(n_eff, 1),
            "method": ", ".join(method)}


def session_blast(session: dict[str, Any]) -> tuple[str, ...]:
    """The blast classes a session's row names (a row from before a card could have several: its
    ``positive_class``, else ``all``)."""
    names = session.get("blast_classes")
    if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
        return tuple(names)
    return (str(session.get("positive_class") or "all"),)


def validation_cells(confusion: Any) -> tuple[int, int] | None:
    """(blasts, normal cells) of a binary confusion matrix [[tn, fp], [fn, tp]] (``metrics.binary_metrics``),
    or None when it is not one."""
    try:
        (tn, fp), (fn, tp) = confusion
        counts = [int(v) for v in (tn, fp, fn, tp)]
    except (TypeError, ValueError):
        return None
    return (counts[2] + counts[3], counts[0] + counts[1]) if min(counts) >= 0 else None


class Aggregator:
    def __init__(self, class_names: tuple[str, ...], blast: str | tuple[str, ...] = "all", sensitivity: float | None = None,
                 specificity: float | None = None, field_rule: dict[str, Any] | None = None,
                 val_cells: tuple[int, int] | None = None) -> None:
        self.class_names = class_names
        self.labels = dict.fromkeys(class_names, 0)
        self.abstained: dict[str, int] = {}
        self.smudges = 0  # smudge cells: counted apart, not white cells of the differential
        self.frames = 0
        self.started = time.time()
        self.blast = (blast,) if isinstance(blast, str) else tuple(blast)  # the classes that are blasts
        self.positive = "+".join(self.blast)  # their name in a session's summary and on the page
        self.sensitivity, self.specificity = sensitivity, specificity
        self.val_cells = val_cells  # the validation's (blasts, normal cells) behind sensitivity / specificity
        self._w = [0.0, 0.0, 0.0, 0]  # Σw over positive calls, Σw, Σw², cells: the ratio estimate
        self.field_rule = dict(field_rule or {})  # the card's field_decision: the session called from its cells
        self._field_sum = 0.0  # Σ metrics.cell_score under the rule's score, over the cells in _w[3]
        self._field_score = rule_score(self.field_rule)
        self._lock = threading.Lock()

    @classmethod
    def for_card(cls, card: ModelCard) -> Aggregator:
        """Counts for this model card: its blast classes, and its validation sensitivity and
        specificity (``metrics.val``, when recorded) with the cells they were measured on (its confusion
        matrix, [[tn, fp], [fn, tp]]) for the ratio estimate's error correction."""
        val = card.metrics.get("val", {}) if isinstance(card.metrics, dict) else {}
        sens, spec = val.get("sensitivity"), val.get("specificity")
        return cls(card.class_names, card.blast_names,
                   float(sens) if isinstance(sens, (int, float)) else None,
                   float(spec) if isinstance(spec, (int, float)) else None, card.field_decision,
                   validation_cells(val.get("confusion")))

    def add_record(self, record: CellRecord) -> None:
        """One cell's row (a track's decision, or a detection of one frame)."""
        called = None
        if record.prob_all is not None and record.prob_hem is not None:
            called = self.blast[0] if record.prob_all >= record.prob_hem else \
                next(c for c in self.class_names if c not in self.blast)
        self.add(record.label, record.abstain_reason, called, record.edge_weight, record.prob_all)

    def add(self, label: str | None, reason: str | None, called: str | None = None, weight: float = 1.0,
            prob_positive: float | None = None) -> None:
        """One cell: its label (None when abstained, with the reason); ``called`` is the model's top
        class for any cell it classified (also when abstained for low confidence), ``weight`` its edge
        correction; both feed :func:`ratio_estimate`. ``prob_positive`` (else the call, as 1 or 0) feeds
        the card's field rule."""
        with self._lock:
            if reason == SMUDGE_REASON:
                self.smudges += 1
                return
            if label is not None:
                self.labels[label] = self.labels.get(label, 0) + 1
            else:
                self.abstained[reason or "?"] = self.abstained.get(reason or "?", 0) + 1
            if called is not None:
                p = prob_positive if prob_positive is not None else float(called in self.blast)
                self._field_sum += float(cell_score(p, self._field_score)) if self.field_rule else 0.0
                w = self._w
                w[0] += weight if called in self.blast else 0.0
                w[1] += weight
                w[2] += weight * weight
                w[3] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            classified = sum(self.labels.values())
            blasts = sum(self.labels.get(b, 0) for b in self.blast)
            minutes = max(1e-9, (time.time() - self.started) / 60)
            ci = wilson_interval(blasts, classified)
            return {
                "frames": self.frames, "positive_class": self.positive, "blast_classes": list(self.blast),
                "cells": classified + sum(self.abstained.values()), "classified": classified,
                "labels": dict(self.labels), "abstained": dict(self.abstained), "smudges": self.smudges,
                "blast_ratio": round(blasts / classified, 4) if classified else None,
                "blast_ratio_ci95": [round(v, 4) for v in ci] if ci else None,
                "cells_per_minute": round(classified / minutes, 2),
                "blast_ratio_estimate": ratio_estimate(*self._w, self.sensitivity, self.specificity, self.val_cells),
                "decision": decide_field(self.field_rule, self._field_sum, self._w[3]),
            }  # fmt: skip
