"""A small learned nucleus-centre detector, tried against the rule-based cell detector (issue 34's second
route; an experiment, not a product path): trained here on the real annotated frames' white cells
(BCCD ``train``+``val``, wbc-smartphone ``train/``) and generated crowded fields, exported to ONNX and run
by onnxruntime (the library behind the classifier's ONNX backend, called directly here), then scored
with ``field-eval``'s matching on what it never saw: BCCD ``test``, wbc-smartphone ``valid/``, the 20
hand-counted all-fields fields (``tests/data/all-fields-dense-counts.csv``) and fresh crowded fields
per cluster size. The rule-based detector is scored beside it on the same frames; the machine's CPU and
ISA are printed.

The network sees each frame resampled to ``UM`` µm per pixel (every set's pixel size estimated from its
red cells, as the daemon does), each channel less its median, and predicts a heat map of cell centres
(CenterNet's focal loss) and each cell's box size in µm at half that resolution; a centre is a local
maximum of the map above ``--threshold``.

``--fold K --init BASE.pt`` fine-tunes a trained network on half of the hand-counted fields (every other
one by name; K picks the half) mixed with its training sets, and scores the other half: what a lab
that marks the cells of ten of its own fields would get. ``--speed-only`` times both architectures
untrained on blank frames (the cost does not depend on the weights).

Usage: .venv/bin/python benchmarks/centre_net.py [--arch full|light] [--steps 3000] [--threshold 0.3]
           [--save BASE.pt] [--init BASE.pt --fold 0|1 --steps 1000 --lr 1e-3] [--fields N] [--hand-weight W]
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
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from alnett_edge.data.synth import CrowdSpec, generate_crowded
from alnett_edge.machine import isa_line
from alnett_edge.vision.annotations import match, match_points, read_truth
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.fieldeval import MATCH_UM, folder_scale
from alnett_edge.vision.optics import OpticsConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COUNTS = ROOT / "tests" / "data" / "all-fields-dense-counts.csv"
UM = 0.75  # µm per input pixel
STRIDE = 2  # the heat map's pixels per input pixel
SIGMA_UM = 1.8  # the spread of a centre's peak in the target
CROP = 96


class CentreNet(nn.Module):
    """Two strides down, a cluster of depthwise convolutions at dilations 1, 2, 4 (as ALNett's), one up."""

    def __init__(self, w: int = 24) -> None:
        super().__init__()

        def conv(i, o, s=1, d=1):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, d, d, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = conv(3, 16)
        self.down1 = nn.Sequential(conv(16, w, 2), conv(w, w))
        self.down2 = conv(w, 2 * w, 2)
        self.cluster = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 1, d, d, groups=2 * w, bias=False), nn.BatchNorm2d(2 * w),
                          nn.ReLU(inplace=True)) for d in (1, 2, 4))
        self.mix = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
                                 conv(2 * w, 2 * w, d=2))
        self.up = conv(3 * w, w)
        self.heat = nn.Conv2d(w, 1, 1)
        self.size = nn.Conv2d(w, 2, 1)
        nn.init.constant_(self.heat.bias, -2.2)

    def forward(self, x):
        a = self.down1(self.stem(x))
        b = self.down2(a)
        b = self.mix(torch.cat([m(b) for m in self.cluster], 1))
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        u = self.up(torch.cat([a, b], 1))
        return torch.sigmoid(self.heat(u)), self.size(u)


class LightNet(nn.Module):
    """The same plan at about a fifth of the multiply-adds: a strided stem, depthwise-separable
    convolutions, and the coarse features added to the fine ones instead of concatenated."""

    def __init__(self, w: int = 24) -> None:
        super().__init__()

        def bn_relu(o):
            return [nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        def sep(i, o, s=1, d=1):
            return nn.Sequential(nn.Conv2d(i, i, 3, s, d, d, groups=i, bias=False), *bn_relu(i),
                                 nn.Conv2d(i, o, 1, bias=False), *bn_relu(o))

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), *bn_relu(16), sep(16, w))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), *bn_relu(2 * w))
        self.cluster = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 1, d, d, groups=2 * w, bias=False), *bn_relu(2 * w))
            for d in (1, 2, 4))
        self.mix = nn.Sequential(nn.Conv2d(6 * w, 2 * w, 1, bias=False), *bn_relu(2 * w), sep(2 * w, 2 * w, d=2),
                                 sep(2 * w, 2 * w, d=4), nn.Conv2d(2 * w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.up = sep(w, w)
        self.heat = nn.Conv2d(w, 1, 1)
        self.size = nn.Conv2d(w, 2, 1)
        nn.init.constant_(self.heat.bias, -2.2)

    def forward(self, x):
        a = self.stem(x)
        b = self.down(a)
        b = self.mix(torch.cat([m(b) for m in self.cluster], 1))
        u = self.up(a + F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(self.heat(u)), self.size(u)


ARCHS = {"full": CentreNet, "light": LightNet}


def normalise(rgb: np.ndarray) -> np.ndarray:
    """HWC uint8 -> CHW float: each channel less its median (of every 4th pixel each way: a frame's
    median over all its pixels costs more than the network), over 64."""
    sub = rgb[::4, ::4].reshape(-1, 3)
    med = np.array([np.searchsorted(np.cumsum(np.bincount(sub[:, c], minlength=256)), (len(sub) + 1) // 2)
                    for c in range(3)], np.float32)
    x = rgb.transpose(2, 0, 1).astype(np.float32)
    x -= med[:, None, None]
    x *= 1 / 64.0
    return x


def resample(rgb: np.ndarray, um: float, to: float = UM) -> np.ndarray:
    """To ``to`` µm per pixel; a large reduction first by a whole factor (OpenCV's fast path for
    averaging), the rest by interpolation."""
    f = um / to
    if f < 0.5:
        k = int(1 / f)
        h, w = rgb.shape[0] // k * k, rgb.shape[1] // k * k
        rgb = cv2.resize(rgb[:h, :w], (w // k, h // k), interpolation=cv2.INTER_AREA)
        f *= k
    if abs(f - 1) < 1e-3:
        return rgb
    return cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def pad(rgb: np.ndarray, ph: int, pw: int) -> np.ndarray:
    med = [int(v) for v in np.median(rgb.reshape(-1, 3), axis=0)]
    return cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=med)


def load_set(folder: Path, um: float | None, names: set[str] | None = None, images: Path | None = None):
    """[(rgb at UM, centres at UM px, sizes µm (w, h) or None, truth, um)]; ``um`` None: estimated."""
    _, truths = read_truth(folder, images)
    if names is not None:
        truths = [t for t in truths if t.image.stem in names]
    out = []
    groups: dict[Path, list] = {}
    for t in truths:
        groups.setdefault(t.image.parent, []).append(t)
    for where, group in groups.items():
        s = um or folder_scale([t.image for t in group], OpticsConfig())[0]
        for t in group:
            rgb = cv2.cvtColor(cv2.imread(str(t.image)), cv2.COLOR_BGR2RGB)
            f = s / UM
            cs = np.array(t.centres, np.float32).reshape(-1, 2) * f
            sz = (np.array([[b[2] - b[0], b[3] - b[1]] for b in t.boxes], np.float32) * s) if t.boxes else None
            out.append((resample(rgb, s), cs, sz, t, s))
    return out


def split_ids(name: str) -> set[str]:
    return {ln.strip() for ln in (DATA / "bccd" / "ImageSets" / "Main" / f"{name}.txt").read_text().split()}


def augment(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(-14, 15)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.6), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.75, 1.2), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = out * rng.uniform(0.9, 1.1, 3) + rng.normal(0, 3, out.shape)
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    return np.clip(out, 0, 255).astype(np.uint8)


def sample(rng: np.random.Generator, item):
    rgb, cs, sz, _, _ = item
    zoom = rng.uniform(0.8, 1.25)  # the pixel size's estimate is off by this much
    rgb = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    cs = cs * zoom
    h, w = rgb.shape[:2]
    ph, pw = max(0, CROP - h), max(0, CROP - w)
    if ph or pw:  # the frame's median colour: a reflected cell would be a cell with no target
        rgb = pad(rgb, ph, pw)
        h, w = rgb.shape[:2]
    y0, x0 = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    rgb = rgb[y0:y0 + CROP, x0:x0 + CROP]
    cs = cs - [x0, y0]
    k = rng.integers(4)
    rgb = np.rot90(rgb, k)
    for _ in range(k):  # (x, y) -> (y, CROP - x) per quarter turn counter-clockwise
        cs = np.stack([cs[:, 1], CROP - cs[:, 0]], 1) if len(cs) else cs
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
        cs = np.stack([CROP - cs[:, 0], cs[:, 1]], 1) if len(cs) else cs
    szs = sz[:, ::-1] if sz is not None and k % 2 else sz
    rgb = augment(rng, np.ascontiguousarray(rgb))
    o = CROP // STRIDE
    heat = np.zeros((o, o), np.float32)
    size = np.zeros((2, o, o), np.float32)
    smask = np.zeros((o, o), np.float32)
    yy, xx = np.mgrid[0:o, 0:o].astype(np.float32) + 0.5
    sig = SIGMA_UM / UM / STRIDE
    for i, (x, y) in enumerate(cs):
        gx, gy = x / STRIDE, y / STRIDE
        if not (0 <= gx < o and 0 <= gy < o):
            continue
        heat = np.maximum(heat, np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * sig * sig)))
        ix, iy = int(gx), int(gy)
        heat[iy, ix] = 1.0
        if szs is not None:
            size[:, iy, ix] = np.log(szs[i] / 10.0)
            smask[iy, ix] = 1.0
    return normalise(rgb), heat, size, smask


def focal(pred, gt):
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred ** 2 * (1 - gt) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def train(sets, steps: int, seed: int, batch: int = 32, init: Path | None = None, lr: float = 3e-3,
          arch: str = "full"):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ARCHS[arch]()
    if init is not None:
        net.load_state_dict(torch.load(init))
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    weights = np.array([w for _, w in sets], np.float64)
    weights /= weights.sum()
    t0 = time.time()
    for step in range(steps):
        items = [sets[rng.choice(len(sets), p=weights)][0] for _ in range(batch)]
        xs, hs, ss, ms = zip(*(sample(rng, it[rng.integers(len(it))]) for it in items))
        x, h, s, m = (torch.from_numpy(np.stack(v)) for v in (xs, hs, ss, ms))
        ph, ps = net(x)
        loss = focal(ph[:, 0], h) + 0.1 * (F.l1_loss(ps, s, reduction="none").sum(1) * m).sum() / m.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return net.eval()


def export(net: nn.Module, path: Path) -> None:
    x = torch.zeros(1, 3, 96, 128)
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["heat", "size"],
                      dynamic_axes={"x": {2: "h", 3: "w"}}, opset_version=18, dynamo=False)


class LearnedDetector:
    def __init__(self, path: Path, threshold: float) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.threshold = threshold

    def detect(self, rgb: np.ndarray, um: float):
        """[(centre (x, y), box)] in the frame's pixels."""
        small = resample(rgb, um)
        h, w = small.shape[:2]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            small = pad(small, ph, pw)
        heat, size = self.sess.run(None, {"x": normalise(small)[None]})
        heat = heat[0, 0]
        peak = (heat == cv2.dilate(heat, np.ones((3, 3), np.uint8))) & (heat >= self.threshold)
        ys, xs = np.nonzero(peak)
        out = []
        f = UM / um
        for y, x in zip(ys, xs):
            if (x + 0.5) * STRIDE > w or (y + 0.5) * STRIDE > h:
                continue
            cx, cy = (x + 0.5) * STRIDE * f, (y + 0.5) * STRIDE * f
            bw, bh = np.exp(size[0, :, y, x]) * 10.0 / um
            out.append(((cx, cy), (int(cx - bw / 2), int(cy - bh / 2), int(cx + bw / 2), int(cy + bh / 2))))
        return out


def score(items, detect, by_cluster: bool = False) -> dict:
    n_true = n_det = hit = once = 0
    sizes: dict[int, list[int]] = {}
    ms = []
    for _, _, _, truth, um in items:
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
    for arch, cls in ARCHS.items():
        path = tmp / f"speed-{arch}.onnx"
        torch.manual_seed(0)
        export(cls().eval(), path)
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
    for _, _, _, truth, um in sorted(items, key=lambda it: -len(it[3].centres))[:tiles]:
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
    ap.add_argument("--model", type=Path, help="an ONNX file from an earlier run: skip training")
    ap.add_argument("--save", type=Path, help="write the trained weights (and ONNX beside them) here")
    ap.add_argument("--init", type=Path, help="start from these weights (a fine-tune)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="full")
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
        "bccd test": load_set(DATA / "bccd", scales["bccd"], split_ids("test")),
        "wbc-smartphone valid": load_set(DATA / "wbc-smartphone" / "valid", scales["phone"]),
    }
    hand = load_set(COUNTS, None, images=DATA / "all-fields")
    order = sorted(it[3].image.name for it in hand)
    mine = [a.fold is not None and order.index(it[3].image.name) % 2 == a.fold for it in hand]
    half = sorted((it for it, m in zip(hand, mine) if m), key=lambda it: it[3].image.name)[:a.fields]
    test_sets["all-fields hand-counted" + (f" (other half of fold {a.fold})" if half else "")] = \
        [it for it, m in zip(hand, mine) if not m]
    for k in range(1, 9):
        spec = CrowdSpec(um_per_px=0.25, clusters=1 if k > 1 else 0, cluster_size=(max(k, 1),) * 2,
                         singles=1 if k > 1 else 3, smudges=1)
        generate_crowded(tmp / f"eval{k}", 10, spec, seed=1000 + a.seed)
        test_sets.setdefault("crowded (synthetic, 0.25 µm/px)", []).extend(load_set(tmp / f"eval{k}", 0.25))
    model = a.model
    if model is None:
        synth = []
        for i, um in enumerate((0.15, 0.3, 0.45)):
            generate_crowded(tmp / f"train{i}", a.synth, CrowdSpec(um_per_px=um, clusters=2, singles=2),
                             seed=a.seed * 10 + i)
            synth += load_set(tmp / f"train{i}", um)
        sets = [(load_set(DATA / "bccd", scales["bccd"], split_ids("trainval")), 1.0),
                (load_set(DATA / "wbc-smartphone" / "train", scales["phone"]), 1.0), (synth, 1.0)]
        if half:  # by default two fifths of the crops
            sets.append((half, a.hand_weight))
        print({k: len(v) for k, v in zip(("bccd", "phone", "synth", "hand-counted half"), (s for s, _ in sets))},
              flush=True)
        net = train(sets, a.steps, a.seed, init=a.init, lr=a.lr, arch=a.arch)
        model = (a.save or tmp / "centres.pt").with_suffix(".onnx")
        if a.save:
            torch.save(net.state_dict(), a.save)
        export(net, model)
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
