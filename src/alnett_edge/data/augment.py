"""Training augmentation on prepared (uint8 RGB, input-size) cell images. numpy + OpenCV only.

Flips, 90 degree rotations, scale jitter (zoom about the centre, black padding) and a small stain /
colour jitter applied to the cell only, so the black background stays black for the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    scale: float = 0.10  # zoom factor drawn from [1 - scale, 1 + scale]
    color: float = 0.08  # per-channel gain std (stain jitter)
    brightness: float = 0.10  # global gain std


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    out = image
    if cfg.flips and rng.random() < 0.5:
        out = out[:, ::-1]
    if cfg.rot90:
        out = np.rot90(out, int(rng.integers(4)))
    if cfg.scale > 0:
        out = _zoom(np.ascontiguousarray(out), float(rng.uniform(1 - cfg.scale, 1 + cfg.scale)))
    if cfg.color > 0 or cfg.brightness > 0:
        gain = rng.normal(1.0, cfg.color, size=3) * rng.normal(1.0, cfg.brightness)
        fg = out.max(axis=2, keepdims=True) > 0
        jittered = np.clip(out.astype(np.float32) * gain.astype(np.float32), 0, 255).astype(np.uint8)
        out = np.where(fg, jittered, out)
    return np.ascontiguousarray(out)


def _zoom(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0.0, factor)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
