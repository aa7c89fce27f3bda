"""Classical white-cell detector for stained (Giemsa / Wright / May-Grünwald) smears, in physical
units: no training data needed, and no size written as a fraction of a frame.

White-cell nuclei are the most blue-violet structures of such a field: the nucleus score is ``B - G``
(red cells are pink or lilac: B ≈ G or a little above). Every size below is in µm or µm²; the
detector turns them into pixels with the frame's pixel size (``um_per_px``, from the ``[optics]``
config or estimated from the frames, see :mod:`alnett_edge.vision.optics`).

Steps, on the frame resampled to ``work_um_per_px`` (detection costs the same for a 640x480 and a
2592x1944 camera of the same field): field-of-view mask (an eyepiece camera's black vignette is not
specimen) -> score -> threshold relative to the field (``min_contrast`` above its median, floored at
``min_score``) -> closing (joins the lobes of a neutrophil nucleus) -> hole filling -> opening ->
connected components. A pale stain (a weaker Giemsa, a camera's lower saturation) lowers every B-G
value, and a bluish field (lilac red cells, a camera's hue) raises the median under the nuclei, so a
field in which no whole cell is found (none, or only cells cut by its edge), and whose brightest violet
(the score's 99.5th percentile) is below ``stain_ref`` or stands less than ``contrast_ref`` above the
field's median, is looked at once more with both thresholds divided by the larger of ``stain_ref`` /
that percentile and ``contrast_ref`` / its height above the median, at most ``max_gain``; the tests
that follow are relative to the field and need no change. Only fields without a whole cell get the
second look, so a field whose cells are found is untouched.
A component is a nucleus when it is large enough (``min_nucleus_um2``), stands out of the field (its
score is ``contrast_ratio`` times the field's own spread above the median:
heavily stained red cells of one slide do not), is solid (platelet clumps are not) and not elongated.
A small nucleus (a small lymphocyte's, below ``small_nucleus_um2``) has a thin rim of cytoplasm: when
its cell mask is more than ``max_cell_to_nucleus`` times its area, the violet speck is a platelet clump
lying on red cells (the mask spreads into them), not a white cell.
A component larger than ``split_nucleus_um2`` (touching or overlapping cells) is split where its
distance map falls apart into cores lying at least ``split_min_depth`` expected nucleus radii inside
it (see :func:`split_touching`). Each nucleus gives a cell box (the nucleus box grown by ``cell_scale``, at
least ``min_cell_um``) and a cell mask (the nucleus plus the stained cytoplasm around it, kept to the
pixels nearer its nucleus than any other found in the frame, so it stops where a touching cell begins).

Defaults were tuned on BCCD (640x480, C-mount camera) and on the ``train/`` frames of wbc-smartphone
(416x416, a smartphone on the eyepiece); ``alnett-edge field-eval`` reports both (docs/daemon.md). The
second look (``stain_ref``, ``max_gain``) was tuned on those and on recoloured all-fields fields
(docs/engineering: the detector under colour shifts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from alnett_edge.errors import ConfigError
from alnett_edge.vision.centres import Centre, CentreFinder
from alnett_edge.vision.optics import area_shrink, dilate_disk, disk, fov_mask, histogram_percentiles, percentile_u8

#: the cell mask is computed on the cell's box at most this many pixels on a side, then scaled back
MASK_SIDE = 160


@dataclass(frozen=True)
class DetectorConfig:
    min_score: float = 50.0  # floor of the B-G threshold (0..255)
    min_contrast: float = 55.0  # threshold = field median of B-G + this
    contrast_ratio: float = 1.8  # a nucleus's mean score above the median, in units of the field's p90 - median
    close_um: float = 1.5  # closing: joins nucleus lobes
    open_um: float = 0.75  # opening: drops specks
    min_nucleus_um2: float = 30.0  # smaller: platelets, specks, a lone lobe
    max_nucleus_um2: float = 450.0  # larger: not one nucleus (a clump, a smudge)
    split_nucleus_um2: float = 150.0  # larger components are touching nuclei: split
    nucleus_radius_um: float = 3.5  # expected radius of one nucleus (seeds of the split)
    split_min_depth: float = 0.7  # a seed of the split lies this many nucleus radii inside the blob (lobes do not)
    min_solidity: float = 0.7  # area / convex hull area; platelet clumps and smudges are lower
    max_aspect: float = 3.5  # longest side / shortest side of a nucleus at most
    cell_scale: float = 1.3  # cell box side / nucleus box side
    min_cell_um: float = 10.0  # smallest cell box side
    small_nucleus_um2: float = 40.0  # a nucleus this small (a small lymphocyte's) has a thin cytoplasm:
    max_cell_to_nucleus: float = 2.4  # a "cell" more than this many times its area is a platelet clump on red cells
    work_um_per_px: float = 0.5  # detection resolution; a coarser camera is used as it is
    stain_ref: float = 160.0  # a field with no whole cell whose p99.5 of B-G is below this: a second look (0: never)
    contrast_ref: float = 145.0  # ... or whose p99.5 stands less than this above its median (a bluish field)
    max_gain: float = 1.6  # the second look's thresholds are divided by those ratios (the larger), at most this
    smudge_contrast: float = 0.4  # smudge cells: patches above median + min_contrast x this (0: never looked for)
    smudge_min_um2: float = 40.0  # ... at least this large, holding no nucleus found
    smudge_min_pink: float = 10.0  # ... whose mean R - G exceeds the field's cells' median R - G by this much
    smudge_max_core: float = 0.25  # ... with at most this share of its area at a nucleus's stain (else missed nuclei)
    smudge_max_field_pink: float = 5.0  # ... in a field whose cells' median R - G is below this (grey red cells)
    centres: str = ""  # a learned nucleus-centre detector seeds the nuclei: "builtin" or a model file ("": rule-based)
    centre_threshold: float = 0.0  # its heat map's peak threshold (0: the model card's)

    def validate(self) -> None:
        if self.cell_scale <= 0 or self.work_um_per_px <= 0 or self.min_nucleus_um2 <= 0:
            raise ConfigError("[detector] cell_scale, work_um_per_px and min_nucleus_um2 must be > 0")
        if not self.nucleus_radius_um > 0 or not self.split_min_depth > 0:
            raise ConfigError("[detector] nucleus_radius_um and split_min_depth must be > 0")
        if self.max_nucleus_um2 <= self.min_nucleus_um2:
            raise ConfigError("[detector] max_nucleus_um2 must be larger than min_nucleus_um2")
        if not self.stain_ref >= 0 or not self.contrast_ref >= 0 or not self.max_gain >= 1:
            raise ConfigError("[detector] stain_ref and contrast_ref must be >= 0 (stain_ref 0: no second look) "
                              "and max_gain >= 1")
        if not self.smudge_contrast >= 0 or not self.smudge_min_um2 > 0 or not 0 <= self.smudge_max_core <= 1 or \
                not np.isfinite([self.smudge_min_pink, self.smudge_max_field_pink]).all():
            raise ConfigError("[detector] smudge_contrast must be >= 0 (0: no smudge cells), smudge_min_um2 > 0, "
                              "smudge_max_core in [0, 1] and smudge_min_pink, smudge_max_field_pink numbers")
        if not isinstance(self.centres, str) or not 0 <= self.centre_threshold < 1:
            raise ConfigError("[detector] centres must be a model file or \"builtin\" (\"\": rule-based) and "
                              "centre_threshold in [0, 1) (0: the model card's)")
        if self.max_cell_to_nucleus <= 1 or self.small_nucleus_um2 < 0:
            raise ConfigError("[detector] max_cell_to_nucleus must be > 1 (a cell holds its nucleus) and "
                              "small_nucleus_um2 >= 0 (0: no platelet-clump check)")


@dataclass
class Detection:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)
    mask: np.ndarray = field(repr=False)  # uint8 0/255, the cell mask inside ``box`` (box-sized)
    nucleus_area: int = 0  # frame pixels
    score: float = 0.0  # mean B-G of the nucleus
    touches_border: bool = False  # the cell reaches the frame edge or the edge of the field of view
    nucleus_um2: float = 0.0
    edge_weight: float = 1.0  # 1 / P(a cell this size lies wholly inside the field): see field_weights
    centre: tuple[float, float] | None = None  # the nucleus's centre in frame pixels (what tracking follows)
    kind: str = "cell"  # "cell", or SMUDGE: a smudge cell (counted apart, never classified)


#: the kind of a smudge cell's detection (a broken cell: a pale, spread-out patch of chromatin)
SMUDGE = "smudge"


#: no nucleus is looked for this close to the edge of an eyepiece's field of view (its rim shows
#: colour fringes and a cell there is cut anyway)
FOV_MARGIN_UM = 3.0
#: the field of view's erosion (edge weights) is measured on a copy at most this many pixels on a side
WEIGHT_SIDE = 160
#: largest edge-correction weight (a cell nearly as large as the field would otherwise count without bound)
MAX_EDGE_WEIGHT = 10.0


def field_weights(fov: np.ndarray) -> np.ndarray:
    """Edge correction (Miles-Lantuéjoul) for counting cells of different sizes in a bounded field.
    A cell of diameter d is classified only when it lies wholly inside the field (cells cut by the
    frame or field edge are abstained), so large cells (blasts) are seen whole less often than small
    ones. Weighting each whole cell by (field area) / (area of the field eroded by d/2) undoes that
    size bias for cells spread evenly over the slide. Returns ``out[r]`` = that weight for a cell of
    radius ``r`` pixels of ``fov``'s scale (the frame border counts as the field's edge)."""
    h, w = fov.shape
    if cv2.countNonZero(fov) == fov.size:  # the whole frame: the rectangle's erosion in closed form
        r = np.arange((min(h, w) + 1) // 2, dtype=np.float64)
        return np.minimum(MAX_EDGE_WEIGHT, h * w / np.maximum((w - 2 * r) * (h - 2 * r), 1))
    f = min(1.0, WEIGHT_SIDE / max(h, w))  # the field is a large shape: its erosion is measured on a small copy
    small = cv2.resize(fov, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST) \
        if f < 1 else fov
    dist = cv2.distanceTransform(cv2.copyMakeBorder(small, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                 cv2.DIST_L2, 5)[1:-1, 1:-1] - 0.5
    hist = np.bincount(np.maximum(dist[small > 0], 0).astype(np.int32).ravel())
    if not len(hist):
        return np.ones(1)
    inside = np.cumsum(hist[::-1])[::-1]  # inside[r]: field pixels at least r from its edge
    weights = np.minimum(MAX_EDGE_WEIGHT, inside[0] / np.maximum(inside, 1))
    r = np.arange(int(np.ceil(len(weights) / f)))
    return np.interp(r * f, np.arange(len(weights)), weights, right=MAX_EDGE_WEIGHT)


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    b = rgb[..., 2].astype(np.int16)
    g = rgb[..., 1].astype(np.int16)
    return np.clip(b - g, 0, 255).astype(np.uint8)


def mask_holds(det: Detection, x: float, y: float) -> bool:
    """Frame point (x, y) lies on ``det``'s mask."""
    x0, y0, x1, y1 = det.box
    return x0 <= x < x1 and y0 <= y < y1 and bool(det.mask[int(y) - y0, int(x) - x0])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out


def nearest_seed(seeds: np.ndarray) -> np.ndarray:
    """Each pixel's nearest seed: ``seeds`` numbers seed pixels 1, 2, ... (0 elsewhere); returns that
    numbering spread over the whole image (a Voronoi partition by the seeds' nearest pixels)."""
    # DIST_LABEL_PIXEL numbers every seed pixel on its own; a lookup turns those numbers into the seeds'
    _, nearest = cv2.distanceTransformWithLabels(np.where(seeds > 0, 0, 255).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(nearest.max()) + 1, np.int32)
    lut[nearest[seeds > 0]] = seeds[seeds > 0]
    return lut[nearest]


#: depths (multiples of the expected nucleus radius) at which a blob's distance map is cut into cores
SPLIT_LEVELS = tuple(round(0.4 + 0.1 * k, 1) for k in range(22))  # 0.4 .. 2.5


def split_touching(component: np.ndarray, radius_px: float, min_depth: float = 0.7) -> list[np.ndarray]:
    """Split a blob of touching or overlapping nuclei into one mask per nucleus. The blob's distance map
    (each pixel's distance to the blob's edge) is cut at increasing depths: a core that falls apart at a
    deeper cut into parts whose deepest points each lie at least ``min_depth`` expected radii from the
    edge is replaced by them (a neutrophil's lobe or a notch's corner is shallower, so the lobes of one
    nucleus never count as two; a small cell's core stays once deeper cuts have left it). Every pixel
    of the blob then goes to its nearest core."""
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    floor = min_depth * radius_px
    reach = dist >= floor
    cores = np.zeros(component.shape, np.int32)  # the cores numbered 1..m in their order (0: none yet)
    m = 0
    for level in SPLIT_LEVELS:
        if level * radius_px >= dist.max():
            break
        n, labels = cv2.connectedComponents((dist >= level * radius_px).astype(np.uint8), ltype=cv2.CV_32S)
        deep = np.bincount(labels[reach], minlength=n) > 0  # parts reaching the floor
        deep[0] = False
        if not m:
            numbers = np.cumsum(deep)  # the deep parts numbered in the order of their labels
            cores, m = np.where(deep[labels], numbers[labels], 0).astype(np.int32), int(numbers[-1])
            continue
        if np.count_nonzero(deep) < 2:  # no core can fall apart into two deep parts
            continue
        # meets[core, part]: the core holds pixels of that deep part
        at = (cores > 0) & deep[labels]
        meets = (np.bincount(cores[at] * n + labels[at], minlength=(m + 1) * n) > 0).reshape(m + 1, n)
        per_core = meets.sum(axis=1)
        if not (per_core > 1).any():
            continue
        nxt, k = np.zeros_like(cores), 0
        for core in range(1, m + 1):  # a core falling apart into deep parts is replaced by them, in place
            if per_core[core] > 1:
                for part in np.flatnonzero(meets[core]):
                    k += 1
                    nxt[labels == part] = k
            else:
                k += 1
                nxt[cores == core] = k
        cores, m = nxt, k
    if m < 2:
        return [component]
    owner = nearest_seed(cores)
    parts = [((owner == k) & (component > 0)).astype(np.uint8) * 255 for k in range(1, m + 1)]
    return [p for p in parts if p.any()] or [component]


class CellDetector:
    def __init__(self, config: DetectorConfig | None = None, um_per_px: float = 0.0) -> None:
        self.config = config or DetectorConfig()
        self.config.validate()
        if not um_per_px > 0:
            raise ConfigError("the detector needs the pixel size (um_per_px > 0): set [optics] or calibrate")
        self.um_per_px = float(um_per_px)
        self.smudge_frames = 0  # frames in which smudge cells were looked for (their cells not pink: _smudges)
        self._looked = False
        self.finder = CentreFinder(self.config.centres, self.config.centre_threshold) if self.config.centres else None

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """The cells of one frame (and its smudge cells, kind SMUDGE)."""
        self._looked = False
        try:
            return self._detect_frame(rgb)
        finally:
            self.smudge_frames += self._looked

    def _detect_frame(self, rgb: np.ndarray) -> list[Detection]:
        cfg = self.config
        h, w = rgb.shape[:2]
        s = min(1.0, self.um_per_px / cfg.work_um_per_px)  # frame -> work scale
        um = self.um_per_px / s  # µm per work pixel
        small = area_shrink(rgb, (max(1, round(w * s)), max(1, round(h * s)))) if s < 1 else rgb
        fov = fov_mask(small)
        score = cv2.GaussianBlur(nucleus_score(small), (0, 0), max(0.5, 0.6 / um))
        if not cv2.countNonZero(fov):
            return []
        median, top = histogram_percentiles(score, fov, (50, 99.5))
        centres = self.finder.find(rgb, self.um_per_px) if self.finder is not None else None
        found = self._detect(rgb, small, s, um, fov, score, median, 1.0, centres)
        gain = min(cfg.max_gain, max(cfg.stain_ref / max(top, 1.0), cfg.contrast_ref / max(top - median, 1.0))) \
            if cfg.stain_ref > 0 else 1.0
        if gain <= 1.0 or any(d.kind != SMUDGE and not d.touches_border for d in found):
            return found
        return self._detect(rgb, small, s, um, fov, score, median, gain, centres)  # a faint stain: a second look

    def _detect(self, rgb: np.ndarray, small: np.ndarray, s: float, um: float, fov: np.ndarray, score: np.ndarray,
                median: float, gain: float, centres: list[Centre] | None = None) -> list[Detection]:
        """The cells of one frame at one threshold (the absolute ones divided by ``gain``), then its smudge
        cells (``small``: the frame at work scale). ``centres``: a learned detector's cells, which
        become the nuclei (:meth:`_seeded`) in place of the threshold's components and their split."""
        cfg = self.config
        inner = fov
        if FOV_MARGIN_UM > 0 and (fov == 0).any():  # the rim of an eyepiece's field: colour fringes, not nuclei
            k = disk(2 * FOV_MARGIN_UM / um)
            inner = cv2.erode(cv2.copyMakeBorder(fov, k.shape[0], k.shape[0], k.shape[1], k.shape[1],
                                                 cv2.BORDER_CONSTANT, value=255), k)[k.shape[0]:-k.shape[0],
                                                                                     k.shape[1]:-k.shape[1]]
        _, mask = cv2.threshold(score, max(cfg.min_score / gain, median + cfg.min_contrast / gain), 255,
                                cv2.THRESH_BINARY)
        mask[inner == 0] = 0
        # the field's own stain level: the score's p90 away from large violet objects (nuclei and the
        # cytoplasm around them), so a field crowded with white cells does not raise the bar
        big = cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(2 * np.sqrt(cfg.min_nucleus_um2 / np.pi) / um))
        away = cv2.bitwise_and(fov, cv2.bitwise_not(cv2.dilate(big, disk(2 * cfg.nucleus_radius_um / um))))
        stain_area = away if cv2.countNonZero(away) > 0.2 * cv2.countNonZero(fov) else fov
        (p90,) = histogram_percentiles(score, stain_area, (90,))
        mask = self._clean(mask, um)
        px_um2 = um * um
        # (mask in its ROI, x, y, the cell's centre in frame pixels when a learned detector gave it)
        nuclei: list[tuple[np.ndarray, int, int, tuple[float, float] | None]] = []
        faint: set[int] = set()  # learned centres (numbered as ``nuclei``, from 1) with less than a nucleus's stain
        if centres is not None:  # a learned detector's cells are the nuclei
            nuclei, faint = self._seeded(centres, mask, inner, s, um)
        else:
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
            spread = max(1.0, p90 - median)
            for k in range(1, n):
                area = stats[k, cv2.CC_STAT_AREA] * px_um2
                if area < cfg.min_nucleus_um2:
                    continue  # a speck
                x, y, bw, bh = (int(v) for v in stats[k, :4])
                on = labels[y : y + bh, x : x + bw] == k
                if (score[y : y + bh, x : x + bw][on].mean() - median) / spread < cfg.contrast_ratio:
                    continue  # no more violet than the field's own stained red cells
                roi = on.astype(np.uint8) * 255
                parts = split_touching(roi, cfg.nucleus_radius_um / um, cfg.split_min_depth) \
                    if area > cfg.split_nucleus_um2 else [roi]
                nuclei.extend((p, x, y, None) for p in parts)
        out: list[Detection] = []
        if not nuclei:
            return out
        # the nuclei numbered: a cell's mask keeps to the pixels nearer its nucleus than any other (_cell)
        seeds = np.zeros(score.shape, np.int32)
        for i, (roi, x, y, _) in enumerate(nuclei, 1):
            seeds[y : y + roi.shape[0], x : x + roi.shape[1]][roi > 0] = i
        fov_edge = cv2.erode(fov, disk(3)) if (fov == 0).any() else None
        weights = field_weights(fov)
        kept: list[int] = []  # the nuclei of the cells found
        for i, (roi, x, y, at) in enumerate(nuclei, 1):
            area = int(cv2.countNonZero(roi))
            rx, ry, bw, bh = cv2.boundingRect(roi)
            if centres is None:  # the rule-based nuclei's tests (a learned centre is a cell already)
                if not cfg.min_nucleus_um2 <= area * px_um2 <= cfg.max_nucleus_um2 or \
                        max(bw, bh) / max(1, min(bw, bh)) > cfg.max_aspect:
                    continue
                contours, _ = cv2.findContours(roi, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
                if area / max(hull, 1.0) < cfg.min_solidity:
                    continue
            nuc_small = np.zeros(score.shape, np.uint8)
            nuc_small[y : y + roi.shape[0], x : x + roi.shape[1]] = roi
            cell = self._cell(rgb, nuc_small, (x + rx, y + ry, bw, bh), s, um, score, fov_edge, area * px_um2,
                              (seeds, i), at)
            if centres is None and cell.nucleus_um2 < cfg.small_nucleus_um2 and \
                    cv2.countNonZero(cell.mask) * self.um_per_px ** 2 > cfg.max_cell_to_nucleus * cell.nucleus_um2:
                continue
            _, _, mw, mh = cv2.boundingRect(cell.mask)  # the cell's radius at work scale -> its weight
            r = int(max(mw, mh) * s / 2)
            cell.edge_weight = float(weights[r]) if r < len(weights) else MAX_EDGE_WEIGHT
            out.append(cell)
            kept.append(i)
        if all(c.touches_border for c in out):  # no whole nucleus to compare with: a pale one and a smudge look alike
            return out
        # a faint learned centre may be a smudge cell the network took for a cell: its pixels are left to the
        # smudge look, and the cell is dropped where that look finds a smudge cell under its centre
        solid = [(i, c) for i, c in zip(kept, out) if i not in faint]
        smudges = self._smudges(rgb.shape[:2], small, s, um, score, inner, median, gain, mask,
                                np.isin(seeds, [i for i, _ in solid]),
                                float(np.median([c.score for _, c in solid] or [c.score for c in out])))
        if faint and smudges:
            out = [c for i, c in zip(kept, out) if i not in faint or not any(mask_holds(d, *c.centre) for d in smudges)]
        return out + smudges

    def _seeded(self, centres: list[Centre], mask: np.ndarray, inner: np.ndarray, s: float, um: float
                ) -> tuple[list[tuple[np.ndarray, int, int, tuple[float, float] | None]], set[int]]:
        """One nucleus per learned centre, at work scale, as (mask in its ROI, x, y, the centre): the threshold's
        nucleus pixels (``mask``) within the cell's half size of its centre and nearer it than any other
        centre (so a touching cluster's blob is shared out), or, where the threshold saw too little of it
        (a pale nucleus), the pixels within a third of the cell's size of it; its largest part, inside the
        field. With them, the numbers (from 1) of the faint ones: less of the threshold's pixels than the
        smallest nucleus (``min_nucleus_um2``), which :meth:`_detect` lets the smudge look have."""
        cfg = self.config
        h, w = mask.shape
        pts = [(c, c.x * s, c.y * s) for c in centres]
        pts = [(c, x, y) for c, x, y in pts if 0 <= x < w and 0 <= y < h and inner[int(y), int(x)]]
        if not pts:
            return [], set()
        seeds = np.zeros(mask.shape, np.int32)
        for i, (_, x, y) in enumerate(pts, 1):
            cv2.circle(seeds, (int(x), int(y)), max(1, round(0.5 / um)), i, -1)
        owner = nearest_seed(seeds)
        least = 0.5 * cfg.min_nucleus_um2 / (um * um)
        out: list[tuple[np.ndarray, int, int, tuple[float, float] | None]] = []
        faint: set[int] = set()
        for i, (c, x, y) in enumerate(pts, 1):
            r = 0.5 * min(c.w_um, c.h_um) / um
            x0, y0 = max(0, int(x - r)), max(0, int(y - r))
            x1, y1 = min(w, int(np.ceil(x + r)) + 1), min(h, int(np.ceil(y + r)) + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            mine = (owner[y0:y1, x0:x1] == i) & (inner[y0:y1, x0:x1] > 0)
            roi = (mine & (mask[y0:y1, x0:x1] > 0) & (d2 <= r * r)).astype(np.uint8) * 255
            stained = cv2.countNonZero(roi)
            if stained < least:
                roi = (mine & (d2 <= (r / 1.5) ** 2)).astype(np.uint8) * 255
            n, labels, stats, _ = cv2.connectedComponentsWithStats(roi)
            if n < 2:
                continue
            if n > 2:
                roi = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8) * 255
            out.append((roi, x0, y0, (c.x, c.y)))
            if stained < cfg.min_nucleus_um2 / (um * um):  # less stain than the smallest nucleus
                faint.add(len(out))
        return out, faint

    def _clean(self, mask: np.ndarray, um: float) -> np.ndarray:
        """A thresholded score made into objects: closing (a nucleus's lobes joined), holes filled, opening."""
        cfg = self.config
        mask = _fill_holes(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk(cfg.close_um / um)))
        return cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(cfg.open_um / um))

    def _smudges(self, frame_hw: tuple[int, int], small: np.ndarray, s: float, um: float, score: np.ndarray,
                 inner: np.ndarray, median: float, gain: float, nuclear: np.ndarray, cells: np.ndarray,
                 nuclei_level: float) -> list[Detection]:
        """Smudge cells: patches at a lower threshold of the score (``smudge_contrast``) that hold none of
        the nuclei of the cells found (``cells``, a boolean map: a cell's pale cytoplasm or a nucleus's
        halo is not one), are large enough, mostly paler than a nucleus (at most ``smudge_max_core`` of
        their area in ``nuclear``, the nucleus threshold's objects: else a nucleus the split or the
        shape tests dropped; and its mean score below ``nuclei_level``, the median of the nuclei found:
        a field without a whole cell is not looked at) and pinker than the field's cells (mean R - G
        ``smudge_min_pink`` above the median over the pixels darker than the plasma: the chromatin of a
        broken cell against grey-blue red cells). Only in a field whose cells are not pink themselves
        (that median below ``smudge_max_field_pink``): where the red cells are pink or pink-violet
        (BCCD's camera, a smartphone on an eyepiece) colour cannot tell a smudge from them, and none is
        called (docs/engineering/crowded.md)."""
        cfg = self.config
        if not cfg.smudge_contrast > 0:
            return []
        rg = small[..., 0].astype(np.int16) - small[..., 1]
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        (plasma,) = histogram_percentiles(gray, inner, (90,))
        darker = ((gray < plasma - 25) & (inner > 0)).astype(np.uint8)  # the cells, red and white (not the plasma)
        # their median R - G, from a histogram of R - G + 128 (a median of -128..127 exactly)
        (field_rg,) = histogram_percentiles(np.clip(rg + 128, 0, 255).astype(np.uint8), darker, (50,))
        field_rg -= 128
        if not darker.any() or field_rg >= cfg.smudge_max_field_pink:
            return []
        self._looked = True
        _, low = cv2.threshold(score, max(cfg.min_score * cfg.smudge_contrast, median + cfg.min_contrast *
                                          cfg.smudge_contrast) / gain, 255, cv2.THRESH_BINARY)
        low[inner == 0] = 0
        low = self._clean(low, um)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(low)
        if n < 2:
            return []
        taken = np.zeros(n, bool)  # the background, and patches holding a cell's nucleus
        taken[0] = True
        taken[np.unique(labels[cells])] = True
        area = stats[:, cv2.CC_STAT_AREA]
        hh, ww = small.shape[:2]
        out = []
        for k in np.flatnonzero(~taken & (area * um * um >= cfg.smudge_min_um2)):
            x, y, bw, bh = (int(v) for v in stats[k, :4])
            on = labels[y : y + bh, x : x + bw] == k
            if np.count_nonzero(nuclear[y : y + bh, x : x + bw][on]) / area[k] > cfg.smudge_max_core:
                continue
            mean = float(score[y : y + bh, x : x + bw][on].mean())
            if mean >= nuclei_level or rg[y : y + bh, x : x + bw][on].mean() - field_rg < cfg.smudge_min_pink:
                continue
            x0, y0 = int(x / s), int(y / s)
            x1, y1 = min(frame_hw[1], int(np.ceil((x + bw) / s))), min(frame_hw[0], int(np.ceil((y + bh) / s)))
            roi = on.astype(np.uint8) * 255
            mask = cv2.resize(roi, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) if s < 1 else roi
            edge = x == 0 or y == 0 or x + bw >= ww or y + bh >= hh or \
                bool((inner[max(0, y - 1) : y + bh + 1, max(0, x - 1) : x + bw + 1] == 0).any())
            out.append(Detection((x0, y0, x1, y1), mask, int(area[k] / (s * s)), mean, edge,
                                 float(area[k] * um * um), centre=((x0 + x1) / 2, (y0 + y1) / 2), kind=SMUDGE))
        return out

    def _cell(self, rgb: np.ndarray, nuc_small: np.ndarray, rect: tuple[int, int, int, int], s: float, um: float,
              score: np.ndarray, fov_edge: np.ndarray | None, nucleus_um2: float,
              region: tuple[np.ndarray, int] | None = None, at: tuple[float, float] | None = None) -> Detection:
        """One cell from its nucleus (``nuc_small``, work scale); ``region`` = (seeds, k): the frame's
        nuclei numbered at work scale and this one's number; its mask keeps to the pixels of its box
        nearer its nucleus than any other there. None: anywhere. ``at``: the box's centre (frame pixels; a
        learned detector's centre of the cell), else the nucleus box's."""
        cfg = self.config
        h, w = rgb.shape[:2]
        x, y, bw, bh = (v / s for v in rect)
        cx, cy = at if at is not None else (x + bw / 2, y + bh / 2)
        side = max(max(bw, bh) * cfg.cell_scale, cfg.min_cell_um / self.um_per_px)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        x1, y1 = int(round(cx + side / 2)), int(round(cy + side / 2))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)

        def to_frame(small: np.ndarray, as_mask=lambda a: a) -> np.ndarray:
            """The box's part of a work-scale image (made a 0/255 mask by ``as_mask``), in frame pixels."""
            if s >= 1:
                return as_mask(small[y0:y1, x0:x1])
            sx0, sy0 = int(x0 * s), int(y0 * s)
            sx1, sy1 = min(small.shape[1], int(np.ceil(x1 * s)) + 1), min(small.shape[0], int(np.ceil(y1 * s)) + 1)
            size = (max(1, round((sx1 - sx0) / s)), max(1, round((sy1 - sy0) / s)))
            part = cv2.resize(as_mask(small[sy0:sy1, sx0:sx1]), size, interpolation=cv2.INTER_NEAREST)
            ox, oy = x0 - round(sx0 / s), y0 - round(sy0 / s)
            out = np.zeros((y1 - y0, x1 - x0), np.uint8)
            src = part[oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
            out[: src.shape[0], : src.shape[1]] = src
            return out

        nuc = to_frame(nuc_small)
        allowed = None
        if region is not None:
            seeds, k = region

            def own_part(window: np.ndarray) -> np.ndarray:
                if not ((window > 0) & (window != k)).any():  # no other nucleus in the box
                    return np.full(window.shape, 255, np.uint8)
                return np.where(nearest_seed(window) == k, 255, 0).astype(np.uint8)

            allowed = to_frame(seeds, own_part) | nuc
        crop = rgb[y0:y1, x0:x1]
        f = min(1.0, MASK_SIDE / max(crop.shape[:2]))  # the cell mask needs no more than MASK_SIDE pixels
        if f < 1:
            small_size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
            shrink = (lambda m: None if m is None else cv2.resize(m, small_size, interpolation=cv2.INTER_NEAREST))
            mask = cell_mask(cv2.resize(crop, small_size, interpolation=cv2.INTER_AREA), shrink(nuc),
                             f / self.um_per_px, shrink(allowed))
            mask = cv2.resize(mask, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST) | nuc
        else:
            mask = cell_mask(crop, nuc, 1.0 / self.um_per_px, allowed)
        # cut off: the cell itself (not its box) reaches the edge of the frame or of the field of view
        touches = bool((x0 == 0 and mask[:, 0].any()) or (y0 == 0 and mask[0].any()) or
                       (x1 == w and mask[:, -1].any()) or (y1 == h and mask[-1].any()))
        if not touches and fov_edge is not None:  # any point of the cell's outline outside the field
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            if contours:
                pts = np.concatenate(contours).reshape(-1, 2)
                fx = np.clip(((pts[:, 0] + x0) * s).astype(int), 0, fov_edge.shape[1] - 1)
                fy = np.clip(((pts[:, 1] + y0) * s).astype(int), 0, fov_edge.shape[0] - 1)
                touches = bool((fov_edge[fy, fx] == 0).any())
        nx, ny, nw, nh = rect  # the nucleus's pixels lie in its box
        on = nuc_small[ny : ny + nh, nx : nx + nw] > 0
        return Detection((x0, y0, x1, y1), mask, int(cv2.countNonZero(nuc)),
                         float(score[ny : ny + nh, nx : nx + nw][on].mean()) if on.any() else 0.0, touches, nucleus_um2,
                         centre=(cx, cy))


def cell_mask(crop: np.ndarray, nucleus: np.ndarray, px_per_um: float = 14.0,
              allowed: np.ndarray | None = None) -> np.ndarray:
    """The nucleus plus the cytoplasm around it: pixels bluer than the background plasma, or darker
    without being pink (a touching red cell is darker too), connected to the nucleus, within a disk
    around it and inside ``allowed`` (0/255, None: anywhere); cleaned at ~0.5 µm (``px_per_um``)."""
    crop = np.ascontiguousarray(crop)  # a window of the frame: OpenCV splits a copy 7x faster than the view
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    bg = percentile_u8(gray, 90)
    r, g, b = cv2.split(crop)
    bluish = cv2.compare(cv2.subtract(b, g), 12, cv2.CMP_GT)  # B - G > 12 (0/255)
    pink = cv2.compare(cv2.subtract(r, b), 15, cv2.CMP_GT)  # red cells (R > B): never part of a white cell
    darker = cv2.bitwise_and(cv2.compare(gray, bg - 18, cv2.CMP_LT), cv2.bitwise_not(pink))
    near = dilate_disk(nucleus, max(3, int(0.35 * max(crop.shape[:2]))))
    mask = cv2.bitwise_or(cv2.bitwise_and(cv2.bitwise_or(bluish, darker), near), nucleus)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk(min(7, 2 * round(0.5 * px_per_um) + 1)))
    mask = _fill_holes(cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(min(3, round(0.25 * px_per_um)))))
    if allowed is not None:
        mask &= allowed
    n, labels = cv2.connectedComponents(mask)
    if n > 2:  # keep the component holding the nucleus
        keep = np.bincount(labels[nucleus > 0].ravel(), minlength=n)
        keep[0] = 0
        mask = ((labels == int(keep.argmax())) * 255).astype(np.uint8)
    return mask | nucleus
