"""Training the learned nucleus-centre detector (``alnett-edge detector train``): from annotated frames
(Pascal VOC or YOLO boxes, or a points CSV of cells counted by hand, as ``field-eval`` reads them) and
generated crowded fields, each frame resampled to the card's µm per pixel (its pixel size estimated
from the red cells per folder, as the daemon does, unless given). Random 96-pixel crops, quarter turns,
mirrors, a ±25 % zoom (the pixel size's estimate is off by that much) and colour jitter; CenterNet's
focal loss on a heat map of Gaussian peaks at the cells' centres, an L1 loss on the log box size where a
cell has a box. ``init`` fine-tunes an existing detector (a lab's marked fields mixed with the sets it
was trained on, so it does not forget other optics: docs/engineering/crowded.md measures how much)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from alnett_edge.card import CentreCard
from alnett_edge.errors import DataError
from alnett_edge.model.centres import centre_net
from alnett_edge.vision.annotations import read_truth
from alnett_edge.vision.centres import channel_medians, net_input, pad_to, resample
from alnett_edge.vision.fieldeval import folder_scale
from alnett_edge.vision.optics import OpticsConfig

log = logging.getLogger(__name__)

CROP = 96  # training crop side, input pixels
SIGMA_UM = 1.8  # the spread of a centre's peak in the target


@dataclass
class Frame:
    rgb: np.ndarray  # at the card's µm per pixel
    centres: np.ndarray  # N x 2, its pixels
    sizes_um: np.ndarray | None  # N x 2 (w, h) µm, None for points
    name: str


def load_frames(source: Path, card: CentreCard, um_per_px: float | None = None, images: Path | None = None,
                names: set[str] | None = None, spaced: int | None = None) -> list[Frame]:
    """The annotated frames of ``source`` at the card's scale (``names``: only these image stems;
    ``spaced``: only that many of them, evenly spaced, chosen before any image is read)."""
    _, truths = read_truth(source, images)
    if names is not None:
        truths = [t for t in truths if t.image.stem in names]
    if spaced is not None and truths:
        truths = [truths[k] for k in np.linspace(0, len(truths) - 1, min(len(truths), spaced)).round().astype(int)]
    if not truths:
        raise DataError(f"{source}: no annotated frames")
    groups: dict[Path, list] = {}
    for t in truths:
        groups.setdefault(t.image.parent, []).append(t)
    out = []
    for group in groups.values():
        um = um_per_px or folder_scale([t.image for t in group], OpticsConfig())[0]
        for t in group:
            bgr = cv2.imread(str(t.image))
            if bgr is None:
                raise DataError(f"{t.image}: not a readable image")
            f = um / card.um_per_px
            cs = np.array(t.centres, np.float32).reshape(-1, 2) * f
            sz = np.array([[b[2] - b[0], b[3] - b[1]] for b in t.boxes], np.float32) * um if t.boxes else None
            out.append(Frame(resample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), um, card.um_per_px), cs, sz, t.image.name))
    return out


def augment(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Hue, saturation, brightness and per-channel gain jitter, noise, sometimes a blur."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(-14, 15)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.6), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.75, 1.2), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = out * rng.uniform(0.9, 1.1, 3) + rng.normal(0, 3, out.shape)
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    return np.clip(out, 0, 255).astype(np.uint8)


def sample(rng: np.random.Generator, fr: Frame, card: CentreCard) -> tuple[np.ndarray, ...]:
    """One training crop of a frame: (input, heat map, log sizes, where a size is known)."""
    zoom = rng.uniform(0.8, 1.25)
    rgb = cv2.resize(fr.rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    cs = fr.centres * zoom
    h, w = rgb.shape[:2]
    ph, pw = max(0, CROP - h), max(0, CROP - w)
    if ph or pw:
        rgb = pad_to(rgb, ph, pw, channel_medians(rgb))
        h, w = rgb.shape[:2]
    y0, x0 = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    rgb = rgb[y0:y0 + CROP, x0:x0 + CROP]
    cs = cs - [x0, y0]
    k = int(rng.integers(4))
    rgb = np.rot90(rgb, k)
    for _ in range(k):  # (x, y) -> (y, CROP - x) per quarter turn counter-clockwise
        cs = np.stack([cs[:, 1], CROP - cs[:, 0]], 1) if len(cs) else cs
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
        cs = np.stack([CROP - cs[:, 0], cs[:, 1]], 1) if len(cs) else cs
    sizes = fr.sizes_um[:, ::-1] if fr.sizes_um is not None and k % 2 else fr.sizes_um
    rgb = augment(rng, np.ascontiguousarray(rgb))
    o = CROP // card.stride
    heat = np.zeros((o, o), np.float32)
    size = np.zeros((2, o, o), np.float32)
    known = np.zeros((o, o), np.float32)
    yy, xx = np.mgrid[0:o, 0:o].astype(np.float32) + 0.5
    sig = SIGMA_UM / card.um_per_px / card.stride
    for i, (x, y) in enumerate(cs):
        gx, gy = x / card.stride, y / card.stride
        if not (0 <= gx < o and 0 <= gy < o):
            continue
        heat = np.maximum(heat, np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sig * sig)))
        ix, iy = int(gx), int(gy)
        heat[iy, ix] = 1.0
        if sizes is not None:
            size[:, iy, ix] = np.log(sizes[i] / card.size_ref_um)
            known[iy, ix] = 1.0
    return net_input(rgb, card), heat, size, known


def focal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss: a peak's pixel is 1 in the target, the pixels around it are down-weighted
    by their Gaussian value."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred ** 2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def train_centres(sets: list[tuple[list[Frame], float]], card: CentreCard, steps: int = 3000, seed: int = 0,
                  init: torch.nn.Module | None = None, lr: float = 3e-3, batch: int = 32,
                  progress: Callable[[int, float], None] | None = None) -> torch.nn.Module:
    """A network trained on ``sets`` ((frames, weight): a crop's set drawn with that weight, its frame at
    random); ``init``: a network to fine-tune (else a fresh one for the card's arch)."""
    sets = [(frames, w) for frames, w in sets if frames and w > 0]
    if not sets:
        raise DataError("no frames to train the centre detector on")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = init if init is not None else centre_net(card)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    weights = np.array([w for _, w in sets], np.float64)
    weights /= weights.sum()
    t0 = time.time()
    for step in range(steps):
        picks = rng.choice(len(sets), size=batch, p=weights)
        crops = [sample(rng, sets[i][0][rng.integers(len(sets[i][0]))], card) for i in picks]
        x, h, s, m = (torch.from_numpy(np.stack(v)) for v in zip(*crops))
        heat, size = net(x)
        loss = focal_loss(heat[:, 0], h) + \
            0.1 * (F.l1_loss(size, s, reduction="none").sum(1) * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step % 100 == 0 or step == steps - 1):
            progress(step, float(loss.item()))
    log.info("centre detector: %d steps in %.0f s", steps, time.time() - t0)
    return net.eval()


#: the heat-map thresholds a gate tries (``detector train --gate``)
GATE_THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def gate_thresholds(model: Path, frames: Path, images: Path | None = None, um_per_px: float | None = None,
                    max_extra: float = 0.10) -> tuple[float | None, list[dict]]:
    """The detector run as the daemon runs it (its centres seeding the nuclei) on marked frames kept out
    of its training, at each of :data:`GATE_THRESHOLDS`: (the threshold that finds the most cells once
    with at most ``max_extra`` of its detections extra, or None when none keeps to it; every row)."""
    from alnett_edge.vision.detector import DetectorConfig
    from alnett_edge.vision.fieldeval import field_eval

    cells = sum(len(t.centres) for t in read_truth(frames, images)[1])
    rows = []
    for t in GATE_THRESHOLDS:
        rep, _ = field_eval(None, frames, DetectorConfig(centres=str(model), centre_threshold=t),
                            optics=OpticsConfig(um_per_px=um_per_px or 0.0), images=images)
        if rep["found_once"] is None:
            raise DataError(f"{frames}: the gate needs marked cell centres")
        rows.append({"threshold": t, "found_once": rep["found_once"], "extra": rep["extra"] or 0.0,
                     "cells": cells})
    ok = [r for r in rows if r["extra"] <= max_extra]
    best = max(ok, key=lambda r: (r["found_once"], -r["threshold"]))["threshold"] if ok else None
    return best, rows
