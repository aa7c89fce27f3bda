"""A PNG contact sheet of real vs synthetic cells, to check by eye that the synthetic data resembles C-NMC."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from alnett_edge.data.preprocess import load_image
from alnett_edge.data.sources import Sample
from alnett_edge.data.synth import synth_cell
from alnett_edge.errors import DataError


def _row(images: list[np.ndarray], tile: int) -> np.ndarray:
    return np.hstack([cv2.resize(im, (tile, tile), interpolation=cv2.INTER_AREA) for im in images])


def _label(strip: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, strip])


def contact_sheet(real: list[Sample], out: str | Path, per_row: int = 8, tile: int = 112, seed: int = 0,
                  difficulty: float = 0.5) -> Path:
    """Rows: real ALL, synthetic ALL, real HEM, synthetic HEM (``per_row`` cells each)."""
    rows = []
    rng = np.random.default_rng(seed)
    for label, name in ((1, "ALL (blast)"), (0, "HEM (normal)")):
        picks = [s for s in real if s.label == label][:per_row]
        if not picks:
            raise DataError(f"no real {name} images for the contact sheet")
        rows.append(_label(_row([load_image(s.path) for s in picks], tile), f"real {name}"))
        synth = [synth_cell(rng, label, 450, difficulty) for _ in range(per_row)]
        rows.append(_label(_row(synth, tile), f"synthetic {name}, difficulty {difficulty}"))
    width = max(r.shape[1] for r in rows)
    sheet = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out
