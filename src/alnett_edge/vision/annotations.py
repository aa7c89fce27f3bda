"""Annotated frames in the layouts users have, and the one-to-one matching of boxes.

* Pascal VOC (BCCD): ``Annotations/*.xml`` + ``JPEGImages/``, or the XML beside each image; objects
  named ``WBC`` (any case) are white cells, and an optional ``<label>all|hem</label>`` (the synthetic
  smear generator writes it) gives the truth for per-cell accuracy and the blast ratio.
* YOLO (Roboflow exports such as wbc-smartphone): ``images/`` + ``labels/*.txt`` with normalised
  ``class cx cy w h``; the white-cell class is 0 unless a ``data.yaml``/``classes.txt`` names one
  (``wbc``, ``white``, ``leuko``).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from alnett_edge.data.preprocess import IMAGE_SUFFIXES
from alnett_edge.errors import DataError

Box = tuple[int, int, int, int]
WBC_NAMES = re.compile(r"wbc|white|leuk|leuc", re.IGNORECASE)
#: frames (evenly spaced) the pixel size is estimated from when the optics are not given


@dataclass
class Truth:
    image: Path
    boxes: list[Box] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # "all" / "hem" / None per box


def _voc(xml: Path, images: dict[str, Path]) -> Truth | None:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml} is not valid Pascal VOC XML ({exc})") from None
    name = (root.findtext("filename") or "").strip()
    image = images.get(name) or images.get(Path(name).stem) or images.get(xml.stem)
    if image is None:
        return None
    truth = Truth(image)
    h, w = _size(image)
    for obj in root.iter("object"):
        if not WBC_NAMES.search(obj.findtext("name") or ""):
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            corners = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise DataError(f"{xml}: a box with a non-numeric corner") from None
        truth.boxes.append(_box(*corners, w, h, f"{xml}: a white-cell box"))
        label = (obj.findtext("label") or "").strip().lower()
        truth.labels.append(label if label in ("all", "hem") else None)
    return truth


def _yolo_class(root: Path) -> int:
    for cfg in (root / "data.yaml", root.parent / "data.yaml", root / "classes.txt", root.parent / "classes.txt"):
        if cfg.is_file():
            text = cfg.read_text(errors="replace")
            names = re.findall(r"['\"]?([A-Za-z][\w -]*)['\"]?", text.split("names:", 1)[1]) if "names:" in text \
                else [line.strip() for line in text.splitlines() if line.strip()]
            for i, n in enumerate(names):
                if WBC_NAMES.search(n):
                    return i
    return 0


def _yolo(txt: Path, image: Path, cls: int) -> Truth:
    h, w = _size(image)
    truth = Truth(image)
    for n, line in enumerate(txt.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise DataError(f"{txt}:{n}: not a YOLO line (class cx cy w h)") from None
        if c != cls:
            continue
        if not all(math.isfinite(v) for v in (cx, cy, bw, bh)):
            raise DataError(f"{txt}:{n}: a box with a value that is not a finite number")
        truth.boxes.append(_box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, w, h,
                                f"{txt}:{n}: the box"))
        truth.labels.append(None)
    return truth


#: a truth box may reach this far (a share of the frame's side) past the frame's edge before it is refused
EDGE_SLACK = 0.02


def _box(x0: float, y0: float, x1: float, y1: float, w: int, h: int, what: str) -> Box:
    """One checker for every truth box: finite, not inverted or empty, inside the frame (up to
    EDGE_SLACK past its edge, clipped); anything else would be scored as a cell that cannot exist."""
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DataError(f"{what} has a corner that is not a finite number")
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{what} is inverted or empty ({x0:g},{y0:g})-({x1:g},{y1:g})")
    sx, sy = EDGE_SLACK * w, EDGE_SLACK * h
    if x0 < -sx or y0 < -sy or x1 > w + sx or y1 > h + sy:
        raise DataError(f"{what} ({x0:g},{y0:g})-({x1:g},{y1:g}) lies outside the {w}x{h} frame")
    box = (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{what} is empty once inside the {w}x{h} frame")
    return box


def _size(image: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(image) as im:
        return im.size[1], im.size[0]


def read_truth(folder: str | Path) -> tuple[str, list[Truth]]:
    """(layout, frames with their white-cell boxes) of a VOC or YOLO folder; one-line errors otherwise."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"annotated frames not found: {root}")
    images = {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    images.update({p.stem: p for p in images.values()})
    xmls = sorted(root.rglob("*.xml"))
    txts = sorted(p for p in root.rglob("*.txt") if p.parent.name == "labels")
    if xmls:
        frames = [t for t in (_voc(x, images) for x in xmls) if t is not None]
        layout = "voc"
    elif txts:
        cls = _yolo_class(root)
        frames = [_yolo(t, images[t.stem], cls) for t in txts if t.stem in images]
        layout = "yolo"
    else:
        raise DataError(f"{root}: no annotations found (expected Pascal VOC *.xml or YOLO labels/*.txt)")
    if not frames:
        raise DataError(f"{root}: {len(xmls) or len(txts)} annotation files but none names an image found here "
                        "(annotations that do not match the images?)")
    return layout, frames


def _iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(dets: list[Box], gts: list[Box], threshold: float) -> list[tuple[int, int]]:
    """One-to-one (detection, truth) pairs with IoU >= threshold, best IoU first."""
    pairs = sorted(((_iou(d, g), i, j) for i, d in enumerate(dets) for j, g in enumerate(gts)), reverse=True)
    used_d, used_g, out = set(), set(), []
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_d and j not in used_g:
            used_d.add(i)
            used_g.add(j)
            out.append((i, j))
    return out


def inside(box: Box, x: float, y: float) -> bool:
    """The point (x, y) lies in the box (half-open, as pixel boxes are)."""
    return box[0] <= x < box[2] and box[1] <= y < box[3]
