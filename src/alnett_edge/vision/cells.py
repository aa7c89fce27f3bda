"""From a detection to a model input: the crop builder (the C-NMC look) and the quality gate."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from alnett_edge.metrics import DEFAULT_MIN_CONFIDENCE
from alnett_edge.vision.detector import SMUDGE, Detection
from alnett_edge.vision.optics import disk
from alnett_edge.vision.record import SMUDGE_REASON


@dataclass(frozen=True)
class QualityConfig:
    # variance of the Laplacian inside the cell mask (gray); lower = blurred. Calibrated on the BCCD frames
    # (640x480): in-focus cells p1 6.2, the same cells blurred by a sigma-2 Gaussian p95 3.2. Depends on the
    # optics and resolution: set it for your microscope.
    min_sharpness: float = 4.5  # the least sharpness (variance of the Laplacian, the work scale) a crop must have to be classified
    allow_border: bool = False  # cells cut by the frame border are abstained
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # top class probability (0.6); lower = abstain
    # a crop farther from the training cells' look than the card allows (card.appearance): "abstain"
    # (not classified: "out of distribution"), "record" (classified; its distance is recorded), "off".
    # "abstain" by default: a model shown a stain or optics it never saw gives confident calls that mean
    # nothing (a C-NMC-trained card puts every BCCD and smartphone crop beyond its limit)
    out_of_distribution: str = "abstain"  # abstain / record / off: what is done with a cell unlike the training cells (card.appearance)


#: the outermost band of a field cell's mask, where the optics blur its edge into the bright plasma
#: around it. C-NMC's segmented cells end sharply on black, so the crop builder leaves this band out.
#: Measured on synthetic smears (0.087 µm/px, a bundle trained on synthetic cells, 86 cells): with the
#: band, 22 of 45 blasts' crops were beyond the card's appearance limit (a pale rim: the green
#: channel's skewness); without it 4 of 45, and hem 4 of 41 either way. 0 px where a pixel is wider.
EDGE_TRIM_UM = 0.3


def crop_scale(canvas_um: float, um_per_px: float) -> tuple[float, int]:
    """(``canvas_px``, ``trim_px``) of :func:`cell_image` at this pixel size: the card's canvas and the
    blurred edge band (:data:`EDGE_TRIM_UM`) in the frame's pixels."""
    return canvas_um / um_per_px, int(round(EDGE_TRIM_UM / um_per_px))


def cell_image(frame_rgb: np.ndarray, det: Detection, canvas_px: float = 0.0, trim_px: int = 0) -> np.ndarray:
    """The C-NMC look: the segmented cell on black, centred on its mask, on a square canvas. With
    ``canvas_px`` (the card's ``canvas_um`` in this frame's pixels) the canvas has that side, so the cell
    reaches the model at the physical scale of the training cells (scale-true; a cell larger than the
    canvas is cut, and :func:`quality_reason` abstains it); without it the canvas hugs the cell (zoom to
    fit, for cards that do not know their scale). ``trim_px``: the mask's outer band left out (its
    blurred edge, :func:`crop_scale`). Returns uint8 RGB; the model input is
    ``preprocess(cell_image(...), card.input)``, the one function training, predict and the gate use."""
    x0, y0, x1, y1 = det.box
    crop = frame_rgb[y0:y1, x0:x1]
    mask = cv2.erode(det.mask, disk(2 * trim_px + 1)) if trim_px > 0 else det.mask
    cell = np.where(mask[..., None] > 0, crop, 0).astype(np.uint8)
    ys, xs = np.nonzero(det.mask)
    if len(xs):
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        half = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 4
        side = int(round(canvas_px)) if canvas_px >= 8 else int(np.ceil(2 * half))
        canvas = np.zeros((side, side, 3), np.uint8)
        sx0, sy0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        src = cell[max(0, sy0) : sy0 + side, max(0, sx0) : sx0 + side]
        canvas[max(0, -sy0) : max(0, -sy0) + src.shape[0], max(0, -sx0) : max(0, -sx0) + src.shape[1]] = src
        cell = canvas
    return cell


def fits_canvas(det: Detection, canvas_px: float) -> bool:
    """The cell's mask fits the scale-true canvas (always true without one)."""
    if canvas_px < 8:
        return True
    ys, xs = np.nonzero(det.mask)
    return not len(xs) or max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= canvas_px


def sharpness(frame_rgb: np.ndarray, det: Detection) -> float:
    x0, y0, x1, y1 = det.box
    gray = cv2.cvtColor(frame_rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(gray, cv2.CV_64F)
    inside = det.mask > 0
    return float(lap[inside].var()) if inside.any() else 0.0


def gate(frame_rgb: np.ndarray, det: Detection, cfg: QualityConfig, canvas_px: float = 0.0) -> tuple[str | None, float]:
    """(why this cell must not be classified or None, its sharpness; 0 when a cut or oversized cell
    was not measured). Nucleus size is the detector's (µm² bounds). A smudge cell is never classified."""
    if det.kind == SMUDGE:
        return SMUDGE_REASON, 0.0
    if det.touches_border and not cfg.allow_border:
        return "cut by frame or field edge", 0.0
    if not fits_canvas(det, canvas_px):
        return "larger than the model's field", 0.0
    sharp = sharpness(frame_rgb, det)
    return ("blurred" if sharp < cfg.min_sharpness else None), sharp


def quality_reason(frame_rgb: np.ndarray, det: Detection, cfg: QualityConfig, canvas_px: float = 0.0) -> str | None:
    """Why this cell must not be classified, or None (:func:`gate` without the sharpness)."""
    return gate(frame_rgb, det, cfg, canvas_px)[0]


def context_jpeg(rgb: np.ndarray, box: tuple[int, int, int, int], half_side: int, max_side: int = 0,
                 quality: int = 85) -> bytes | None:
    """The frame around a cell for a person (the label view, the device page's gallery): a square of
    ``2 * half_side`` pixels centred on the box, cut at the frame's edges, the box drawn, shrunk to
    ``max_side`` (0: as it is); JPEG bytes, or None when it cannot be encoded."""
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) // 2, (y0 + y1) // 2, max(1, int(half_side))
    h, w = rgb.shape[:2]
    a, b = max(0, cx - half), max(0, cy - half)
    view = np.ascontiguousarray(rgb[b:min(h, cy + half), a:min(w, cx + half)])
    cv2.rectangle(view, (x0 - a, y0 - b), (x1 - a - 1, y1 - b - 1), (255, 214, 0), max(1, half // 60))
    f = min(1.0, max_side / max(view.shape[:2])) if max_side else 1.0
    if f < 1:
        view = cv2.resize(view, (round(view.shape[1] * f), round(view.shape[0] * f)), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpg.tobytes() if ok else None
