"""The accuracy gate: every artifact that runs here is compared with the fp32 PyTorch model.

On the gate set (``--gate-images``, else the patient-disjoint validation split the checkpoint was
trained with) each artifact's accuracy, sensitivity, specificity and F1 must not drop by more than
``allow_drop`` points (default 1.0) and its top-1 agreement with fp32 must be >= ``min_agreement``
(default 99 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.data.preprocess import load_image, preprocess
from alnett_edge.data.sources import Sample, load_samples
from alnett_edge.data.splits import make_split
from alnett_edge.errors import DataError
from alnett_edge.train.metrics import SUMMARY_KEYS, binary_metrics, summary, top1_agreement

DEFAULT_ALLOW_DROP = 1.0  # points
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass
class GateSet:
    inputs: np.ndarray
    labels: np.ndarray
    source: str


def gate_samples(card: ModelCard, gate_images: str | Path | None) -> tuple[list[Sample], str]:
    if gate_images is not None:
        return load_samples(gate_images), str(gate_images)
    data = card.training.get("data")
    if not data or not Path(data).exists():
        raise DataError("no gate set: pass --gate-images (the checkpoint's training data is not available here)")
    cfg = card.training.get("config", {})
    samples = load_samples(data, cfg.get("layout", "auto"), cfg.get("labels_csv"))
    split = make_split(samples, cfg.get("val_fraction", 0.2), cfg.get("seed", 0), cfg.get("val_fold"))
    return split.val, f"{data} (validation split)"


def load_gate_set(card: ModelCard, gate_images: str | Path | None) -> GateSet:
    samples, source = gate_samples(card, gate_images)
    inputs = np.stack([preprocess(load_image(s.path), card.input) for s in samples])
    return GateSet(inputs, np.array([s.label for s in samples]), source)


def predict_batched(predict: Any, inputs: np.ndarray, batch: int = 16) -> np.ndarray:
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
    return {"passed": not failures, "metrics": got, "drop_points": drops, "agreement": agreement,
            "failures": failures, "n": int(len(labels))}
