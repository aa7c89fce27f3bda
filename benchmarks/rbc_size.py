"""How far to trust ``optics calibrate``: the shipped red-cell size estimate
(``daemon.optics.rbc_diameter_px``, a granulometry) on every frame of each real set and on synthetic
smears of known pixel size, beside the autocorrelation it starts from (``acf_diameter_px``) and beside
references measured independently of both.

References, in px:
- *isolated round red cells*, measured the same way on every set: the green optical density above its
  Otsu level, components that touch nothing (not the frame, not the field edge), solidity > 0.95,
  aspect < 1.15, not violet (blue below red: not a white cell), equivalent-area diameter, median of
  those at least half the set's median blob (not specks);
- BCCD's annotated red-cell boxes ((w + h) / 2, median, boxes not cut by the frame);
- the drawn size of the synthetic red cells (7.8 µm at ``SMEAR_UM_PER_PX``): the one exact truth.

Per set it prints the median diameter of each estimate, its per-frame spread (MAD / median: what
``optics calibrate`` prints), and the error of the median of 8 and of 40 frames drawn at random (200
draws: p95 and worst, against the set's own median over every frame): 8 frames is what the daemon
estimates from at start-up.

Usage: .venv/bin/python benchmarks/rbc_size.py [--step 1]
"""

from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from alnett_edge.data.preprocess import load_image
from alnett_edge.data.synth import SMEAR_UM_PER_PX, synth_smear
from alnett_edge.machine import isa_line
from alnett_edge.vision.optics import acf_diameter_px, fov_mask, green_density, rbc_diameter_px

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bccd_boxes(image: Path) -> list[float]:
    xml = image.parent.parent / "Annotations" / f"{image.stem}.xml"
    out = []
    for o in ET.parse(xml).getroot().iter("object"):
        b = o.find("bndbox")
        if o.findtext("name") != "RBC" or b is None:
            continue
        x0, y0, x1, y1 = (float(b.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x0 > 1 and y0 > 1 and x1 < 639 and y1 < 479:  # not cut by the frame
            out.append((x1 - x0 + y1 - y0) / 2)
    return out


def isolated_red_cells(rgb: np.ndarray) -> list[float]:
    """Equivalent-area diameters of the isolated, round, pink stain blobs of a frame."""
    inside = cv2.erode(fov_mask(rgb), np.ones((9, 9), np.uint8)) > 0
    density = green_density(rgb, inside).astype(np.uint8)
    v = density[inside]
    v = v[v < np.percentile(v, 95)]
    t, _ = cv2.threshold(v.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = ((density > t) & inside).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    h, w = mask.shape
    out = []
    for c in contours:
        area = cv2.contourArea(c)
        x, y, bw, bh = cv2.boundingRect(c)
        d = 2 * np.sqrt(area / np.pi)
        if d < 3 or x <= 1 or y <= 1 or x + bw >= w - 1 or y + bh >= h - 1:
            continue
        if area / max(cv2.contourArea(cv2.convexHull(c)), 1) <= 0.95 or not 1 / 1.15 < bw / bh < 1.15:
            continue
        blob = np.zeros_like(mask)
        cv2.drawContours(blob, [c], -1, 1, thickness=cv2.FILLED)
        if rgb[..., 2][blob > 0].mean() < rgb[..., 0][blob > 0].mean():  # pink, not violet
            out.append(float(d))
    return out


def median_error(values: np.ndarray, k: int, draws: int = 200) -> tuple[float, float]:
    """p95 and worst relative error of the median of k frames drawn at random, against the set's median."""
    rng = np.random.default_rng(0)
    med = np.median(values)
    errs = [abs(np.median(rng.choice(values, k, replace=False)) / med - 1) for _ in range(draws)]
    return float(np.percentile(errs, 95)), float(max(errs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=1, help="every STEP-th frame of each set")
    args = ap.parse_args()
    print(isa_line())
    sets = {
        "BCCD": sorted((DATA / "bccd" / "JPEGImages").glob("*.jpg"))[:: args.step],
        "smartphone train": sorted((DATA / "wbc-smartphone" / "train" / "images").glob("*.jpg"))[:: args.step],
        "smartphone valid": sorted((DATA / "wbc-smartphone" / "valid" / "images").glob("*.jpg"))[:: args.step],
        "synthetic": list(range(0, 48, args.step)),
    }
    print(f"{'set':17s} {'frames':>6s} {'isolated':>8s} {'other ref':>9s} {'estimate':>8s} {'MAD':>5s} "
          f"{'median of 8':>11s} {'of 40':>11s} {'ms':>4s} {'acf':>6s} {'MAD':>5s}")
    for name, items in sets.items():
        acf, est, isolated, other, ms, empty = [], [], [], [], [], 0
        for item in items:
            if isinstance(item, int):
                rgb = synth_smear(np.random.default_rng([0, 11, item])).image
                other.append(7.8 / SMEAR_UM_PER_PX)
            else:
                rgb = load_image(item, what="frame")
                other += bccd_boxes(item) if name == "BCCD" else []
            isolated += isolated_red_cells(rgb)
            t0 = time.perf_counter()
            d = rbc_diameter_px(rgb)
            ms.append((time.perf_counter() - t0) * 1e3)
            a = acf_diameter_px(rgb)
            if d is None or a is None:
                empty += 1
                continue
            est.append(d)
            acf.append(a)
        e, a = np.array(est), np.array(acf)
        me, ma = float(np.median(e)), float(np.median(a))
        p8, w8 = median_error(e, 8)
        p40, w40 = median_error(e, 40) if len(e) > 40 else (float("nan"), float("nan"))
        blobs = np.array(isolated)
        blobs = blobs[blobs >= 0.5 * np.median(blobs)]  # not specks
        ref = f"{np.median(other):9.1f}" if other else f"{'-':>9s}"
        print(f"{name:17s} {len(e):4d}+{empty:<1d} {np.median(blobs):8.1f} {ref} {me:8.1f} "
              f"{np.median(abs(e - me)) / me:5.3f} {p8:5.3f}/{w8:5.3f} {p40:5.3f}/{w40:5.3f} {np.median(ms):4.0f} "
              f"{ma:6.1f} {np.median(abs(a - ma)) / ma:5.3f}")
    print("frames: measured+without an estimate; isolated: isolated round red cells; other ref: BCCD's "
          "boxes,\nthe synthetic drawn size; median of 8 / of 40 frames: p95/worst error; ms: a frame")


if __name__ == "__main__":
    main()
