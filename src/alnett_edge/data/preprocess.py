"""The one deterministic preprocessing function (numpy + OpenCV only, no torch).

``preprocess(image, spec)`` = ``normalize(prepare(image, spec), spec)``:

* :func:`prepare` — RGB uint8 image of any size -> pad to a centred black square -> resize to the
  card's input size (INTER_AREA when shrinking, INTER_LINEAR when enlarging). Output: uint8 HxWx3 RGB.
* :func:`normalize` — uint8 -> float32 ``(x / 255 - mean) / std`` (the card's mean/std, or the cell's
  own with ``stain = "cell"``); with background masking, pixels
  whose brightest channel is <= ``mask_threshold`` become exactly 0; then HWC -> CHW (or kept HWC when
  the card says NHWC).

Training caches :func:`prepare` output and applies augmentation + :func:`normalize`; evaluation,
calibration, export, bench and the device runtime call :func:`preprocess`. Both paths give identical
bits for the same image. Images enter as RGB; :func:`load_image` (the one decoder, with a strictness
flag) decodes a file to RGB.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.card import InputSpec
from alnett_edge.errors import DataError

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: largest image decoded (width x height): a 20-megapixel microscope camera fits; a decompression bomb
#: (a 20000 x 20000 PNG of a few kB) is refused from its header, before any pixel is decoded
MAX_IMAGE_PIXELS = 50_000_000
#: per-cell standardisation (``stain = "cell"``) divides by at least this std ([0, 1] scale), so a flat
#: cell does not blow up
CELL_STD_FLOOR = 0.01


def decode_image_file(path: str | Path, what: str = "image") -> np.ndarray:
    """The one bounded decoder: the header's size is checked (Pillow reads only the header) before
    OpenCV decodes the pixels. Returns OpenCV's array (BGR/BGRA/gray, as stored); a missing,
    unreadable, undecodable or oversized file is a one-line :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    pixels, size = 0, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we say it ourselves, below
            with Image.open(path) as header:  # lazy: parses the header only
                pixels, size = header.size[0] * header.size[1], "{}x{}".format(*header.size)
    except Image.DecompressionBombError:  # Pillow's own limit (about 179 megapixels) is above ours
        pixels, size = MAX_IMAGE_PIXELS + 1, "over 179 megapixels"
    except (UnidentifiedImageError, OSError, ValueError):
        pass  # not a format Pillow knows: OpenCV decides below (and refuses what it cannot read)
    if pixels > MAX_IMAGE_PIXELS:
        raise DataError(f"{what} {path} is {size} pixels (from its header), over the "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixel limit; refused before decoding")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error:
        img = None
    if img is None:
        raise DataError(f"cannot decode {what} {path} (not an image file?)")
    return img


#: an image whose sides lie within the training images' sides divided / multiplied by this is taken
#: (resized to the card's input like every image); beyond it, it is refused as the wrong folder
SIZE_TOLERANCE = 1.5


def training_sides(training: dict[str, Any]) -> tuple[int, int] | None:
    """The smallest and largest side of the images a card was trained on (``training.source_sides``,
    or its one ``source_size`` "HxW" on cards from before the range was recorded); None: unknown."""
    sides = training.get("source_sides")
    if isinstance(sides, (list, tuple)) and len(sides) == 2 and all(isinstance(v, int) and v > 0 for v in sides):
        return int(sides[0]), int(sides[1])
    size = training.get("source_size")
    if isinstance(size, str) and re.fullmatch(r"\d+x\d+", size):
        h, w = map(int, size.split("x"))
        return min(h, w), max(h, w)
    return None


def size_refusal(shape: tuple[int, ...], sides: tuple[int, int] | None) -> str | None:
    """Why an image of this shape is not one of the model's cells, or None: the one size rule of every
    consumer (predict, bench, calibration, verify): its sides within the training images' smallest
    and largest side, each widened by :data:`SIZE_TOLERANCE`."""
    if sides is None:
        return None
    lo, hi = sides[0] / SIZE_TOLERANCE, sides[1] * SIZE_TOLERANCE
    if lo <= min(shape[:2]) and max(shape[:2]) <= hi:
        return None
    trained = f"{sides[0]}" if sides[0] == sides[1] else f"{sides[0]}-{sides[1]}"
    return (f"is {shape[0]}x{shape[1]}, outside the sides of the cell images the model was trained on "
            f"({trained} px; {lo:.0f}-{hi:.0f} accepted, every image is resized to the model's input)")


def load_image(path: str | Path, strict: bool = False, expected_size: tuple[int, int] | None = None,
               allow_any_size: bool = False, what: str = "image") -> np.ndarray:
    """The one way an image file becomes an RGB uint8 HxWx3 array (through :func:`decode_image_file`).

    ``strict=False`` (the model's own training data, wherever it is read again: training, the gate,
    calibration from the training split, sheets): grayscale, RGBA and 16-bit are converted.
    ``strict=True`` (images a user brings to a trained model: predict, bench, calibrate/verify
    folders): 3-channel colour only (grayscale or RGBA cells mean the wrong folder or a broken export)
    and, when ``expected_size`` (:func:`training_sides` of the card) is known, sides within that range
    (:func:`size_refusal`) unless ``allow_any_size``. Every refusal is a one-line :class:`DataError`."""
    img = decode_image_file(path, what)
    if not strict:
        return to_rgb(img, source=str(path))
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels != 3:
        raise DataError(f"{what} {path} has {channels} channel(s); RGB cell images (3 channels) are needed")
    refusal = None if allow_any_size else size_refusal(img.shape, expected_size)
    if refusal:
        raise DataError(f"{what} {path} {refusal}: the wrong folder? (--any-size uses it anyway)")
    return to_rgb(img, str(path))


def to_rgb(img: np.ndarray, source: str = "image") -> np.ndarray:
    """Any OpenCV decode result (gray, BGR, BGRA, 16-bit) -> RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise DataError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DataError(f"{source}: unsupported image shape {img.shape}")


def check_rgb(image: np.ndarray, source: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise DataError(f"{source}: expected an RGB uint8 HxWx3 image, got shape {shape} dtype {dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise DataError(f"{source}: image of {image.shape[1]}x{image.shape[0]} pixels is too small")


def prepare(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pad to a centred black square and resize to the input size. Returns uint8 RGB HxWx3."""
    check_rgb(image)
    h, w = image.shape[:2]
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        image = cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    out_h, out_w = spec.size
    if image.shape[0] == out_h and image.shape[1] == out_w:
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if image.shape[0] > out_h else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interp)


def foreground(image: np.ndarray, threshold: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A uint8 HxWx3 image's channel planes and its foreground mask (255 where the brightest channel is
    above ``threshold``: the card's ``mask_threshold``, the cell on its black canvas)."""
    planes = list(cv2.split(np.ascontiguousarray(image)))
    return planes, cv2.compare(cv2.max(cv2.max(planes[0], planes[1]), planes[2]), threshold, cv2.CMP_GT)


def normalize(prepared: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 tensor in the card's colour order and layout (CHW or HWC). With
    ``spec.stain == "cell"`` each channel is standardised by the cell's own foreground mean and std
    (population std, OpenCV's ``meanStdDev`` under the foreground mask); with "opponent" each of the
    cell's :func:`opponent_planes` is.

    Per channel plane with OpenCV (split, a mask from the brightest channel, one pass of statistics):
    0.6-0.7 ms for a 224 px cell on 2 AVX2 cores, against 5-6 ms for the same arithmetic on the
    interleaved array in numpy (the daemon's crop stage and training's data loader both run it)."""
    img = np.ascontiguousarray(prepared if spec.color_order == "RGB" else prepared[..., ::-1])
    planes, fg = foreground(img, spec.mask_threshold)
    own = spec.stain in ("cell", "opponent") and cv2.countNonZero(fg) >= 16  # the cell's own statistics
    if spec.stain == "opponent":  # see opponent_planes; planes in this order whatever color_order
        planes = opponent_planes(prepared)
        stats = [cv2.meanStdDev(x, mask=fg) for x in planes] if own else []
        mean = np.array([m[0, 0] for m, _ in stats] or [0.0] * 3, np.float32)
        std = np.maximum(np.array([sd[0, 0] for _, sd in stats] or [1.0] * 3, np.float32), np.float32(CELL_STD_FLOOR))
    elif own:
        m, s = cv2.meanStdDev(img, mask=fg)
        mean = (m.ravel() / 255.0).astype(np.float32)
        std = np.maximum((s.ravel() / 255.0).astype(np.float32), np.float32(CELL_STD_FLOOR))
    else:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        if spec.color_order == "BGR":
            mean, std = mean[::-1], std[::-1]
    background = fg == 0 if spec.mask_background else None
    out = []
    for c, plane in enumerate(planes):
        x = plane.astype(np.float32) * np.float32(1.0 / 255.0) if plane.dtype == np.uint8 else plane
        x -= mean[c]
        x /= std[c]
        if background is not None:
            x[background] = 0.0
        out.append(x)
    return np.stack(out) if spec.layout == "NCHW" else np.ascontiguousarray(cv2.merge(out))


def opponent_planes(rgb: np.ndarray) -> list[np.ndarray]:
    """A uint8 RGB image's opponent planes (float32, 0..1 scale): (R - G) / sqrt 2, (R + G - 2B) / sqrt 6
    and the value max(R, G, B). ``stain = "opponent"`` standardises each by the cell's own foreground
    mean and std: a saturation gain (a camera's setting, a paler stain batch) moves every channel towards
    the pixel's brightest by the same share, so it scales the first two alike and leaves the third, and
    the model never sees how saturated a cell is, only its colour pattern; a brightness gain cancels as
    with "cell"."""
    r, g, b = (p.astype(np.float32) * np.float32(1.0 / 255.0) for p in cv2.split(np.ascontiguousarray(rgb)))
    return [cv2.addWeighted(r, 1 / np.sqrt(2), g, -1 / np.sqrt(2), 0.0),
            cv2.addWeighted(cv2.addWeighted(r, 1 / np.sqrt(6), g, 1 / np.sqrt(6), 0.0), 1.0, b, -2 / np.sqrt(6), 0.0),
            cv2.max(cv2.max(r, g), b)]


def preprocess(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """RGB uint8 image -> model input (one image, no batch axis)."""
    return normalize(prepare(image, spec), spec)



def tta_views(batch: np.ndarray, spec: InputSpec) -> list[np.ndarray]:
    """The views of a preprocessed batch (``spec.layout``) that ``spec.tta`` asks for, the batch first."""
    if spec.tta == "none":
        return [batch]
    h_ax, w_ax = (2, 3) if spec.layout == "NCHW" else (1, 2)
    views = [batch, np.flip(batch, w_ax), np.flip(batch, h_ax), np.flip(batch, (h_ax, w_ax))]
    if spec.tta == "d4":
        order = list(range(4))
        order[h_ax], order[w_ax] = w_ax, h_ax
        views += [v.transpose(order) for v in views]
    return [np.ascontiguousarray(v) for v in views]


def with_tta(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``run(batch)`` (logits, N x classes) under the card's test-time augmentation: every view in one
    call, then the mean of the views' logits per cell (so the calibration temperature and the decision
    see one logit vector per cell, as without TTA)."""
    views = tta_views(batch, spec)
    if len(views) == 1:
        return run(batch)
    logits = np.asarray(run(np.concatenate(views)))
    return logits.reshape(len(views), len(batch), -1).mean(axis=0)
