"""Annotated frames in the layouts users have, and the one-to-one matching of boxes.

* Pascal VOC (BCCD): ``Annotations/*.xml`` + ``JPEGImages/``, or the XML beside each image; objects
  named ``WBC`` (any case) are white cells, and an optional ``<label>all|hem</label>`` (the synthetic
  smear generator writes it) gives the truth for per-cell accuracy and the blast ratio.
  A white cell may also carry ``<cluster>N</cluster>`` (the size of the touching cluster it lies in)
  and ``<centre><x/><y/></centre>`` (its centre, when its box is only its visible part); objects named
  ``Smudge`` are smudge cells (their box's centre, or their ``<centre>``). The crowded-field generator
  writes all of these (:func:`alnett_edge.data.synth.generate_crowded`).
* YOLO (Roboflow exports such as wbc-smartphone): ``images/`` + ``labels/*.txt`` with normalised
  ``class cx cy w h``; the white-cell class is 0 unless a ``data.yaml``/``classes.txt`` names one
  (``wbc``, ``white``, ``leuko``).
* Points (cells counted by hand on a contact sheet): ``points.csv`` with ``image,x,y`` (pixels of the
  image, relative to the folder; ``kind`` ``smudge`` marks a smudge cell), one row per cell; an image
  listed with empty x and y holds no cell. The images may lie in another folder (``images`` argument).
"""

from __future__ import annotations

import math
import os
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
    boxes: list[Box] = field(default_factory=list)  # empty for point annotations
    labels: list[str | None] = field(default_factory=list)  # "all" / "hem" / None per cell
    centres: list[tuple[float, float]] = field(default_factory=list)  # per cell: its centre (its box's, if not given)
    clusters: list[int] = field(default_factory=list)  # per cell: the size of its cluster (1: alone or not known)
    smudges: list[tuple[float, float]] = field(default_factory=list)  # smudge cells' centres

    def add(self, centre: tuple[float, float], box: Box | None = None, label: str | None = None,
            cluster: int = 1) -> None:
        if box is not None:
            self.boxes.append(box)
        self.labels.append(label)
        self.centres.append(centre)
        self.clusters.append(cluster)


SMUDGE_NAMES = re.compile(r"smudge|basket", re.IGNORECASE)


def _centre(obj: ET.Element, box: Box, what: str) -> tuple[float, float]:
    c = obj.find("centre")
    if c is None:
        return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    try:
        x, y = float(c.findtext("x") or ""), float(c.findtext("y") or "")
    except ValueError:
        raise DataError(f"{what}: a <centre> that is not two numbers") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise DataError(f"{what}: a <centre> that is not finite")
    return x, y


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
    h, w = image_size(image)
    for obj in root.iter("object"):
        name = obj.findtext("name") or ""
        smudge = bool(SMUDGE_NAMES.search(name))
        if not smudge and not WBC_NAMES.search(name):
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            corners = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise DataError(f"{xml}: a box with a non-numeric corner") from None
        box = _box(*corners, w, h, f"{xml}: a {'smudge' if smudge else 'white'}-cell box")
        if smudge:
            truth.smudges.append(_centre(obj, box, str(xml)))
            continue
        label = (obj.findtext("label") or "").strip().lower()
        try:
            cluster = int(obj.findtext("cluster") or 1)
        except ValueError:
            raise DataError(f"{xml}: a <cluster> that is not a whole number") from None
        if cluster < 1:
            raise DataError(f"{xml}: a <cluster> below 1")
        truth.add(_centre(obj, box, str(xml)), box, label if label in ("all", "hem") else None, cluster)
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
    h, w = image_size(image)
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
        box = _box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, w, h, f"{txt}:{n}: the box")
        truth.add(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box)
    return truth


def _points(csv_path: Path, images: Path) -> list[Truth]:
    """``image,x,y[,kind]`` rows (see the module doc): one Truth per image, in the file's order."""
    import csv

    frames: dict[str, Truth] = {}
    sizes: dict[str, tuple[int, int]] = {}
    # inside the folder by name (no "..", no absolute path); a link there to a file elsewhere is the user's
    # own (a folder of links to the slides), so links are not resolved
    base = Path(os.path.abspath(images))
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:  # a binary file: its columns are wrong
        rows = csv.DictReader(f)
        if not {"image", "x", "y"} <= set(rows.fieldnames or ()):
            raise DataError(f"{csv_path}: a points file needs the columns image, x, y (has {rows.fieldnames})")
        for n, row in enumerate(rows, 2):
            name = (row["image"] or "").strip()
            path = Path(os.path.normpath(base / name))
            if not name or base not in path.parents:
                raise DataError(f"{csv_path}:{n}: the image {name!r} is not a file inside {images}")
            if name not in frames:
                if not path.is_file():
                    raise DataError(f"{csv_path}:{n}: the image {name} is not in {images}")
                frames[name] = Truth(path)
            if not (row["x"] or "").strip() and not (row["y"] or "").strip():
                continue  # an image with no cell
            try:
                x, y = float(row["x"]), float(row["y"])
            except (TypeError, ValueError):
                raise DataError(f"{csv_path}:{n}: x and y must be numbers") from None
            h, w = sizes[name] if name in sizes else sizes.setdefault(name, image_size(path))
            if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= w and 0 <= y <= h):
                raise DataError(f"{csv_path}:{n}: the point ({x:g}, {y:g}) lies outside the {w}x{h} image")
            if (row.get("kind") or "").strip().lower() == "smudge":
                frames[name].smudges.append((x, y))
            else:
                frames[name].add((x, y))
    if not frames:
        raise DataError(f"{csv_path}: no rows")
    return list(frames.values())


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


def image_size(image: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header (the pixels are not decoded)."""
    from PIL import Image

    with Image.open(image) as im:
        return im.size[1], im.size[0]


def read_truth(folder: str | Path, images: str | Path | None = None) -> tuple[str, list[Truth]]:
    """(layout, frames with their white cells) of a VOC or YOLO folder, or of a points file (its images
    in ``images``, by default the file's folder); one-line errors otherwise."""
    root = Path(folder)
    if root.is_file() and root.suffix.lower() == ".csv":
        return "points", _points(root, Path(images) if images is not None else root.parent)
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


def _greedy(scored: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """One-to-one (detection, truth) pairs from (cost, detection, truth) candidates, cheapest first."""
    used_d, used_t, out = set(), set(), []
    for _cost, i, j in sorted(scored):
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            out.append((i, j))
    return out


def match(dets: list[Box], gts: list[Box], threshold: float) -> list[tuple[int, int]]:
    """One-to-one (detection, truth) pairs with IoU >= threshold, best IoU first."""
    return _greedy([(-iou, i, j) for i, d in enumerate(dets) for j, g in enumerate(gts)
                    if (iou := _iou(d, g)) >= threshold])


def match_points(dets: list[tuple[float, float]], truths: list[tuple[float, float]], max_px: float
                 ) -> list[tuple[int, int]]:
    """One-to-one (detection, truth) pairs of centres at most ``max_px`` apart, nearest first: a cell is
    found once when one detection, and only one, is centred on it."""
    return _greedy([(dist, i, j) for i, d in enumerate(dets) for j, t in enumerate(truths)
                    if (dist := math.hypot(d[0] - t[0], d[1] - t[1])) <= max_px])


def inside(box: Box, x: float, y: float) -> bool:
    """The point (x, y) lies in the box (half-open, as pixel boxes are)."""
    return box[0] <= x < box[2] and box[1] <= y < box[3]
