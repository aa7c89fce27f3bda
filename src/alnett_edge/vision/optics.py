"""Optics in physical units: the pixel size of a microscope camera, its field of view, and how to
estimate both from the frames themselves.

Every size the detector uses is in µm or µm²; one number, ``um_per_px`` (µm of the specimen per
camera pixel), turns them into pixels for a given camera. It comes from, in this order: the
``[optics]`` config (``um_per_px``, or ``camera_pixel_um / magnification``), or an estimate from the
frames (:func:`estimate_um_per_px`, what ``alnett-edge optics calibrate`` prints and the daemon does at
start-up when the config has none).

The estimate uses red cells: they fill every smear and have one size (human: ~7.5-8 µm across, taken
here as :data:`RBC_UM` = 7.8). Their diameter in pixels (:func:`rbc_diameter_px`) is a granulometry
of the frame's green optical density (haemoglobin absorbs green, whatever the stain):

1. a first scale from the autocorrelation of the saturation (:func:`acf_diameter_px`: for a field of
   discs it falls to half its height at a lag of ~0.40 diameters; noisy, 10-20 % a frame);
2. the frame resampled so that a red cell of that scale has a radius of :data:`GRANULE_R` px; the
   density stretched around its Otsu level (computed without the top 5 %, the white cells), so that a
   pale, dome-shaped red cell and a flat, deeply stained one both reach full height at their edge;
3. pale centres filled: a dim region enclosed by stain and smaller than :data:`PALE_CENTRE_AREA` of a
   cell's disc (grayscale reconstruction, started from a closing); a larger gap between packed cells
   keeps its value;
4. openings by discs of growing radius: the radius that removes the most density (the peak of the
   pattern spectrum, interpolated) is the red cells' inscribed radius; twice it is the diameter. When
   the peak lies at the edge of the radii searched, the search is repeated at that scale.

No constant is fitted to a dataset. Measured over every frame of each real set
(``benchmarks/rbc_size.py``), one frame's estimate varies by 4-7 % (MAD), where the autocorrelation
alone varied by 10-19 %. Another species or an anaemic sample has red cells of another size: set
``rbc_um`` (pig: ~6 µm).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from alnett_edge.errors import ConfigError, DataError

T = TypeVar("T")

#: human red-cell diameter in µm (normal range 7.5-8)
RBC_UM = 7.8
#: the lag (in red-cell diameters) where the saturation autocorrelation of ideal discs falls to half
#: its height; the autocorrelation only gives the granulometry its first scale
ACF_HALF = 0.404
#: the autocorrelation works on a frame resampled to this long side (the result does not depend on it)
ACF_SIDE = 256
#: below this diameter (px) in the resampled frame the autocorrelation cannot resolve the cells
MIN_ACF_PX = 8.0
#: the granulometry resamples a frame so that a red cell has this radius in px
GRANULE_R = 8.0
#: a dim region enclosed by stain and smaller than this share of a red cell's disc is its pale centre
PALE_CENTRE_AREA = 0.3
#: the stretch's half-width around the Otsu level, as a share of the density's p5-p95 range
STRETCH = 0.1
#: a pale centre lies at least this far (density, 0..255) below the stain around it
PALE_DEPTH = 8
#: red cells smaller than this (px across) are not measured: the frame would be resampled beyond use
MIN_RBC_PX = 4.0
#: searches at a new scale when the red-cell size lies at the edge of the radii searched
MAX_PASSES = 4
#: below this saturation spread (0..255) inside the field there are no stained cells to measure
MIN_CONTRAST = 6.0
#: the field of view is found on a copy of at most this many pixels on a side
FOV_SIDE = 160


#: the pixel sizes (µm) a camera on a microscope gives: about 0.02 (100x oil, a small-pixel sensor) to 5 (4x)
UM_PER_PX_RANGE = (0.02, 5.0)


@dataclass(frozen=True)
class OpticsConfig:
    """``[optics]``: give ``um_per_px``, or ``camera_pixel_um`` and ``magnification`` (the total
    magnification onto the sensor), or nothing (estimated from the first frames)."""

    um_per_px: float = 0.0
    magnification: float = 0.0  # total magnification onto the sensor (with camera_pixel_um)
    camera_pixel_um: float = 0.0  # the camera's pixel pitch in µm (with magnification)
    rbc_um: float = RBC_UM  # red-cell diameter used by the estimate
    calibration_frames: int = 8  # frames the daemon estimates from when um_per_px is not given

    def resolve(self) -> float:
        """The pixel size in µm from the config, or 0.0 when it must be estimated from frames."""
        from_optics = 0.0
        if self.magnification or self.camera_pixel_um:
            if not (self.magnification > 0 and self.camera_pixel_um > 0):
                raise ConfigError("[optics] magnification and camera_pixel_um go together: give both or neither")
            from_optics = self.camera_pixel_um / self.magnification
        if self.um_per_px and from_optics and abs(self.um_per_px - from_optics) > 0.05 * self.um_per_px:
            raise ConfigError(f"[optics] um_per_px = {self.um_per_px:g} disagrees with camera_pixel_um / magnification"
                              f" = {from_optics:.4g} (more than 5 %); give one of them")
        um = self.um_per_px or from_optics
        if um and not UM_PER_PX_RANGE[0] <= um <= UM_PER_PX_RANGE[1]:
            raise ConfigError(f"a pixel size of {um:g} µm is not a microscope's (a camera on one sees "
                              f"{UM_PER_PX_RANGE[0]}-{UM_PER_PX_RANGE[1]} µm per pixel: 100x oil to a 4x objective); "
                              "check [optics] / --um-per-px")
        return um


def fov_mask(rgb: np.ndarray) -> np.ndarray:
    """The field of view: uint8 0/255, 255 where the specimen is visible. An eyepiece camera sees a
    bright disc inside a black vignette; a C-mount camera sees the whole frame (all 255). The field
    is the largest bright region with its holes filled (dark debris inside it stays inside), found on
    a copy at most :data:`FOV_SIDE` pixels on a side (the field is a large shape)."""
    h, w = rgb.shape[:2]
    f = min(1.0, FOV_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else rgb
    r, g, b = cv2.split(small)
    bright = cv2.max(cv2.max(r, g), b)
    level = float(np.percentile(bright, 99))
    mask = (bright > max(20.0, 0.35 * level)).astype(np.uint8) * 255
    if cv2.countNonZero(mask) > 0.995 * mask.size:
        return np.full((h, w), 255, np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n <= 1:
        return np.full((h, w), 255, np.uint8)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = ((labels == biggest) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    if f < 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        out = np.where(out >= 128, 255, 0).astype(np.uint8)
    return out


def disk(px: float) -> np.ndarray:
    """A disc structuring element ``px`` pixels across (odd, at least 1)."""
    px = max(1, int(round(px)))
    px += 1 - px % 2
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (px, px))


#: a disc this many pixels across or more is grown by a distance transform (linear in the image) instead of
#: a dilation (linear in the disc's area too); both give the same disc but for pixels on its rim
DISTANCE_DILATE_PX = 15


def dilate_disk(mask: np.ndarray, px: float) -> np.ndarray:
    """``mask`` (0/255) dilated by :func:`disk` (``px``): the pixels within the disc's radius of it."""
    across = max(1, int(round(px)))
    across += 1 - across % 2  # disk()'s size
    if across < DISTANCE_DILATE_PX:
        return cv2.dilate(mask, disk(across))
    if not cv2.countNonZero(mask):
        return np.zeros_like(mask)
    dist = cv2.distanceTransform(cv2.bitwise_not(mask), cv2.DIST_L2, 5)
    return cv2.compare(dist, across // 2 + 0.5, cv2.CMP_LE)


def percentile_u8(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` of a uint8 array of any shape (linear interpolation between ranks;
    equal but for the last bit), from its histogram: no sort of every pixel."""
    plane = values if values.ndim == 2 else values.reshape(-1, 1)  # every value, not a first channel's
    cum = np.cumsum(cv2.calcHist([plane], [0], None, [256], [0, 256]).ravel().astype(np.float64))
    rank = q / 100.0 * (cum[-1] - 1)
    lo = int(np.floor(rank))
    v_lo = float(np.searchsorted(cum, lo, side="right"))  # the value at that rank of the sorted pixels
    if rank == lo:
        return v_lo
    return v_lo + (rank - lo) * (float(np.searchsorted(cum, lo + 1, side="right")) - v_lo)


def area_shrink(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)`` for a reduction (``size``: width, height), in
    half the time for one by 2 or more: first by a whole factor (OpenCV's fast path, each output pixel the
    mean of a whole block), then the rest. The frame's last rows and columns short of a whole block are
    left out and the result's edge repeated in their place (less than one output pixel); the second step
    rounds its size as the one step does, so a point lands within half an output pixel of where the one
    step puts it (a blur of the two steps' kernels: about one grey level apart on a real smear)."""
    h, w = rgb.shape[:2]
    k = int(min(w / size[0], h / size[1]))
    if k < 2:
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    hc, wc = h // k * k, w // k * k
    mid = cv2.resize(rgb[:hc, :wc], (wc // k, hc // k), interpolation=cv2.INTER_AREA)
    part = (min(size[0], round(wc * size[0] / w)), min(size[1], round(hc * size[1] / h)))
    out = mid if part == (mid.shape[1], mid.shape[0]) else cv2.resize(mid, part, interpolation=cv2.INTER_AREA)
    if part != tuple(size):
        out = cv2.copyMakeBorder(out, 0, size[1] - part[1], 0, size[0] - part[0], cv2.BORDER_REPLICATE)
    return out


def histogram_percentiles(values: np.ndarray, mask: np.ndarray | None, qs: tuple[float, ...]) -> list[float]:
    """Percentiles of a uint8 image (inside ``mask``) from its histogram: no sort of every pixel."""
    hist = cv2.calcHist([values], [0], mask, [256], [0, 256]).ravel()
    cum = np.cumsum(hist)
    if cum[-1] == 0:
        return [0.0 for _ in qs]
    return [float(np.searchsorted(cum, q / 100.0 * cum[-1])) for q in qs]


def acf_diameter_px(rgb: np.ndarray) -> float | None:
    """A first, noisy red-cell diameter in px from the autocorrelation of the saturation (the scale
    :func:`rbc_diameter_px` starts from), or None when the frame shows no cells to measure.

    The frame is measured resampled to :data:`ACF_SIDE` on its long side, and, when it is larger, in a
    full-resolution window of that side at its centre. Cells narrower than :data:`MIN_ACF_PX` in the
    resampled frame (a large sensor at a low magnification) cannot be resolved there: the window's
    value is used when it sees at least six cells across. The window is always measured, and the cells'
    size judged from it: the resampled frame's own value is then meaningless (on a 2000x2400 mosaic of
    11 px cells it read 17 px at 256 wide, 123 px at full size), so it cannot decide alone."""
    h, w = rgb.shape[:2]
    d = _acf_diameter_px(rgb)
    if min(h, w) > ACF_SIDE:
        y, x = (h - ACF_SIDE) // 2, (w - ACF_SIDE) // 2
        fine = _acf_diameter_px(rgb[y : y + ACF_SIDE, x : x + ACF_SIDE])
        if fine is not None and fine <= ACF_SIDE / 6 and (d is None or fine * ACF_SIDE / max(h, w) < MIN_ACF_PX):
            d = fine
    return d


def _acf_diameter_px(rgb: np.ndarray) -> float | None:
    h, w = rgb.shape[:2]
    s = ACF_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    inside = cv2.erode(fov_mask(small), np.ones((5, 5), np.uint8)) > 0
    if inside.sum() < 0.1 * inside.size:
        return None
    sat = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32), (0, 0), 0.7)
    values = sat[inside]
    if values.std() < MIN_CONTRAST:
        return None
    f = np.where(inside, sat - values.mean(), 0.0).astype(np.float32)
    weight = inside.astype(np.float32)
    hh, ww = f.shape
    shape = (2 * hh, 2 * ww)
    spec, wspec = np.fft.rfft2(f, shape), np.fft.rfft2(weight, shape)
    acf = np.fft.fftshift(np.fft.irfft2(spec * np.conj(spec), shape))
    pairs = np.fft.fftshift(np.fft.irfft2(wspec * np.conj(wspec), shape))
    valid = pairs > 0.3 * pairs.max()  # lags with enough overlapping pixels
    acf = np.where(valid, acf / np.maximum(pairs, 1.0), 0.0)
    yy, xx = np.indices(acf.shape)
    radius = np.hypot(yy - hh, xx - ww).astype(int)
    max_lag = min(hh, ww) // 2
    counts = np.bincount(radius[valid], minlength=max_lag)[:max_lag]
    profile = np.bincount(radius[valid], acf[valid], minlength=max_lag)[:max_lag] / np.maximum(counts, 1)
    if profile[0] <= 0:
        return None
    profile = profile / profile[0]
    first_min = 1
    while first_min < max_lag - 1 and profile[first_min] > profile[first_min + 1]:
        first_min += 1
    base = profile[first_min]
    if first_min >= max_lag - 1 or base > 0.8:
        return None  # no decay to a floor: no cell-sized structure in the frame
    norm = (profile - base) / (1.0 - base)
    j = int(np.argmax(norm < 0.5))
    lag = j - 1 + (norm[j - 1] - 0.5) / max(1e-6, norm[j - 1] - norm[j])
    return float(lag / ACF_HALF / s)


def green_density(rgb: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The green channel's optical density against the field's bright background (its 95th percentile
    inside the field of view), float32 on 0..255 (density 1 = 255): red cells absorb green."""
    green = rgb[..., 1].astype(np.float32) + 1.0
    bright = float(np.percentile(green[inside], 95))
    return np.clip(np.log(bright / green) * 255.0, 0, 255)


def _fill_pale_centres(img: np.ndarray, max_area: float) -> np.ndarray:
    """Dim regions enclosed by brighter ones and smaller than ``max_area`` px raised to their rim
    (grayscale reconstruction by erosion, started from a closing so that it converges in a few steps)."""
    closing = disk(2 * np.ceil(np.sqrt(max_area / np.pi)) + 1)
    marker = cv2.max(img, cv2.morphologyEx(img, cv2.MORPH_CLOSE, closing))
    marker[0], marker[-1], marker[:, 0], marker[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    while True:
        nxt = cv2.max(cv2.erode(marker, cross), img)
        if not cv2.countNonZero(cv2.absdiff(nxt, marker)):
            break
        marker = nxt
    raised = cv2.compare(cv2.subtract(marker, img), PALE_DEPTH, cv2.CMP_GT)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(raised)
    small = stats[:, cv2.CC_STAT_AREA] < max_area
    small[0] = False
    return np.where(small[labels], marker, img)


def _granulometry(rgb: np.ndarray, scale_px: float) -> tuple[float, bool] | None:
    """The red-cell diameter in px searched around ``scale_px``, and whether it lies at the edge of the
    radii searched (then search again at that scale); None without stained cells in the field."""
    h, w = rgb.shape[:2]
    if not MIN_RBC_PX <= scale_px <= min(h, w) / 2:
        return None  # cells too small to measure, or too few in the frame
    s = GRANULE_R / (scale_px / 2)
    small = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    inside = cv2.erode(fov_mask(small), np.ones((5, 5), np.uint8)) > 0
    if inside.sum() < 0.1 * inside.size:
        return None
    density = green_density(small, inside)
    v = density[inside]
    v = v[v < np.percentile(v, 95)]  # without the white cells
    if v.size < 64:
        return None
    t, _ = cv2.threshold(v.astype(np.uint8).reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lo, hi = np.percentile(v, [5, 95])
    img = np.clip(128 + (density - t) * 127 / max(1.0, STRETCH * (hi - lo)), 0, 255).astype(np.uint8)
    img[~inside] = 0
    img = _fill_pale_centres(img, PALE_CENTRE_AREA * np.pi * GRANULE_R**2)
    radii = np.arange(int(GRANULE_R / 2), int(1.8 * GRANULE_R) + 2)
    mass = np.array([cv2.sumElems(cv2.morphologyEx(img, cv2.MORPH_OPEN, disk(2 * r + 1)))[0] for r in radii])
    removed = mass[:-1] - mass[1:]
    k = int(np.argmax(removed))
    if removed[k] <= 0:
        return None
    off = 0.0
    if 0 < k < len(removed) - 1:
        a, b, c = removed[k - 1], removed[k], removed[k + 1]
        off = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return float(2 * (radii[k] + 0.5 + off) / s), k in (0, len(removed) - 1)


def rbc_diameter_px(rgb: np.ndarray) -> float | None:
    """The typical red-cell diameter in this frame's pixels (the granulometry in the module's notes),
    or None when the frame shows no cells to measure (a blank field, a frame outside the slide) or no
    one size of them."""
    scale = acf_diameter_px(rgb)
    for _ in range(MAX_PASSES):
        if scale is None:
            return None
        found = _granulometry(rgb, scale)
        if found is None:
            return None
        scale, at_edge = found
        if not at_edge:
            return scale
    return None


@dataclass
class Calibration:
    um_per_px: float
    rbc_px: float  # median red-cell diameter in pixels
    spread: float  # median absolute deviation of the per-frame values, relative to their median
    frames: int  # frames measured
    frames_without_cells: int
    per_frame_px: list[float]
    rbc_um: float
    ci95: tuple[float, float] = (0.0, 0.0)  # of um_per_px: a bootstrap of the median over the frames

    def to_dict(self) -> dict[str, object]:
        return {"um_per_px": round(self.um_per_px, 5), "rbc_px": round(self.rbc_px, 2),
                "spread": round(self.spread, 4), "frames": self.frames,
                "frames_without_cells": self.frames_without_cells, "rbc_um": self.rbc_um,
                "um_per_px_ci95": [round(v, 5) for v in self.ci95],
                "per_frame_rbc_px_p10_p90": [round(float(v), 2) for v in np.percentile(self.per_frame_px, [10, 90])]}


#: frames the pixel size is estimated from when the optics are not given (field-eval, harvest)
CALIBRATION_FRAMES = 40


def calibration_sample(items: Sequence[T], n: int = CALIBRATION_FRAMES) -> Sequence[T]:
    """Every ``len // n``-th item: the frames of a folder the pixel size is estimated from."""
    return items[:: max(1, len(items) // n)]


def estimate_um_per_px(frames: Iterable[np.ndarray], rbc_um: float = RBC_UM) -> Calibration:
    """The pixel size from red cells over several frames (their median); a one-line
    :class:`DataError` when none of the frames shows red cells."""
    values, empty = [], 0
    for rgb in frames:
        d = rbc_diameter_px(rgb)
        if d is None:
            empty += 1
        else:
            values.append(d)
    if not values:
        raise DataError(f"none of the {empty} frame(s) shows red cells to measure (a blank field or no smear?); "
                        "give the pixel size instead: --um-per-px or [optics] um_per_px")
    arr = np.asarray(values)
    med = float(np.median(arr))
    spread = float(np.median(np.abs(arr - med)) / med)
    boot = np.median(np.random.default_rng(0).choice(arr, (500, len(arr))), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Calibration(rbc_um / med, med, spread, len(values), empty, values, rbc_um, (rbc_um / hi, rbc_um / lo))


def read_source_frames(spec: str, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of a capture source (a camera, a video, a folder), for calibration."""
    from alnett_edge.capture.base import FrameSkipped, SourceSettings, make_source

    frames: list[np.ndarray] = []
    tries = 0
    with make_source(spec, SourceSettings(timeout=5.0)) as source:
        while len(frames) < n and tries < 3 * n:
            tries += 1
            try:
                rgb = source.read()
            except FrameSkipped:
                continue
            if rgb is None:
                break
            frames.append(rgb)
    if not frames:
        raise DataError(f"{spec} gave no frames")
    return frames
