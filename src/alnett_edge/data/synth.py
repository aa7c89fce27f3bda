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
from dataclasses import dataclass, field
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
    name: str  # WBC | RBC | Platelets (the BCCD class names)
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax
    label: str | None = None  # for WBC: the cell's class (all/hem)


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


def synth_smear(rng: np.random.Generator, width: int = 640, height: int = 480, n_wbc: tuple[int, int] = (1, 3),
                blast_fraction: float = 0.5, difficulty: float = SMEAR_DIFFICULTY) -> SmearFrame:
    """One BCCD-like frame at :data:`SMEAR_UM_PER_PX`: red cells, 1-3 white cells (synthetic C-NMC cells
    at their physical size, some blasts), platelets; boxes for all of them.
    Each object is drawn only in the window it can reach (the same frame, a few times faster)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array([0.90, 0.85, 0.86], np.float32) * (1 + 0.03 * _noise(rng, (height, width), 60))[..., None]
    vignette = 1 - 0.12 * ((xx - width / 2) ** 2 + (yy - height / 2) ** 2) / (width / 2) ** 2
    img = bg * vignette[..., None]
    objects: list[SmearObject] = []

    # white cells: the synthetic C-NMC cells themselves (what the demo's model is trained on), drawn at
    # the smear's pixel size, so a cell reaches the model at the size it was trained on (scale-true)
    cell_px = max(32, int(round(REF_SIZE * CELL_UM_PER_PX / SMEAR_UM_PER_PX)))
    wbcs: list[tuple[float, float, float, np.ndarray, str]] = []
    for _ in range(int(rng.integers(n_wbc[0], n_wbc[1] + 1))):
        label = int(rng.random() < blast_fraction)
        cell = synth_cell(np.random.default_rng(rng.integers(2**32)), label, cell_px, difficulty)
        ys, xs = np.nonzero(cell.max(axis=2))
        r = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 + 1
        for _try in range(30):  # keep white cells apart so each has its own box
            cx, cy = rng.uniform(r * 0.6, width - r * 0.6), rng.uniform(r * 0.6, height - r * 0.6)
            if all(np.hypot(cx - x, cy - y) > r + rr + 10 for x, y, rr, _, _ in wbcs):
                wbcs.append((cx, cy, r, cell, CLASS_NAMES[label]))
                break

    for _ in range(int(rng.integers(36, 56))):  # a smear is mostly red cells (they also calibrate the optics)
        r = rng.uniform(38, 52)
        cx, cy = rng.uniform(-r / 2, width + r / 2), rng.uniform(-r / 2, height + r / 2)
        if any(np.hypot(cx - x, cy - y) < rr + r * 0.3 for x, y, rr, _, _ in wbcs):
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

    for cx, cy, r, cell, label in wbcs:
        side = cell.shape[0]
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)
        part = cell[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32) / 255.0
        alpha = (part.max(axis=2) > 0).astype(np.float32)
        _paint(img[fy0:fy1, fx0:fx1], alpha, np.clip(part * SMEAR_CELL_GAIN, 0, 1))
        box = (max(0, int(cx - r)), max(0, int(cy - r)), min(width - 1, int(cx + r)), min(height - 1, int(cy + r)))
        objects.append(SmearObject("WBC", box, label))

    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(4, 8)
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        win = _window(cx, cy, r + 1, width, height)
        dot = np.clip((r - np.hypot(xx[win] - cx, yy[win] - cy)) / 1.5, 0, 1)
        _paint(img[win], dot, np.array([0.55, 0.40, 0.70], np.float32))
        objects.append(SmearObject("Platelets", (int(cx - r), int(cy - r), int(cx + r), int(cy + r))))

    img = cv2.GaussianBlur(img, (0, 0), 0.8) + np.float32(0.01) * rng.standard_normal(img.shape, dtype=np.float32)
    return SmearFrame(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), objects)


def voc_xml(filename: str, frame: SmearFrame) -> str:
    h, w = frame.image.shape[:2]
    objs = "".join(
        f"\t<object>\n\t\t<name>{escape(o.name)}</name>\n"
        + (f"\t\t<label>{escape(o.label)}</label>\n" if o.label else "")
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


def write_smear_video(path: str | Path, n: int, seed: int = 0, fps: float = 30.0,
                      labels: list[list[str]] | None = None) -> list[list[tuple[int, int, int, int]]]:
    """An MJPEG .avi of ``n`` synthetic smear frames (a camera stand-in); returns each frame's WBC boxes
    (and appends each frame's WBC labels, all/hem, to ``labels`` when given)."""
    if n < 1:
        raise ConfigError("the number of video frames must be >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    truth = []
    try:
        for i in range(n):
            frame = synth_smear(np.random.default_rng([seed, 11, i]))
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            truth.append([o.box for o in frame.objects if o.name == "WBC"])
            if labels is not None:
                labels.append([o.label or "" for o in frame.objects if o.name == "WBC"])
    finally:
        writer.release()
    return truth
