"""The learned nucleus-centre detector (``alnett_edge.model.centres``, trained by ``alnett_edge.train.centres``,
run by ``alnett_edge.vision.centres``) measured against the rule-based cell detector (issue 34): trained here
on the real annotated frames' white cells (BCCD ``train``+``val``, wbc-smartphone ``train/``) and generated
crowded fields, exported to ONNX and run through the runtime's backend table, then scored with
``field-eval``'s matching on what it never saw: BCCD ``test``, wbc-smartphone ``valid/``, the 20
hand-counted all-fields fields (``tests/data/all-fields-dense-counts.csv``) and fresh crowded fields per
cluster size. The rule-based detector is scored beside it on the same frames; the machine's CPU and ISA
are printed. The centres are scored as the network gives them; the daemon's path (the centres seeding
the rule-based nuclei and masks: ``[detector] centres``) is scored by ``alnett-edge field-eval --centres``.

``--fold K --init BASE.onnx`` fine-tunes a trained detector on half of the hand-counted fields (every other
one by name; K picks the half) mixed with its training sets, and scores the other half: what a lab that
marks the cells of ten of its own fields would get. ``--speed-only`` times both architectures untrained
on random frames (the cost does not depend on the weights). The detector shipped as ``builtin`` is this
script's ``--arch full --seed 0`` run.

Usage: .venv/bin/python benchmarks/centre_net.py [--arch full|light] [--steps 3000] [--threshold 0.3]
           [--save BASE.onnx] [--init BASE.onnx --fold 0|1 --steps 1000 --lr 1e-3] [--fields N] [--hand-weight W]
           [--speed-only] [--sheet PNG] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from alnett_edge.card import CentreCard
from alnett_edge.data.synth import CrowdSpec, generate_crowded
from alnett_edge.machine import isa_line
from alnett_edge.model.centres import centre_net, load_centres, save_centres
from alnett_edge.train.centres import load_frames, train_centres
from alnett_edge.vision.annotations import match, match_points, read_truth
from alnett_edge.vision.centres import CentreFinder
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.fieldeval import MATCH_UM, folder_scale
from alnett_edge.vision.optics import OpticsConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COUNTS = ROOT / "tests" / "data" / "all-fields-dense-counts.csv"


def truth_set(folder: Path, um: float | None, names: set[str] | None = None, images: Path | None = None):
    """[(truth, µm per pixel)] of a scored set; ``um`` None: estimated per folder from the red cells."""
    _, truths = read_truth(folder, images)
    truths = [t for t in truths if names is None or t.image.stem in names]
    groups: dict[Path, list] = {}
    for t in truths:
        groups.setdefault(t.image.parent, []).append(t)
    return [(t, um or folder_scale([g.image for g in group], OpticsConfig())[0])
            for group in groups.values() for t in group]


def split_ids(name: str) -> set[str]:
    return {ln.strip() for ln in (DATA / "bccd" / "ImageSets" / "Main" / f"{name}.txt").read_text().split()}


class LearnedDetector:
    """The network's own centres and boxes, as the benchmark scores them: [(centre (x, y), box)]."""

    def __init__(self, path: Path, threshold: float) -> None:
        self.finder = CentreFinder(path, threshold, threads=2)

    def detect(self, rgb: np.ndarray, um: float):
        out = []
        for c in self.finder.find(rgb, um):
            bw, bh = c.w_um / um, c.h_um / um
            out.append(((c.x, c.y), (int(c.x - bw / 2), int(c.y - bh / 2), int(c.x + bw / 2), int(c.y + bh / 2))))
        return out


def score(items, detect, by_cluster: bool = False) -> dict:
    n_true = n_det = hit = once = 0
    sizes: dict[int, list[int]] = {}
    ms = []
    for truth, um in items:
        rgb = cv2.cvtColor(cv2.imread(str(truth.image)), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        dets = detect(rgb, um)
        ms.append((time.perf_counter() - t0) * 1e3)
        n_true += len(truth.centres)
        n_det += len(dets)
        if truth.boxes:
            hit += len(match([d[1] for d in dets], truth.boxes, 0.5))
        pairs = match_points([d[0] for d in dets], truth.centres, MATCH_UM / um)
        once += len(pairs)
        found = {t for _, t in pairs}
        for i, c in enumerate(truth.clusters):
            sizes.setdefault(c, [0, 0])[0] += 1
            sizes[c][1] += i in found
    r = {"true": n_true, "detections": n_det, "found_once": round(once / max(1, n_true), 3),
         "extra": round(1 - once / max(1, n_det), 3), "p50_ms": round(float(np.median(ms)), 2)}
    if hit:
        r.update(recall=round(hit / n_true, 3), precision=round(hit / max(1, n_det), 3))
    if by_cluster:
        r["by_cluster"] = {k: round(v[1] / v[0], 3) for k, v in sorted(sizes.items())}
    return r


SPEED_FRAMES = [((480, 640), 0.093), ((480, 640), 0.25), ((480, 640), 0.66), ((1944, 2592), 0.12)]


def speed(tmp: Path, threshold: float) -> dict:
    """Detect p50 (ms) per frame size and pixel size, each architecture untrained (the cost does not
    depend on the weights): resampling, the network and reading the peaks."""
    rng = np.random.default_rng(0)
    out = {}
    for arch in ("full", "light"):
        path = tmp / f"speed-{arch}.onnx"
        torch.manual_seed(0)
        card = CentreCard(arch=arch, threshold=threshold)
        save_centres(centre_net(card), card, path)
        det = LearnedDetector(path, threshold)
        for (h, w), um in SPEED_FRAMES:
            rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            ms = []
            for _ in range(25):
                t0 = time.perf_counter()
                det.detect(rgb, um)
                ms.append((time.perf_counter() - t0) * 1e3)
            out[f"{arch} {w}x{h} at {um} um/px"] = round(float(np.median(ms[5:])), 2)
    return out


def rule_based():
    """The rule-based detector (the product's default) in the same form: [(centre, box)]."""
    dets = {}

    def detect(rgb, um):
        d = dets.setdefault(um, CellDetector(DetectorConfig(), um))
        return [(((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2), b.box)
                for b in d.detect(rgb) if b.kind != "smudge"]
    return detect


def sheet(items, learned: LearnedDetector, dest: Path, tiles: int = 3, zoom: int = 2) -> None:
    """The scored hand-counted fields with the most cells, side by side at ``zoom`` x: a green dot per
    cell counted by hand, a blue ring per rule-based detection, a red cross per learned one."""
    rule = rule_based()
    row = []
    for truth, um in sorted(items, key=lambda it: -len(it[0].centres))[:tiles]:
        rgb = cv2.cvtColor(cv2.imread(str(truth.image)), cv2.COLOR_BGR2RGB)
        big = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        for x, y in truth.centres:
            cv2.circle(big, (int(x * zoom), int(y * zoom)), 4, (0, 170, 0), -1)
        for (x, y), _ in rule(rgb, um):
            cv2.circle(big, (int(x * zoom), int(y * zoom)), 9, (30, 60, 255), 2)
        for (x, y), _ in learned.detect(rgb, um):
            cv2.drawMarker(big, (int(x * zoom), int(y * zoom)), (230, 0, 0), cv2.MARKER_CROSS, 14, 2)
        cv2.putText(big, truth.image.name, (4, big.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        row.append(cv2.copyMakeBorder(big, 0, 0, 0, 6, cv2.BORDER_CONSTANT, value=(255, 255, 255)))
    Image.fromarray(np.hstack(row)).quantize(128).save(dest, optimize=True)  # a page's picture: 128 colours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth", type=int, default=40, help="crowded training fields per pixel size")
    ap.add_argument("--model", type=Path, help="a detector (.onnx) from an earlier run: skip training")
    ap.add_argument("--save", type=Path, help="write the trained detector here (.onnx, its weights beside it)")
    ap.add_argument("--init", type=Path, help="start from this detector (.onnx, its weights beside it): a fine-tune")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--arch", choices=("full", "light"), default="full")
    ap.add_argument("--speed-only", action="store_true", help="time the untrained networks on random frames only")
    ap.add_argument("--fold", type=int, choices=(0, 1),
                    help="fine-tune on half the hand-counted fields (every other by name: this half) and score "
                         "the other half")
    ap.add_argument("--fields", type=int, default=10,
                    help="with --fold: fine-tune on only the first N of its half's fields (by name)")
    ap.add_argument("--hand-weight", type=float, default=2.0,
                    help="with --fold: the marked fields' weight among the sets (each of the other three: 1)")
    ap.add_argument("--sheet", type=Path, help="draw the scored hand-counted fields with the most cells here (PNG)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.speed_only:
        print(isa_line())
        for k, v in speed(Path(tempfile.mkdtemp()), a.threshold).items():
            print(f"{k:40s} {v:7.2f} ms")
        return
    scales = {}
    for name, folder in (("bccd", DATA / "bccd"), ("phone", DATA / "wbc-smartphone" / "train")):
        _, tr = read_truth(folder)
        scales[name] = folder_scale([t.image for t in tr], OpticsConfig())[0]
    tmp = Path(tempfile.mkdtemp())
    test_sets = {
        "bccd test": truth_set(DATA / "bccd", scales["bccd"], split_ids("test")),
        "wbc-smartphone valid": truth_set(DATA / "wbc-smartphone" / "valid", scales["phone"]),
    }
    hand = truth_set(COUNTS, None, images=DATA / "all-fields")
    order = sorted(t.image.name for t, _ in hand)
    mine = [a.fold is not None and order.index(t.image.name) % 2 == a.fold for t, _ in hand]
    half = sorted(t.image.stem for (t, _), m in zip(hand, mine) if m)[:a.fields]
    test_sets["all-fields hand-counted" + (f" (other half of fold {a.fold})" if half else "")] = \
        [it for it, m in zip(hand, mine) if not m]
    for k in range(1, 9):
        spec = CrowdSpec(um_per_px=0.25, clusters=1 if k > 1 else 0, cluster_size=(max(k, 1),) * 2,
                         singles=1 if k > 1 else 3, smudges=1)
        generate_crowded(tmp / f"eval{k}", 10, spec, seed=1000 + a.seed)
        test_sets.setdefault("crowded (synthetic, 0.25 µm/px)", []).extend(truth_set(tmp / f"eval{k}", 0.25))
    model = a.model
    if model is None:
        init, card = load_centres(a.init) if a.init else (None, CentreCard(arch=a.arch, threshold=a.threshold))
        synth = []
        for i, um in enumerate((0.15, 0.3, 0.45)):
            generate_crowded(tmp / f"train{i}", a.synth, CrowdSpec(um_per_px=um, clusters=2, singles=2),
                             seed=a.seed * 10 + i)
            synth += load_frames(tmp / f"train{i}", card, um)
        sets = [(load_frames(DATA / "bccd", card, scales["bccd"], names=split_ids("trainval")), 1.0),
                (load_frames(DATA / "wbc-smartphone" / "train", card, scales["phone"]), 1.0), (synth, 1.0)]
        if half:  # by default two fifths of the crops
            sets.append((load_frames(COUNTS, card, images=DATA / "all-fields", names=set(half)), a.hand_weight))
        print({k: len(v) for k, v in zip(("bccd", "phone", "synth", "hand-counted half"), (s for s, _ in sets))},
              flush=True)
        net = train_centres(sets, card, a.steps, a.seed, init, a.lr,
                            progress=lambda step, loss: step % 250 or print(f"step {step:5d} loss {loss:.3f}",
                                                                            flush=True))
        model = a.save or tmp / "centres.onnx"
        save_centres(net, card, model)
        print("model:", model)
    learned = LearnedDetector(model, a.threshold)
    out = {"machine": isa_line(), "threshold": a.threshold}
    print(isa_line())
    for name, items in test_sets.items():
        for who, det in (("rule-based", rule_based()), ("learned", learned.detect)):
            r = out.setdefault(name, {})[who] = score(items, det, by_cluster="crowded" in name)
            print(f"{name:32s} {who:10s} {json.dumps(r)}", flush=True)
    if a.sheet:
        sheet(next(v for k, v in test_sets.items() if k.startswith("all-fields")), learned, a.sheet)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
