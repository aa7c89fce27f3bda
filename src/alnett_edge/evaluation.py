"""The accuracy gate's arithmetic, torch-free: used at export (``export.gate``) and again on the
device (``alnett-edge verify --gate-images``), so both judge an artifact by the same rule.

An artifact passes when none of accuracy, sensitivity, specificity and F1 drops by more than
``allow_drop`` points against the fp32 reference on the same images, and its top-1 agreement with
that reference is at least ``min_agreement``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.data.preprocess import load_image, preprocess
from alnett_edge.data.sources import Sample
from alnett_edge.train.metrics import SUMMARY_KEYS, binary_metrics, summary, top1_agreement

DEFAULT_ALLOW_DROP = 1.0  # points
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass
class LabelledInputs:
    inputs: np.ndarray  # N x C x H x W, the card's preprocessing
    labels: np.ndarray
    source: str


def labelled_inputs(samples: Sequence[Sample], card: ModelCard, source: str) -> LabelledInputs:
    inputs = np.stack([preprocess(load_image(s.path), card.input) for s in samples])
    return LabelledInputs(inputs, np.array([s.label for s in samples]), source)


def predict_batched(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([predict(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def gate_result(ref_prob_all: np.ndarray, prob_all: np.ndarray, labels: np.ndarray,
                allow_drop: float = DEFAULT_ALLOW_DROP, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> dict[str, Any]:
    ref = summary(binary_metrics(labels, ref_prob_all))
    got = summary(binary_metrics(labels, prob_all))
    drops = {k: round(100.0 * (ref[k] - got[k]), 3) for k in SUMMARY_KEYS}
    agreement = top1_agreement(ref_prob_all, prob_all)
    failures = [f"{k} drops {d:.2f} points (> {allow_drop})" for k, d in drops.items() if d > allow_drop]
    if agreement < min_agreement:
        failures.append(f"agreement {agreement:.2%} < {min_agreement:.0%}")
    return {"passed": not failures, "metrics": got, "reference_metrics": ref, "drop_points": drops,
            "agreement": agreement, "failures": failures, "n": int(len(labels))}
