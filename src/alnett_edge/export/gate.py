"""The accuracy gate: every artifact that runs here is compared with the fp32 PyTorch model.

On the gate set (``--gate-images``, else the patient-disjoint validation split the checkpoint was
trained with) each artifact's accuracy, sensitivity, specificity and F1 must not drop by more than
``allow_drop`` points (default 1.0) and its agreement with fp32 must be >= ``min_agreement``
(default 99 %); changes on cells both models hold below 0.6 are not counted (``evaluation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.card import ModelCard
from alnett_edge.data.sources import Sample, load_samples
from alnett_edge.export.formats.base import KERNELS, Predictor
from alnett_edge.evaluation import (
    DEFAULT_ALLOW_DROP,
    DEFAULT_MIN_AGREEMENT,
    LabelledInputs,
    gate_result,
    labelled_inputs,
    training_split,
    predict_batched,
)
from alnett_edge.machine import isa_line

GateSet = LabelledInputs

__all__ = ["DEFAULT_ALLOW_DROP", "DEFAULT_MIN_AGREEMENT", "GateSet", "gate_artifact", "gate_result", "gate_samples",
           "load_gate_set", "predict_batched"]


def gate_samples(card: ModelCard, gate_images: str | Path | None, layout: str = "auto") -> tuple[list[Sample], str]:
    if gate_images is not None:
        return load_samples(gate_images, layout), str(gate_images)
    split = training_split(card, "the gate without --gate-images")
    return split.val, f"{card.training['data']} (validation split)"


def load_gate_set(card: ModelCard, gate_images: str | Path | None, layout: str = "auto") -> GateSet:
    samples, source = gate_samples(card, gate_images, layout)
    return labelled_inputs(samples, card, source)


def gate_artifact(runners: dict[str, Predictor], ref: np.ndarray, gate: GateSet, allow_drop: float,
                  min_agreement: float, proxy: str | None = None, extra_failures: list[str] | None = None) -> dict[str, Any]:
    """Gate one artifact under every arithmetic in ``runners`` (each must pass) and record where.

    The headline metrics are this machine's kernels' (else the only arithmetic run); ``arithmetic``
    holds every run; ``measured_on`` the CPU and ISA; ``proxy`` why the host only approximates the device.
    """
    results = {name: gate_result(gate.prob(ref), gate.prob(predict_batched(p, gate.inputs)), gate.labels, allow_drop,
                                 min_agreement)
               for name, p in runners.items()}
    head = results.get(KERNELS) or next(iter(results.values()))
    failing: dict[str, list[str]] = {}  # one line per failure, naming every arithmetic it failed under
    for name, r in results.items():
        for f in r["failures"]:
            failing.setdefault(f, []).append(name)
    failures = [f + (f" ({' and '.join(names)} int8 arithmetic)" if len(results) > 1 else "")
                for f, names in failing.items()]
    failures += extra_failures or []
    return {**head, "passed": not failures, "failures": failures,
            "arithmetic": {name: {k: r[k] for k in ("passed", "metrics", "drop_points", "agreement")}
                           for name, r in results.items()},
            "measured_on": isa_line(), "proxy": proxy}
