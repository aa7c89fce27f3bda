"""Seeded synthetic data that looks like C-NMC cells and BCCD smear frames (numpy + OpenCV).

Cells (C-NMC look: one stained cell, centred, on a pure black background, 450x450 by default):

* ``all`` (blast): larger, irregular outline, nucleus filling almost the whole cell (high
  nucleus:cytoplasm ratio), fine open chromatin (low-contrast fine texture) and 1-3 pale nucleoli.
* ``hem`` (normal lymphocyte): smaller, round, a visible rim of paler cytoplasm, a dense darker
  nucleus with coarse chromatin clumps, rarely a nucleolus.

``difficulty`` in [0, 1] pulls the class parameters towards each other and widens their spread: 0 is
separable by size alone, 1 leaves only faint cues, so accuracy is not trivially 100 %. Each patient
has its own stain (colour gain and brightness), as real slides do, which makes patient-disjoint
validation meaningful. Every cell is drawn from its own seed (seed, patient, index), so output does
not depend on generation order.

Smear frames (BCCD look, 640x480): a pale field of pink red cells with paler centres, a few white
cells (lilac cytoplasm, round or lobed purple nucleus) and platelets, with Pascal-VOC boxes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from alnett_edge.card import CLASS_NAMES
from alnett_edge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REF_SIZE = 450.0  # C-NMC image side; geometry below is given at this scale
#: the synthetic smear's pixel size: its red cells are 76-104 px across (mean 90) and taken as 7.8 µm
SMEAR_UM_PER_PX = 7.8 / 90.0
#: the synthetic cells' pixel size at REF_SIZE: their normal (hem) cells' median diameter, 182 px at the
#: demo's difficulty 0.4, is taken as 9 µm (small lymphocytes are 7-10 µm), the rule training uses
CELL_UM_PER_PX = 9.0 / 182.0
#: the difficulty of the white cells drawn into smears (the demo's)
SMEAR_DIFFICULTY = 0.4
#: a smear under a bright-field lamp is brighter than C-NMC's cell images: the white cells drawn into
#: smears are the synthetic cells x this gain (a model with ``stain = "cell"`` does not see it)
SMEAR_CELL_GAIN = 2.0


@dataclass(frozen=True)
class Stain:
    gain: tuple[float, float, float]
    brightness: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Stain":
        g = rng.normal(1.0, 0.07, size=3).clip(0.8, 1.2)
        return cls(gain=(float(g[0]), float(g[1]), float(g[2])), brightness=float(rng.normal(1.0, 0.08)))


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth zero-mean unit-std noise with correlation length ~sigma pixels (a very smooth field is
    drawn at a lower resolution and enlarged: the same look, a fraction of the blur's cost)."""
    if sigma >= 30:
        f = sigma / 6.0
        small = _noise(rng, (max(2, int(np.ceil(shape[0] / f))), max(2, int(np.ceil(shape[1] / f)))), 6.0)
        return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    n = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
    s = n.std()
    return n / s if s > 0 else n


def _blob(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, radius: float, irregular: float,
          elong: float, angle: float, soft: float) -> np.ndarray:
    """Soft mask (0..1) of an irregular ellipse-like blob centred at the origin of (xx, yy)."""
    return _blob_at(xx, yy, radius, _blob_params(rng, irregular), elong, angle, soft)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def synth_cell(rng: np.random.Generator, label: int, size: int = 450, difficulty: float = 0.5,
               stain: Stain | None = None) -> np.ndarray:
    """One C-NMC-like cell image, RGB uint8 ``size`` x ``size``, background exactly 0."""
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"difficulty must be in [0, 1], got {difficulty}")
    if label not in (0, 1):
        raise ConfigError(f"label must be 0 (hem) or 1 (all), got {label}")
    stain = stain or Stain.random(rng)
    blast = label == 1
    k = 1.0 - 0.85 * difficulty  # class separation: 1 = far apart, 0.15 = nearly the same
    spread = 1.0 + 1.5 * difficulty
    side = 0.5 * k if blast else -0.5 * k  # position along the normal -> blast axis, in [-0.5, 0.5]
    t = 0.5 + side  # 0 = typical normal lymphocyte, 1 = typical blast

    scale = size / REF_SIZE
    radius = rng.normal(_lerp(86, 114, t), 8 * spread) * scale
    radius = float(np.clip(radius, 55 * scale, 150 * scale))
    irregular = abs(rng.normal(_lerp(0.03, 0.10, t), 0.02 * spread))
    elong = float(np.clip(rng.normal(1.0, _lerp(0.05, 0.10, t)), 0.8, 1.25))
    nc_ratio = float(np.clip(rng.normal(_lerp(0.80, 0.95, t), 0.04 * spread), 0.6, 0.99))
    chroma_sigma = _lerp(6.0, 3.0, t) * scale
    chroma_contrast = max(0.03, rng.normal(_lerp(0.16, 0.08, t), 0.03 * spread))
    darkness = rng.normal(_lerp(0.82, 1.0, t), 0.05 * spread)  # nucleus brightness multiplier
    n_nucleoli = int(rng.poisson(_lerp(0.2, 2.0, t)))

    cx = size / 2 + rng.normal(0, 4 * scale)
    cy = size / 2 + rng.normal(0, 4 * scale)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx -= cx
    yy -= cy
    angle = rng.uniform(0, np.pi)
    cell = _blob(rng, xx, yy, radius, irregular, elong, angle, soft=1.5 * scale + 0.5)
    off = rng.normal(0, (1 - nc_ratio) * radius * 0.4, size=2)
    nucleus = _blob(rng, xx - off[0], yy - off[1], radius * nc_ratio, irregular * 0.8, elong, angle,
                    soft=3.0 * scale + 0.5) * cell

    # Colours in [0, 1] RGB, measured by eye against the real sample (purple nucleus, lilac rim).
    nuc_rgb = np.array([0.29, 0.11, 0.33], np.float32) * darkness
    cyto_rgb = np.array([0.35, 0.17, 0.40], np.float32)
    h, w = cell.shape
    fine = _noise(rng, (h, w), chroma_sigma)
    coarse = _noise(rng, (h, w), 12 * scale)
    texture = (1.0 + chroma_contrast * fine + 0.08 * coarse)[..., None]
    pink = np.array([0.05, 0.0, 0.02], np.float32) * np.clip(coarse, 0, None)[..., None]  # pale pink blotches
    img = (nucleus[..., None] * (nuc_rgb * texture + pink)
           + (cell - nucleus)[..., None] * cyto_rgb * (1 + 0.05 * coarse[..., None]))

    for _ in range(n_nucleoli):
        rr = radius * nc_ratio * 0.55 * np.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * np.pi)
        spot_r = rng.uniform(5, 11) * scale
        d = np.hypot(xx - rr * np.cos(a), yy - rr * np.sin(a))
        spot = np.clip((spot_r - d) / (2.0 * scale + 0.5), 0, 1) * nucleus
        img = img * (1 - 0.45 * spot[..., None]) + 0.45 * spot[..., None] * np.array([0.47, 0.24, 0.45], np.float32)
    # Darker membrane rim, as cells in the sample show.
    rim = cell * (1 - cv2.GaussianBlur(cell, (0, 0), 3 * scale + 0.5))
    img *= (1 - 0.35 * rim)[..., None]
    img *= np.asarray(stain.gain, np.float32) * stain.brightness
    img = cv2.GaussianBlur(img, (0, 0), 0.6 * scale + 0.3)
    img += rng.normal(0, 0.006, img.shape).astype(np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out[cell < 0.5] = 0
    return out


# ---------------------------------------------------------------------------------------------
# C-NMC-style dataset on disk


@dataclass(frozen=True)
class SynthSpec:
    n_cells: int = 600
    size: int = 450
    difficulty: float = 0.5
    all_fraction: float = 2 / 3  # C-NMC is about 2:1 ALL:HEM
    cells_per_patient: int = 20
    folds: int = 3
    seed: int = 0
    fmt: str = "bmp"

    def validate(self) -> None:
        if self.n_cells < 4:
            raise ConfigError("n_cells must be >= 4")
        if self.size < 32:
            raise ConfigError("size must be >= 32")
        if not 0.0 < self.all_fraction < 1.0:
            raise ConfigError("all_fraction must be in (0, 1)")
        if self.cells_per_patient < 1 or self.folds < 1:
            raise ConfigError("cells_per_patient and folds must be >= 1")
        if self.fmt not in ("bmp", "png"):
            raise ConfigError(f"format must be bmp or png, got {self.fmt!r}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ConfigError(f"difficulty must be in [0, 1], got {self.difficulty}")


def _patients(n: int, per_patient: int) -> list[int]:
    """Split n cells into patients of ~per_patient cells; at least two patients per class."""
    n_pat = max(2, int(np.ceil(n / per_patient)))
    base, extra = divmod(n, n_pat)
    return [base + (1 if i < extra else 0) for i in range(n_pat)]


def generate_cnmc_dataset(out: str | Path, spec: SynthSpec = SynthSpec()) -> dict[str, object]:
    """Write ``out/fold_<k>/{all,hem}/UID_<patient>_<image>_<cell>_<label>.<fmt>`` like C-NMC training data."""
    spec.validate()
    out = Path(out)
    n_all = int(round(spec.n_cells * spec.all_fraction))
    counts = {1: n_all, 0: spec.n_cells - n_all}
    written = 0
    patients = 0
    for label, n in counts.items():
        for p_idx, n_cells in enumerate(_patients(n, spec.cells_per_patient)):
            pid = f"{'H' if label == 0 else ''}{p_idx + 1}"
            fold = f"fold_{p_idx % spec.folds}"
            prng = np.random.default_rng([spec.seed, label, p_idx])
            stain = Stain.random(prng)
            folder = out / fold / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_cells):
                rng = np.random.default_rng([spec.seed, label, p_idx, i])
                img = synth_cell(rng, label, spec.size, spec.difficulty, stain)
                name = f"UID_{pid}_{i // 4 + 1}_{i % 4 + 1}_{CLASS_NAMES[label]}.{spec.fmt}"
                if not cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise DataError(f"cannot write {folder / name}")
                written += 1
            patients += 1
    log.info("wrote %d synthetic cells of %d patients to %s", written, patients, out)
    return {"root": str(out), "cells": written, "patients": patients, "all": counts[1], "hem": counts[0]}


# ---------------------------------------------------------------------------------------------
# Smear frames


@dataclass
class SmearObject:
    name: str  # WBC | RBC | Platelets (the BCCD class names) | Smudge (crowded fields)
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax
    label: str | None = None  # for WBC: the cell's class (all/hem)
    cluster: int = 1  # crowded fields: the number of white cells in this one's cluster (1: alone)
    group: int | None = None  # crowded fields: the cluster's id within the frame
    centre: tuple[float, float] | None = None  # crowded fields: the middle of its visible part (not its box's centre)
    mask: np.ndarray | None = field(default=None, repr=False)  # crowded fields: its visible pixels in ``box``


@dataclass
class SmearFrame:
    image: np.ndarray  # RGB uint8 HxWx3
    objects: list[SmearObject] = field(default_factory=list)


def _paint(img: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> None:
    img *= 1 - mask[..., None]
    img += mask[..., None] * rgb


def _window(cx: float, cy: float, reach: float, width: int, height: int) -> tuple[slice, slice]:
    """The pixels within ``reach`` of (cx, cy), clipped to the frame: an object's mask is exactly 0
    outside it, so painting only there gives the same frame as painting everywhere."""
    x0, x1 = max(0, int(np.floor(cx - reach)) - 1), min(width, int(np.ceil(cx + reach)) + 2)
    y0, y1 = max(0, int(np.floor(cy - reach)) - 1), min(height, int(np.ceil(cy + reach)) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _blob_params(rng: np.random.Generator, irregular: float) -> list[tuple[float, float]]:
    """The boundary harmonics of :func:`_blob`, drawn in its order."""
    return [(irregular * rng.normal() / k, rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]


def _blob_at(xx: np.ndarray, yy: np.ndarray, radius: float, harmonics: list[tuple[float, float]], elong: float,
             angle: float, soft: float) -> np.ndarray:
    """:func:`_blob` with its harmonics drawn already (see :func:`_blob_params`)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx * c + yy * s) / elong
    v = -xx * s + yy * c
    r = np.hypot(u, v)
    th = np.arctan2(v, u)
    boundary = np.ones_like(r)
    for k, (amp, phase) in zip(range(2, 7), harmonics):
        boundary += amp * np.cos(k * th + phase)
    return np.clip((radius * boundary - r) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def _blob_reach(radius: float, harmonics: list[tuple[float, float]], elong: float, soft: float) -> float:
    """How far from its centre a blob can be non-zero."""
    return (radius * (1 + sum(abs(a) for a, _ in harmonics)) + soft) * max(1.0, elong) + 1


def _field(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel grids yy, xx; the empty field: pale plasma with a little mottling and the lamp's vignette)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array([0.90, 0.85, 0.86], np.float32) * (1 + 0.03 * _noise(rng, (height, width), 60))[..., None]
    vignette = 1 - 0.12 * ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (width / 2) ** 2
    return yy, xx, bg * vignette[..., None]


def _red_cells(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray,
               keep_out: list[tuple[float, float, float]], objects: list[SmearObject], zoom: float = 1.0,
               count: tuple[int, int] = (36, 56)) -> None:
    """Pink red cells with paler centres, 7.8 µm across at ``zoom`` x the smear's pixel size, kept off the
    white cells (``keep_out``: centre and radius)."""
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(count[0], count[1]))):  # a smear is mostly red cells (they calibrate the optics)
        r = rng.uniform(38, 52) * zoom
        cx, cy = rng.uniform(-r / 2, width + r / 2), rng.uniform(-r / 2, height + r / 2)
        if any(np.hypot(cx - x, cy - y) < rr + r * 0.3 for x, y, rr in keep_out):
            continue
        win = _window(cx, cy, r + 1, width, height)
        d = np.hypot(xx[win] - cx, yy[win] - cy) / r
        disc = np.clip((1 - d) * r / 1.5, 0, 1)
        centre = np.clip(1 - d / 0.45, 0, 1)
        edge = np.clip(1 - np.abs(d - 0.9) / 0.12, 0, 1)  # darker rim, paler biconcave centre
        rgb = np.array([0.84, 0.66, 0.66], np.float32) * (1 + 0.08 * centre - 0.12 * edge)[..., None]
        _paint(img[win], disc, np.clip(rgb, 0, 1))
        box = (max(0, int(cx - r)), max(0, int(cy - r)), min(width - 1, int(cx + r)), min(height - 1, int(cy + r)))
        if box[2] - box[0] > 8 and box[3] - box[1] > 8:
            objects.append(SmearObject("RBC", box))


def _platelets(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray,
               objects: list[SmearObject], zoom: float = 1.0) -> None:
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(4, 8) * zoom
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        win = _window(cx, cy, r + 1, width, height)
        dot = np.clip((r - np.hypot(xx[win] - cx, yy[win] - cy)) / 1.5, 0, 1)
        _paint(img[win], dot, np.array([0.55, 0.40, 0.70], np.float32))
        objects.append(SmearObject("Platelets", (int(cx - r), int(cy - r), int(cx + r), int(cy + r))))


def _finish(rng: np.random.Generator, img: np.ndarray, zoom: float = 1.0) -> np.ndarray:
    """The optics' blur and the sensor's noise; uint8 RGB."""
    img = cv2.GaussianBlur(img, (0, 0), 0.8 * zoom) + np.float32(0.01) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _white_cell(rng: np.random.Generator, label: int, cell_px: int, difficulty: float) -> tuple[np.ndarray, float]:
    """A synthetic C-NMC cell drawn ``cell_px`` on a side, and the radius of its stained part."""
    cell = synth_cell(np.random.default_rng(rng.integers(2**32)), label, cell_px, difficulty)
    ys, xs = np.nonzero(cell.max(axis=2))
    return cell, max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 1


def _paste_cell(img: np.ndarray, cell: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Paint a cell image (black = not cell) centred at (cx, cy); returns its full-frame 0/1 mask."""
    height, width = img.shape[:2]
    side = cell.shape[0]
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)
    part = cell[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32) / 255.0
    alpha = (part.max(axis=2) > 0).astype(np.float32)
    _paint(img[fy0:fy1, fx0:fx1], alpha, np.clip(part * SMEAR_CELL_GAIN, 0, 1))
    mask = np.zeros((height, width), np.uint8)
    mask[fy0:fy1, fx0:fx1] = alpha > 0
    return mask


def synth_smear(rng: np.random.Generator, width: int = 640, height: int = 480, n_wbc: tuple[int, int] = (1, 3),
                blast_fraction: float = 0.5, difficulty: float = SMEAR_DIFFICULTY) -> SmearFrame:
    """One BCCD-like frame at :data:`SMEAR_UM_PER_PX`: red cells, 1-3 white cells (synthetic C-NMC cells
    at their physical size, some blasts), platelets; boxes for all of them.
    Each object is drawn only in the window it can reach (the same frame, a few times faster)."""
    yy, xx, img = _field(rng, width, height)
    objects: list[SmearObject] = []

    # white cells: the synthetic C-NMC cells themselves (what the demo's model is trained on), drawn at
    # the smear's pixel size, so a cell reaches the model at the size it was trained on (scale-true)
    cell_px = max(32, int(round(REF_SIZE * CELL_UM_PER_PX / SMEAR_UM_PER_PX)))
    wbcs: list[tuple[float, float, float, np.ndarray, str]] = []
    for _ in range(int(rng.integers(n_wbc[0], n_wbc[1] + 1))):
        label = int(rng.random() < blast_fraction)
        cell, r = _white_cell(rng, label, cell_px, difficulty)
        for _try in range(30):  # keep white cells apart so each has its own box
            cx, cy = rng.uniform(r * 0.6, width - r * 0.6), rng.uniform(r * 0.6, height - r * 0.6)
            if all(np.hypot(cx - x, cy - y) > r + rr + 10 for x, y, rr, _, _ in wbcs):
                wbcs.append((cx, cy, r, cell, CLASS_NAMES[label]))
                break
    _red_cells(rng, img, xx, yy, [(x, y, rr) for x, y, rr, _, _ in wbcs], objects)
    for cx, cy, r, cell, label in wbcs:
        _paste_cell(img, cell, cx, cy)
        box = (max(0, int(cx - r)), max(0, int(cy - r)), min(width - 1, int(cx + r)), min(height - 1, int(cy + r)))
        objects.append(SmearObject("WBC", box, label))
    _platelets(rng, img, xx, yy, objects)
    return SmearFrame(_finish(rng, img), objects)


@dataclass(frozen=True)
class CrowdSpec:
    """A crowded leukemic field: clusters of touching and overlapping white cells (blasts cluster more
    than normal cells do), single white cells, smudge cells, at any pixel size."""
    um_per_px: float = SMEAR_UM_PER_PX
    width: int = 640
    height: int = 480
    clusters: int = 2  # clusters per frame ...
    cluster_size: tuple[int, int] = (2, 8)  # ... of this many cells (inclusive)
    singles: int = 1  # isolated white cells per frame
    smudges: int = 1  # smudge cells per frame (at most; placed where they fit)
    cluster_blast_fraction: float = 0.85  # share of blasts among clustered cells ...
    single_blast_fraction: float = 0.3  # ... and among isolated ones
    overlap: tuple[float, float] = (0.0, 0.25)  # how far a cell lies over the one it touches (share of their radii)
    difficulty: float = SMEAR_DIFFICULTY

    def validate(self) -> None:
        if not self.um_per_px > 0 or self.width < 64 or self.height < 64:
            raise ConfigError("a crowded field needs um_per_px > 0 and at least 64x64 pixels")
        if not 1 <= self.cluster_size[0] <= self.cluster_size[1] or min(self.clusters, self.singles, self.smudges) < 0:
            raise ConfigError("cluster sizes must be 1 <= low <= high, and the counts >= 0")
        if not 0.0 <= self.overlap[0] <= self.overlap[1] <= 0.4:
            raise ConfigError("overlap (a share of the two cells' radii) must lie in [0, 0.4], low <= high")


def _smudge(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float,
            radius: float) -> np.ndarray:
    """A smudge cell: a broken nucleus spread thin: a pale, streaked, ragged violet patch with no
    cytoplasm around it, larger than a nucleus. Returns its full-frame 0/1 mask."""
    height, width = img.shape[:2]
    harmonics = _blob_params(rng, 0.18)
    elong, angle = float(rng.uniform(1.1, 1.7)), float(rng.uniform(0, np.pi))
    reach = _blob_reach(radius, harmonics, elong, 3.0)
    win = _window(cx, cy, reach, width, height)
    blob = _blob_at(xx[win] - cx, yy[win] - cy, radius, harmonics, elong, angle, soft=radius * 0.15 + 1)
    h, w = blob.shape
    # chromatin strands drawn out along the smear's direction: noise stretched along the blob's axis
    n = rng.standard_normal((h, w)).astype(np.float32)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(np.degrees(angle)), 1.0)
    n = cv2.warpAffine(cv2.GaussianBlur(cv2.warpAffine(n, rot, (w, h), borderMode=cv2.BORDER_REFLECT), (0, 0),
                                        sigmaX=max(1.0, radius / 5), sigmaY=max(0.7, radius / 30)),
                       cv2.invertAffineTransform(rot), (w, h), borderMode=cv2.BORDER_REFLECT)
    n /= n.std() + 1e-6
    density = np.clip(float(rng.uniform(0.45, 0.65)) + 0.08 * n, 0.2, 0.9) * blob
    _paint(img[win], density, np.array([0.52, 0.30, 0.66], np.float32))
    mask = np.zeros((height, width), np.uint8)
    mask[win] = blob > 0.5
    return mask


def _outline(cell: np.ndarray) -> np.ndarray:
    """The outline of a cell image's stained part, as offsets (x, y) from where :func:`_paste_cell`
    centres it: two cells touch at the sum of their extents along the line between them."""
    contours, _ = cv2.findContours((cell.max(axis=2) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    return pts - cell.shape[0] / 2


def synth_crowded(rng: np.random.Generator, spec: CrowdSpec = CrowdSpec()) -> SmearFrame:
    """One crowded field (see :class:`CrowdSpec`): every white cell and smudge cell with its exact box
    (of its visible pixels), its visible mask, its cluster (an id shared by touching cells; its size in
    ``cluster``) and, for white cells, its label. Later cells lie over earlier ones."""
    spec.validate()
    width, height, zoom = spec.width, spec.height, SMEAR_UM_PER_PX / spec.um_per_px
    yy, xx, img = _field(rng, width, height)
    objects: list[SmearObject] = []
    cell_px = max(16, int(round(REF_SIZE * CELL_UM_PER_PX / spec.um_per_px)))
    placed: list[tuple[float, float, float]] = []  # every white or smudge cell: centre and radius
    cells: list[tuple[float, float, float, np.ndarray, int, int, int]] = []  # cx, cy, r, image, label, cluster id, size

    def free(cx: float, cy: float, r: float, margin: float) -> bool:
        return all(np.hypot(cx - x, cy - y) > r + rr + margin for x, y, rr in placed)

    def inside(cx: float, cy: float, r: float) -> bool:
        return r <= cx <= width - r and r <= cy <= height - r

    groups = [int(rng.integers(spec.cluster_size[0], spec.cluster_size[1] + 1)) for _ in range(spec.clusters)]
    groups += [1] * spec.singles
    for gid, size in enumerate(groups):
        fraction = spec.cluster_blast_fraction if size > 1 else spec.single_blast_fraction
        labels = [int(rng.random() < fraction) for _ in range(size)]
        members = [_white_cell(rng, y, cell_px, spec.difficulty) for y in labels]
        outlines = [_outline(cell) for cell, _r in members]
        for _try in range(60):  # the whole cluster placed apart from the others, or tried again elsewhere
            r0 = members[0][1]
            at = [(float(rng.uniform(r0, width - r0)), float(rng.uniform(r0, height - r0)), r0)]
            for k, (_cell, r) in enumerate(members[1:], 1):
                for _t in range(40):  # touching a cell placed already (their outlines meet), then pushed in
                    j = int(rng.integers(len(at)))
                    (ax, ay, ar), a = at[j], float(rng.uniform(0, 2 * np.pi))
                    u = np.array([np.cos(a), np.sin(a)])
                    d = float((outlines[j] @ u).max() + (-outlines[k] @ u).max())
                    d -= float(rng.uniform(*spec.overlap)) * (ar + r)
                    cx, cy = ax + d * u[0], ay + d * u[1]
                    if inside(cx, cy, r) and all(np.hypot(cx - x, cy - y) > 0.6 * (r + rr) for x, y, rr in at):
                        at.append((cx, cy, r))
                        break
                else:
                    break
            if len(at) == size and all(free(x, y, r, 3.0 / spec.um_per_px) for x, y, r in at):
                placed.extend(at)
                for (cell, _r), label, (x, y, r) in zip(members, labels, at):
                    cells.append((x, y, r, cell, label, gid, size))
                break
    smudge_at = []
    for _ in range(spec.smudges):
        r = float(rng.uniform(5.5, 8.0)) / spec.um_per_px  # µm: a broken blast nucleus spread thin
        for _try in range(40):
            cx, cy = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
            if free(cx, cy, r * 1.6, 3.0 / spec.um_per_px):
                placed.append((cx, cy, r * 1.6))
                smudge_at.append((cx, cy, r))
                break
    area = width * height / (640 * 480 * zoom * zoom)  # the field's area against the BCCD-like frame's
    _red_cells(rng, img, xx, yy, placed, objects, zoom, (max(1, round(36 * area)), max(2, round(56 * area))))
    masks: list[tuple[np.ndarray, SmearObject]] = []
    for cx, cy, _r, cell, label, gid, size in cells:
        mask = _paste_cell(img, cell, cx, cy)
        for m, _o in masks:  # a later cell hides what it lies on
            m[mask > 0] = 0
        masks.append((mask, SmearObject("WBC", (0, 0, 0, 0), CLASS_NAMES[label], cluster=size, group=gid)))
    for cx, cy, r in smudge_at:
        mask = _smudge(rng, img, xx, yy, cx, cy, r)
        for m, _o in masks:
            m[mask > 0] = 0
        masks.append((mask, SmearObject("Smudge", (0, 0, 0, 0))))
    for mask, obj in masks:
        x, y, w, h = cv2.boundingRect(mask)
        if w and h:
            obj.box, obj.mask = (x, y, x + w, y + h), mask[y : y + h, x : x + w].copy()
            # its centre is the middle of what is seen of it (the visible point farthest from its outline),
            # where a person counting the cells would point: a cell half under another is centred on its half
            dist = cv2.distanceTransform(cv2.copyMakeBorder(obj.mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                         cv2.DIST_L2, 5)[1:-1, 1:-1]
            cy, cx = np.unravel_index(int(dist.argmax()), dist.shape)
            obj.centre = (float(x + cx), float(y + cy))
            objects.append(obj)
    _platelets(rng, img, xx, yy, objects, zoom)
    return SmearFrame(_finish(rng, img, min(zoom, 2.0)), objects)


def voc_xml(filename: str, frame: SmearFrame) -> str:
    h, w = frame.image.shape[:2]
    objs = "".join(
        f"\t<object>\n\t\t<name>{escape(o.name)}</name>\n"
        + (f"\t\t<label>{escape(o.label)}</label>\n" if o.label else "")
        + (f"\t\t<cluster>{o.cluster}</cluster>\n" if o.group is not None else "")
        + (f"\t\t<centre>\n\t\t\t<x>{o.centre[0]:.1f}</x>\n\t\t\t<y>{o.centre[1]:.1f}</y>\n\t\t</centre>\n"
           if o.centre is not None else "")
        + f"\t\t<bndbox>\n\t\t\t<xmin>{o.box[0]}</xmin>\n\t\t\t<ymin>{o.box[1]}</ymin>\n"
        f"\t\t\t<xmax>{o.box[2]}</xmax>\n\t\t\t<ymax>{o.box[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for o in frame.objects
    )
    return (
        f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{escape(filename)}</filename>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"{objs}</annotation>\n"
    )


def generate_smears(out: str | Path, n: int, seed: int = 0) -> dict[str, object]:
    """Write ``out/JPEGImages/*.jpg`` and ``out/Annotations/*.xml`` in the BCCD (Pascal VOC) layout."""
    if n < 1:
        raise ConfigError("the number of smear frames must be >= 1")
    out = Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    wbc = 0
    for i in range(n):
        frame = synth_smear(np.random.default_rng([seed, 7, i]))
        name = f"SynthSmear_{i:05d}.jpg"
        cv2.imwrite(str(out / "JPEGImages" / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        (out / "Annotations" / name.replace(".jpg", ".xml")).write_text(voc_xml(name, frame))
        wbc += sum(o.name == "WBC" for o in frame.objects)
    return {"root": str(out), "frames": n, "wbc": wbc}


def generate_crowded(out: str | Path, n: int, spec: CrowdSpec = CrowdSpec(), seed: int = 0) -> dict[str, object]:
    """Crowded fields in the BCCD layout (``JPEGImages/``, ``Annotations/`` with each white cell's
    cluster size and centre, smudge cells as ``Smudge``) plus ``Masks/*.png``: each white or smudge
    cell's visible pixels, numbered as its object in the XML (1, 2, ...; 0 elsewhere; 16-bit)."""
    if n < 1:
        raise ConfigError("the number of crowded fields must be >= 1")
    spec.validate()
    out = Path(out)
    for sub in ("JPEGImages", "Annotations", "Masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    wbc = smudges = 0
    for i in range(n):
        frame = synth_crowded(np.random.default_rng([seed, 13, i]), spec)
        frame.objects = [o for o in frame.objects if o.name != "RBC"] + [o for o in frame.objects if o.name == "RBC"]
        name = f"Crowded_{i:05d}.png"  # lossless: the masks and the pixels agree exactly
        cv2.imwrite(str(out / "JPEGImages" / name), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        (out / "Annotations" / name.replace(".png", ".xml")).write_text(voc_xml(name, frame))
        masks = np.zeros(frame.image.shape[:2], np.uint16)
        for k, o in enumerate(frame.objects, 1):
            if o.mask is not None:
                x0, y0, x1, y1 = o.box
                masks[y0:y1, x0:x1][o.mask > 0] = k
        cv2.imwrite(str(out / "Masks" / name), masks)
        wbc += sum(o.name == "WBC" for o in frame.objects)
        smudges += sum(o.name == "Smudge" for o in frame.objects)
    return {"root": str(out), "frames": n, "wbc": wbc, "smudges": smudges}


def write_smear_video(path: str | Path, n: int, seed: int = 0, fps: float = 30.0,
                      labels: list[list[str]] | None = None,
                      crowded: CrowdSpec | None = None) -> list[list[tuple[int, int, int, int]]]:
    """An MJPEG .avi of ``n`` synthetic smear frames (a camera stand-in), or of crowded leukemic fields
    (``crowded``: clusters of touching cells, smudge cells; 640x480 whatever its size); returns each
    frame's WBC boxes (and appends each frame's WBC labels, all/hem, to ``labels`` when given)."""
    if n < 1:
        raise ConfigError("the number of video frames must be >= 1")
    if crowded is not None:
        crowded = replace(crowded, width=640, height=480)
        crowded.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    truth = []
    try:
        for i in range(n):
            rng = np.random.default_rng([seed, 11, i])
            frame = synth_smear(rng) if crowded is None else synth_crowded(rng, crowded)
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            truth.append([o.box for o in frame.objects if o.name == "WBC"])
            if labels is not None:
                labels.append([o.label or "" for o in frame.objects if o.name == "WBC"])
    finally:
        writer.release()
    return truth
