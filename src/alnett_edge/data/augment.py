"""Training augmentation on prepared (uint8 RGB, input-size) cell images. numpy, OpenCV and
scikit-image (its HED stain space); the training side only.

What a cell on a slide can look like and still be the same cell:
- any orientation: a flip and a rotation (a cell has no up), with a small zoom (``scale``: the
  physical-scale contract allows the spread of a microscope's calibration, not more). By default the
  rotation is by right angles, which resamples nothing; ``rotate`` turns any angle on;
- another stain batch: the haematoxylin, eosin and DAB concentrations of the cell pixels scaled and
  shifted in scikit-image's HED space (Tellez et al. 2018), plus a lamp brightness gain;
- another camera's colour (off by default, ``train --colour-jitter HUE,SAT``): the hue of the cell
  pixels turned by up to ``hue`` degrees and their saturation scaled by up to ``saturation`` (OpenCV's
  HSV). Per-cell standardisation (``stain = "cell"``) cancels a gain per channel, not a mix of
  channels, and these are mixes. On all-fields (issue 32, docs/microscope.md) the jitter halved the
  loss of field accuracy at a hue turned by 10 degrees; a saturation gain it could not undo (the
  classes differ in saturation: jitter widens each class's spread, not the gap between them), which
  ``stain = "opponent"`` does. Off by default because on the demo's synthetic cells, whose classes
  differ partly by colour, it cost ``alnett-tiny`` 5 points (0.85 -> 0.80 in 12 epochs);
- another focus and sensor (off by default): a Gaussian blur of up to ``blur_px`` pixels some of the
  time, and Gaussian pixel noise of up to ``noise`` grey levels.
Why the focus and sensor ones are off: the bilinear resampling of a rotation by any angle, the blur and the noise each wash
out fine chromatin texture at small inputs. On the demo's 600 synthetic cells (``alnett-tiny``, 15
epochs) validation accuracy fell from 0.942 (right angles, none of them) to 0.889 (any angle), 0.895
(blur and noise) and 0.858 (all three).
The black background stays black, so the model's background mask sees the same thing in training and
on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.color import hed2rgb, rgb2hed


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rotate: bool = False  # by any angle (False: the four right angles only; see the module doc)
    scale: float = 0.10  # zoom factor drawn from [1 - scale, 1 + scale]
    hed: float = 0.10  # stain jitter: each HED concentration x U(1 - hed, 1 + hed) + U(-hed, hed) / 10
    brightness: float = 0.10  # global gain std
    hue: float = 0.0  # hue turned by U(-hue, hue) degrees (train --colour-jitter; the all-fields recipe: 12)
    saturation: float = 0.0  # saturation x U(1 - saturation, 1 + saturation) (the all-fields recipe: 0.35)
    blur_p: float = 0.0  # how often a cell is blurred (e.g. 0.25) ...
    blur_px: float = 1.0  # ... with a Gaussian of sigma U(0.3, blur_px) pixels at the model's scale
    noise: float = 0.0  # Gaussian pixel noise, std U(0, noise) grey levels (e.g. 3), on the cell pixels


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    out = image
    if cfg.flips and rng.random() < 0.5:
        out = out[:, ::-1]
    angle = float(rng.uniform(0, 360)) if cfg.rotate else 90.0 * int(rng.integers(4))
    zoom = float(rng.uniform(1 - cfg.scale, 1 + cfg.scale)) if cfg.scale > 0 else 1.0
    if angle or zoom != 1.0:
        out = _warp(np.ascontiguousarray(out), angle, zoom)
    fg = out.max(axis=2) > 0
    if not fg.any():
        return np.ascontiguousarray(out)
    px = out[fg].astype(np.float32)
    if cfg.hue > 0 or cfg.saturation > 0:
        px = _hsv_jitter(px, rng, cfg.hue, cfg.saturation)
    if cfg.hed > 0:
        px = _hed_jitter(px, rng, cfg.hed)
    if cfg.brightness > 0:
        px *= np.float32(rng.normal(1.0, cfg.brightness))
    if cfg.noise > 0:
        px += rng.normal(0.0, rng.uniform(0, cfg.noise), px.shape).astype(np.float32)
    out = out.copy()
    out[fg] = np.clip(np.rint(px), 1, 255).astype(np.uint8)  # >= 1: a cell pixel never becomes background
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(0.3, max(cfg.blur_px, 0.3)))
        out = cv2.GaussianBlur(out, (0, 0), sigma)
        out[~fg] = 0
    return np.ascontiguousarray(out)


def _hsv_jitter(px: np.ndarray, rng: np.random.Generator, hue: float, saturation: float) -> np.ndarray:
    """Cell pixels (N x 3 float, 0..255) with their hue turned and their saturation scaled."""
    hsv = cv2.cvtColor(np.clip(px, 0, 255)[None] / np.float32(255.0), cv2.COLOR_RGB2HSV)  # H in degrees, S and V 0..1
    hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-hue, hue))) % np.float32(360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(1 - saturation, 1 + saturation)), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] * np.float32(255.0)


def _hed_jitter(px: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Cell pixels (N x 3 float, 0..255) with their stain concentrations jittered in HED space. The change
    is added to the pixels (not their HED round trip), so zero jitter returns them exactly."""
    rgb = px[None] / 255.0
    hed = rgb2hed(rgb)
    alpha = rng.uniform(1 - s, 1 + s, 3)
    beta = rng.uniform(-s, s, 3) / 10.0
    delta = hed2rgb(hed * alpha + beta) - hed2rgb(hed)
    return px + (delta[0] * 255.0).astype(np.float32)


def _warp(image: np.ndarray, angle: float, zoom: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, zoom)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
