"""The physical scale of training cells: how many µm the model's input canvas spans.

C-NMC-style data keeps each cell's physical size on its canvas (a blast is larger than a normal
lymphocyte on the same 450x450 canvas), and the model learns from that. To put a cell cropped from
a camera frame at the same scale, the card records the canvas side in µm (``InputSpec.canvas_um``).

Measured, when the user does not give it, from the training cells: the median equivalent diameter of
the normal (``hem``) cells in input pixels is taken as :data:`HEM_CELL_UM` µm, the diameter of a small
lymphocyte (7-10 µm). For C-NMC this is a stated assumption, not a calibration: the challenge does not
publish its pixel size. On ``../shared/data/cnmc-sample`` the hem cells' median is 189 px of 450 (the
blasts' 221 px), so the 450-px canvas spans ~21 µm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alnett_edge.errors import DataError

#: diameter in µm taken for the median normal (hem) training cell
HEM_CELL_UM = 9.0


def cell_diameters_px(images: np.ndarray, threshold: int = 10) -> np.ndarray:
    """Equivalent diameter (px) of each image's foreground (brightest channel > threshold)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected N x H x W x 3 cell images, got shape {images.shape}")
    area = (images.max(axis=3) > threshold).reshape(len(images), -1).sum(axis=1)
    return 2.0 * np.sqrt(area / np.pi)


def measure_canvas_um(images: np.ndarray, labels: np.ndarray, reference_class: int, threshold: int = 10,
                      reference_um: float = HEM_CELL_UM) -> dict[str, Any]:
    """The input canvas side in µm from prepared training cells (see the module doc)."""
    labels = np.asarray(labels)
    diam = cell_diameters_px(images, threshold)
    ref = diam[(labels == reference_class) & (diam > 2)]
    if len(ref) < 3:
        raise DataError(f"only {len(ref)} reference-class training cells to measure the cell scale from; "
                        "give it instead (--canvas-um)")
    median = float(np.median(ref))
    side = images.shape[2]
    return {"canvas_um": round(side * reference_um / median, 3), "reference_class": int(reference_class),
            "reference_median_px": round(median, 2), "reference_um": reference_um, "cells": int(len(ref)),
            "input_px": int(side),
            "method": f"median equivalent diameter of the reference-class training cells taken as {reference_um:g} µm"}
