"""``alnett-edge evaluate``: metrics of a checkpoint on a labelled dataset, as JSON + PNG plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.data.preprocess import normalize
from alnett_edge.data.sources import class_counts, classes_of, load_samples
from alnett_edge.errors import ConfigError
from alnett_edge.evaluation import held_out_like_training, split_like_training
from alnett_edge.files import sha256_file
from alnett_edge.metrics import ECE_BINS, binary_metrics, ece_noise_floor, ece_of, patient_metrics, reliability
from alnett_edge.model.checkpoint import read_card
from alnett_edge.runtime.loader import open_file
from alnett_edge.train.dataset import CellDataset
from alnett_edge.train.plots import plot_confusion, plot_reliability, plot_roc

log = logging.getLogger(__name__)

SPLITS = ("all", "val", "train", "test")


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, layout: str = "auto",
                        labels_csv: str | None = None, split: str = "all", batch_size: int = 64,
                        device: str = "auto") -> dict[str, Any]:
    """Evaluate on every image of ``data`` (``split="all"``) or on the patient-disjoint split the
    checkpoint was trained with (``"val"``/``"train"``, rebuilt from the card's recorded seed and
    fraction), or on the held-out fold of a cross-validation run (``"test"``). Writes ``report.json``, ``confusion.png``, ``roc.png`` and ``reliability.png`` (the
    calibration of the probabilities every runtime reports, at the card's temperature) to ``out``."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}")
    card = read_card(checkpoint)
    samples = load_samples(data, layout, labels_csv)
    if split == "test":
        samples = held_out_like_training(samples, card)
    elif split != "all":
        s = split_like_training(samples, card)
        samples = s.val if split == "val" else s.train
    ds, load_report = CellDataset.from_samples(samples, card.input, None, source=str(data))
    # classified like every other stage: the checkpoint on the registry's fp32 reference backend
    probs = []
    with open_file(checkpoint, card, "checkpoint", cpu=False, device=device) as rt:
        for i in range(0, len(ds.images), batch_size):
            probs.append(rt.infer(np.stack([normalize(img, card.input) for img in ds.images[i : i + batch_size]])))
    prob = np.concatenate(probs)
    prob_all = card.blast_probability(prob)
    metrics = binary_metrics(ds.blast, prob_all)
    if len(card.class_names) > 2 and classes_of(ds.samples) == card.class_set and len(ds.labels):
        metrics["class_accuracy"] = round(float((prob.argmax(axis=1) == ds.labels).mean()), 4)
    blast_or_not = np.stack([1.0 - prob_all, prob_all], axis=1)  # the calibration of P(blast), what a ratio uses
    rows = reliability(blast_or_not, ds.blast)
    metrics["calibration"] = {"ece": round(ece_of(rows), 4), "ece_floor": round(ece_noise_floor(blast_or_not), 4),
                              "bins": ECE_BINS, "temperature": card.temperature, "reliability": rows}
    per_patient = patient_metrics(ds.blast, prob_all, [smp.patient_id for smp in ds.samples])
    if per_patient is not None:
        metrics["per_patient"] = per_patient
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "variant": card.variant,
        "data": str(data),
        "split": split,
        "classes": class_counts(ds.samples),
        "images": load_report.to_dict(),
        "metrics": metrics,
        "predictions": [
            {"file": str(smp.path), "label": smp.label_name, "blast": smp.is_blast, "prob_all": round(float(p), 6),
             "patient_id": smp.patient_id}
            for smp, p in zip(ds.samples, prob_all)
        ],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_confusion(metrics["confusion"], card.class_names if len(card.class_names) == 2 else ("not blast", "blast"),
                   out / "confusion.png",
                   f"{card.variant}: acc {metrics['accuracy']:.3f}, F1 {metrics['f1']:.3f}")
    plot_roc(ds.blast, prob_all, metrics["roc_auc"], out / "roc.png")
    plot_reliability(rows, out / "reliability.png",
                     f"ECE {metrics['calibration']['ece']:.3f} (T = {card.temperature:g}, {len(ds.labels)} cells; "
                     f"{metrics['calibration']['ece_floor']:.3f} if calibrated)")
    log.info("wrote %s", out / "report.json")
    return report



