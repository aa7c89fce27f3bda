"""``alnett-edge predict``: classify cell images with a runtime, with per-image latency.

Images go through the one preprocessing function (:func:`alnett_edge.data.preprocess.preprocess`,
the card's contract) that training, calibration and export use. Images are checked like calibration
images: colour (3 channels), decodable, and of the sides of the training cells, widened by half (the one size
rule, :func:`alnett_edge.data.preprocess.size_refusal`), unless ``any_size``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image, preprocess, training_sides
from alnett_edge.errors import DataError
from alnett_edge.runtime.base import Runtime


@dataclass
class Prediction:
    file: str
    label: str
    probability: float  # of the predicted label
    prob_all: float  # of the blast class
    latency_ms: float  # inference time of this image's batch, shared equally by its images


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) in folders; sorted within each folder."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"image not found: {p}")
    if not files:
        raise DataError("no images given")
    return files


def classify_arrays(rt: Runtime, images: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """RGB uint8 images -> (probabilities N x classes, inference milliseconds for the batch)."""
    x = np.stack([preprocess(img, rt.card.input) for img in images])
    t0 = time.perf_counter()
    probs = rt.infer(x)
    return probs, (time.perf_counter() - t0) * 1e3


def predict_files(rt: Runtime, files: list[Path], batch: int = 1, any_size: bool = False) -> list[Prediction]:
    names = rt.card.class_names
    expected = training_sides(rt.card.training)
    out: list[Prediction] = []
    for i in range(0, len(files), max(batch, 1)):
        chunk = files[i : i + max(batch, 1)]
        images = [load_image(f, strict=True, expected_size=expected, allow_any_size=any_size) for f in chunk]
        probs, ms = classify_arrays(rt, images)
        for f, p in zip(chunk, probs):
            k = int(np.argmax(p))
            out.append(Prediction(str(f), names[k], round(float(p[k]), 6), round(float(rt.card.blast_probability(p)), 6), round(ms / len(chunk), 4)))
    return out


def write_predictions(preds: list[Prediction], dest: str | Path) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(p) for p in preds]
    if dest.suffix == ".csv":
        with open(dest, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
            w.writeheader()
            w.writerows(rows)
    else:
        dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest
