"""Classical white-cell detector for stained (Giemsa / Wright) smears: no training data needed.

White-cell nuclei are the only strongly blue-violet structures in such a field, so the nucleus score
is ``B - G`` (red cells are pink: B ≈ G; measured on BCCD, nucleus pixels p90 ≈ 96 vs background
p99.9 ≈ 55). Steps: score -> threshold (Otsu, floored at ``min_score``) -> closing (joins the lobes of
a neutrophil nucleus) -> hole filling -> opening (drops specks) -> connected components; a component
much larger than one nucleus is split by a distance-transform watershed; size and shape filters drop
platelets (small) and debris (elongated). Each nucleus gives a cell box (the nucleus box grown by
``cell_scale``, clipped to the frame) and a cell mask (the nucleus plus the stained cytoplasm around
it), which the crop builder uses for the C-NMC look.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class DetectorConfig:
    min_score: float = 50.0  # floor for the B-G threshold (0..255 scale)
    close_px: int = 15  # closing kernel: joins nucleus lobes
    open_px: int = 5
    min_area_frac: float = 0.004  # of the frame: smaller components are platelets / specks
    max_area_frac: float = 0.25
    max_aspect: float = 3.5
    split_area_frac: float = 0.06  # components larger than this are split by watershed
    cell_scale: float = 1.4  # cell box side / nucleus box side
    min_cell_frac: float = 0.25  # smallest cell box side, as a fraction of the frame height
    work_width: int = 320  # detection runs on a frame downscaled to this width (speed); boxes are rescaled


@dataclass
class Detection:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)
    mask: np.ndarray = field(repr=False)  # uint8 0/255, the cell mask inside ``box`` (box-sized)
    nucleus_area: int = 0
    score: float = 0.0  # mean B-G of the nucleus
    touches_border: bool = False  # the cell mask reaches the frame edge (cut off)


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    b = rgb[..., 2].astype(np.int16)
    g = rgb[..., 1].astype(np.int16)
    return np.clip(b - g, 0, 255).astype(np.uint8)


def _disk(px: int) -> np.ndarray:
    px = max(1, int(px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (px, px))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out


def _split(component: np.ndarray, scale: float) -> list[np.ndarray]:
    """Split a blob of touching nuclei with a distance-transform watershed; one mask per nucleus."""
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    peaks = (dist > 0.6 * dist.max()).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n <= 2:
        return [component]
    markers = markers + 1
    markers[component == 0] = 0
    unknown = (component > 0) & (peaks == 0)
    markers[unknown] = 0
    rgb = cv2.cvtColor(component, cv2.COLOR_GRAY2BGR)
    cv2.watershed(rgb, markers)
    return [((markers == k) * 255).astype(np.uint8) for k in range(2, n + 1) if (markers == k).any()]


class CellDetector:
    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        cfg = self.config
        h, w = rgb.shape[:2]
        s = min(1.0, cfg.work_width / w)
        small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
        sh, sw = small.shape[:2]
        score = cv2.GaussianBlur(nucleus_score(small), (5, 5), 0)
        otsu, _ = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        _, mask = cv2.threshold(score, max(otsu, cfg.min_score), 255, cv2.THRESH_BINARY)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(cfg.close_px * s))
        mask = _fill_holes(mask)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(cfg.open_px * s))
        area_px = sh * sw
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        nuclei: list[np.ndarray] = []
        for k in range(1, n):
            area = stats[k, cv2.CC_STAT_AREA]
            if area < cfg.min_area_frac * area_px:
                continue
            comp = ((labels == k) * 255).astype(np.uint8)
            nuclei.extend(_split(comp, s) if area > cfg.split_area_frac * area_px else [comp])
        out = []
        for nuc in nuclei:
            x, y, bw, bh = cv2.boundingRect(nuc)
            area = int(cv2.countNonZero(nuc))
            if not cfg.min_area_frac * area_px <= area <= cfg.max_area_frac * area_px:
                continue
            if max(bw, bh) / max(1, min(bw, bh)) > cfg.max_aspect:
                continue
            out.append(self._cell(rgb, nuc, (x, y, bw, bh), s, score))
        return out

    def _cell(self, rgb: np.ndarray, nuc_small: np.ndarray, rect: tuple[int, int, int, int], s: float,
              score: np.ndarray) -> Detection:
        cfg = self.config
        h, w = rgb.shape[:2]
        x, y, bw, bh = (v / s for v in rect)
        cx, cy = x + bw / 2, y + bh / 2
        side = max(max(bw, bh) * cfg.cell_scale, cfg.min_cell_frac * h)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        x1, y1 = int(round(cx + side / 2)), int(round(cy + side / 2))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        nuc = cv2.resize(nuc_small, (w, h), interpolation=cv2.INTER_NEAREST)[y0:y1, x0:x1] if s < 1 else nuc_small[y0:y1, x0:x1]
        mask = cell_mask(rgb[y0:y1, x0:x1], nuc)
        # cut by the border: the cell itself (not its box) reaches the edge of the frame
        touches = bool((x0 == 0 and mask[:, 0].any()) or (y0 == 0 and mask[0].any()) or
                       (x1 == w and mask[:, -1].any()) or (y1 == h and mask[-1].any()))
        return Detection((x0, y0, x1, y1), mask, int(cv2.countNonZero(nuc)),
                         float(score[nuc_small > 0].mean()) if (nuc_small > 0).any() else 0.0, touches)


def cell_mask(crop: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """The nucleus plus the cytoplasm around it: pixels darker or bluer than the background plasma,
    connected to the nucleus, within a disk around it."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    bg = float(np.percentile(gray, 90))
    bluish = nucleus_score(crop) > 12
    darker = gray < bg - 18
    near = cv2.dilate(nucleus, _disk(max(3, int(0.35 * max(crop.shape[:2])))))
    mask = (((bluish | darker) & (near > 0)) | (nucleus > 0)).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(7))
    mask = _fill_holes(cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(3)))
    n, labels = cv2.connectedComponents(mask)
    if n > 2:  # keep the component holding the nucleus
        keep = np.bincount(labels[nucleus > 0].ravel(), minlength=n)
        keep[0] = 0
        mask = ((labels == int(keep.argmax())) * 255).astype(np.uint8)
    return mask
