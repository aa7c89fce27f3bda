"""A candidate red-cell size estimator for ``optics calibrate`` (issue 11), measured beside the shipped
one (``daemon.optics.rbc_diameter_px``: the autocorrelation of the saturation, its constant fitted on
BCCD's annotated red cells) on every real set and on synthetic smears of known pixel size.

The candidate, a granulometry:
1. the shipped autocorrelation gives the scale; the frame is resampled so a red cell has a radius of
   ``GRANULE_R`` px;
2. the saturation inside the field of view is contrast-stretched around its Otsu level (computed
   without the top 5 %, the white cells), so a pale, dome-shaped red cell and a flat, deeply stained one
   both reach full height where their edge crosses that level;
3. each pale centre is filled: a dim region enclosed by stain and smaller than ``PALE_CENTRE_AREA`` of
   a cell's disc (grayscale reconstruction by erosion, started from a closing so that it converges in a
   few iterations); a larger gap enclosed by packed cells keeps its value;
4. the image is opened with discs of growing radius; the radius that removes the most stain (the peak
   of the pattern spectrum, interpolated) is the red cells' inscribed radius, and twice it is the
   diameter. No fitted constant.

It prints, per set, the median diameter in px, the per-frame spread (MAD / median) of both estimators,
and a reference size: BCCD's annotated red-cell boxes ((w + h) / 2, median), the size of the isolated,
round stain blobs of the smartphone frames (Otsu threshold, solidity > 0.93), the drawn size of the
synthetic red cells (7.8 µm at ``SMEAR_UM_PER_PX``).

Usage: .venv/bin/python benchmarks/rbc_granulometry.py [--step 1]
"""

from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from alnett_edge.daemon.detector import _disk
from alnett_edge.daemon.optics import fov_mask, rbc_diameter_px
from alnett_edge.data.preprocess import load_image
from alnett_edge.data.synth import SMEAR_UM_PER_PX, synth_smear
from alnett_edge.machine import isa_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GRANULE_R = 8.0
PALE_CENTRE_AREA = 0.3
STRETCH = 0.1  # the stretch's half-width, as a share of the saturation's p5-p95 range
FILL_MIN = 8


def _disc(r: int) -> np.ndarray:
    return _disk(2 * r + 1)  # the detector's disc, radius r


def fill_pale_centres(sat: np.ndarray, max_area: float) -> np.ndarray:
    """Dim regions enclosed by stain and smaller than ``max_area`` px raised to their rim."""
    marker = cv2.max(sat, cv2.morphologyEx(sat, cv2.MORPH_CLOSE, _disc(int(np.ceil(np.sqrt(max_area / np.pi))))))
    marker[0], marker[-1], marker[:, 0], marker[:, -1] = sat[0], sat[-1], sat[:, 0], sat[:, -1]
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    while True:
        nxt = cv2.max(cv2.erode(marker, cross), sat)
        if not cv2.countNonZero(cv2.absdiff(nxt, marker)):
            break
        marker = nxt
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.compare(cv2.subtract(marker, sat), FILL_MIN, cv2.CMP_GT))
    small = stats[:, cv2.CC_STAT_AREA] < max_area
    small[0] = False
    return np.where(small[labels], marker, sat)


def granule_diameter_px(rgb: np.ndarray, d0: float | None) -> float | None:
    """The granulometry's diameter; ``d0``: the shipped estimate of the same frame (its scale)."""
    if d0 is None:
        return None
    h, w = rgb.shape[:2]
    s = GRANULE_R / (d0 / 2)
    small = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    inside = cv2.erode(fov_mask(small), np.ones((5, 5), np.uint8)) > 0
    sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    v = sat[inside]
    v = v[v < np.percentile(v, 95)]
    t, _ = cv2.threshold(v.astype(np.uint8).reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lo, hi = np.percentile(v, [5, 95])
    sat = np.clip(128 + (sat - t) * 127 / max(1.0, STRETCH * (hi - lo)), 0, 255).astype(np.uint8)
    sat[~inside] = 0
    sat = fill_pale_centres(sat, PALE_CENTRE_AREA * np.pi * GRANULE_R**2)
    radii = np.arange(int(GRANULE_R / 2), int(1.8 * GRANULE_R) + 2)
    mass = np.array([cv2.sumElems(cv2.morphologyEx(sat, cv2.MORPH_OPEN, _disc(r)))[0] for r in radii])
    removed = mass[:-1] - mass[1:]
    k = int(np.argmax(removed))
    off = 0.0
    if 0 < k < len(removed) - 1:
        a, b, c = removed[k - 1], removed[k], removed[k + 1]
        off = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return float(2 * (radii[k] + 0.5 + off) / s)


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


def round_blobs(rgb: np.ndarray) -> list[float]:
    inside = cv2.erode(fov_mask(rgb), np.ones((9, 9), np.uint8)) > 0
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    t, _ = cv2.threshold(sat[inside].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(((sat > t) & inside).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = []
    for c in contours:
        area = cv2.contourArea(c)
        x, y, w, h = cv2.boundingRect(c)
        if area >= 20 and area / max(cv2.contourArea(cv2.convexHull(c)), 1) > 0.93 and 0.8 < w / h < 1.25:
            out.append((w + h) / 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=1, help="every STEP-th frame of each set")
    args = ap.parse_args()
    print(isa_line())
    sets = {
        "bccd": sorted((DATA / "bccd" / "JPEGImages").glob("*.jpg"))[:: args.step],
        "wbc-smartphone train": sorted((DATA / "wbc-smartphone" / "train" / "images").glob("*.jpg"))[:: args.step],
        "wbc-smartphone valid": sorted((DATA / "wbc-smartphone" / "valid" / "images").glob("*.jpg"))[:: args.step],
        "synthetic smears": list(range(0, 48, args.step)),
    }
    print(f"{'set':22s} {'frames':>6s} {'reference px':>13s} {'acf px':>7s} {'acf MAD':>8s} {'granule px':>10s} "
          f"{'gran MAD':>8s} {'gran ms':>7s}")
    for name, items in sets.items():
        acf, gran, ref, ms = [], [], [], []
        for item in items:
            if isinstance(item, int):
                rgb = synth_smear(np.random.default_rng([0, 11, item])).image
                ref.append(7.8 / SMEAR_UM_PER_PX)
            else:
                rgb = load_image(item, what="frame")
                ref += bccd_boxes(item) if name == "bccd" else round_blobs(rgb)
            t0 = time.perf_counter()  # the granulometry's time includes its scale: the shipped estimate
            a = rbc_diameter_px(rgb)
            g = granule_diameter_px(rgb, a)
            ms.append((time.perf_counter() - t0) * 1e3)
            if g is not None and a is not None:
                acf.append(a)
                gran.append(g)
        a, g = np.array(acf), np.array(gran)
        ma, mg = float(np.median(a)), float(np.median(g))
        print(f"{name:22s} {len(g):6d} {np.median(ref):13.1f} {ma:7.1f} {np.median(abs(a - ma)) / ma:8.3f} {mg:10.1f} "
              f"{np.median(abs(g - mg)) / mg:8.3f} {np.median(ms):7.1f}")


if __name__ == "__main__":
    main()
