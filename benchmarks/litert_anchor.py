"""`alnett-s` against MobileNetV3-Small under LiteRT (ai-edge-litert, XNNPACK), fp32 and int8, both
converted the same way.

The speed anchors in ``../shared/anchors`` are ONNX, and no ONNX -> LiteRT converter is among this
project's libraries. So MobileNetV3-Small is built here in PyTorch from its paper's table (Howard et
al., "Searching for MobileNetV3", ICCV 2019, Table 2; 2-class head like the ONNX anchor, random
weights: weights do not change these kernels' speed), checked against the ONNX anchor (the same
parameter count), and converted with the very calls the ``rpi5`` export uses for ALNett:
``litert_torch.convert`` for fp32 and ``compress.qat.to_litert_int8_ptq`` (PT2E post-training int8)
for int8. Each model is timed with ``Interpreter(num_threads=T)`` at batch 1 and 8 in interleaved
rounds (every model once per round), and the ratio to MobileNetV3-Small of the same precision printed
with the CPU model and ISA. Batch 8 is timed as one call and as 8 calls of 1 (the runtime keeps the
faster, ``runtime.base.Runtime.tunes_batching``); the b8 ratio takes each model's faster way.

Usage: .venv/bin/python benchmarks/litert_anchor.py [--model alnett-s] [--threads 2] [--rounds 15] [--json OUT]
       [--keep DIR] (keep the converted .tflite files there: ``alnett-edge bench RPI5_BUNDLE --backend litert
       --anchor DIR/mobilenet_v3_small.fp32.tflite`` then times a trained bundle against the same anchor)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alnett_edge.compress._litert_compat import quiet_native_stderr
from alnett_edge.compress.qat import to_litert_int8_ptq
from alnett_edge.machine import isa_line
from alnett_edge.model.registry import create_model
from alnett_edge.runtime.litert_backend import interpreter_class

ANCHOR_ONNX = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "mobilenet_v3_small.onnx"
#: MobileNetV3-Small's bottlenecks (paper, Table 2): kernel, expansion, out, squeeze-excite, hard-swish, stride
SMALL = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
         (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
         (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
         (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]


def _div8(v: float) -> int:
    """Channel counts rounded to a multiple of 8, never below 90 % of v (the paper's rule)."""
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(ch, _div8(ch / 4), 1), nn.Conv2d(_div8(ch / 4), ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))
        return x * nn.functional.hardsigmoid(self.fc2(s))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hswish: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = [] if exp == cin else [_conv_bn(cin, exp, 1, act=act)]
        layers.append(_conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(_conv_bn(exp, cout, 1))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for k, exp, cout, se, hs, stride in SMALL:
            blocks.append(Bottleneck(cin, k, exp, cout, se, hs, stride))
            cin = cout
        blocks.append(_conv_bn(cin, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def weight_count(model: nn.Module) -> int:
    """Convolution and linear weights (not biases: BatchNorm folding gives the ONNX file other biases)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def onnx_weight_count(path: Path) -> int | None:
    if not path.exists():
        return None
    import onnx

    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer if len(t.dims) >= 2))


def convert(model: nn.Module, precision: str, out: Path, seed: int = 0) -> Path:
    sample = torch.randn(2, 3, 224, 224)
    with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr():
        if precision == "fp32":
            import litert_torch

            edge = litert_torch.convert(model.eval(), (sample,))
        else:  # the rpi5 export's post-training int8 path; calibration inputs of the model's input range
            calib = np.random.default_rng(seed).standard_normal((64, 3, 224, 224)).astype(np.float32)
            edge = to_litert_int8_ptq(model, calib, sample)
        edge.export(str(out))
    return out


class Timed:
    def __init__(self, name: str, path: Path, threads: int) -> None:
        self.name, self.path = name, path
        self.interp = {b: interpreter_class()(model_path=str(path), num_threads=threads) for b in (1, 8)}
        self.inputs = {}
        for b, it in self.interp.items():
            det = it.get_input_details()[0]
            it.resize_tensor_input(det["index"], [b, *det["shape"][1:]])
            it.allocate_tensors()
            det = it.get_input_details()[0]
            x = np.random.default_rng(0).standard_normal(det["shape"]).astype(np.float32)
            if det["dtype"] != np.float32:  # int8 input: quantise as the runtime does
                scale, zero = det["quantization"]
                x = np.clip(np.round(x / scale + zero), -128, 127).astype(det["dtype"])
            self.inputs[b] = (det["index"], x)
        self.ms: dict[int, list[float]] = {1: [], 8: [], -8: []}  # -8: a batch of 8 as 8 calls of 1

    def run(self, batch: int, calls: int) -> None:
        it, (index, x) = self.interp[batch], self.inputs[batch]
        for _ in range(calls):
            it.set_tensor(index, x)
            t0 = time.perf_counter()
            it.invoke()
            self.ms[batch].append((time.perf_counter() - t0) * 1e3)

    def run_singles(self, calls: int) -> None:
        """A batch of 8 as 8 calls of 1, what the LiteRT runtime does when its timing finds it faster."""
        it, (index, x) = self.interp[1], self.inputs[1]
        for _ in range(calls):
            t0 = time.perf_counter()
            for _ in range(8):
                it.set_tensor(index, x)
                it.invoke()
            self.ms[-8].append((time.perf_counter() - t0) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="alnett-s")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the converted .tflite files in this folder")
    args = ap.parse_args()
    print(isa_line())
    torch.manual_seed(0)
    anchor = MobileNetV3Small().eval()
    ours = create_model(args.model).eval()
    print(f"MobileNetV3-Small built here: {weight_count(anchor):,} conv/linear weights; the ONNX anchor "
          f"({ANCHOR_ONNX.name}): {onnx_weight_count(ANCHOR_ONNX) or 'not found'}")
    rows: list[Timed] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, model in ((args.model, ours), ("mobilenet_v3_small", anchor)):
            for precision in ("fp32", "int8"):
                path = convert(model, precision, folder / f"{name}.{precision}.tflite")
                with quiet_native_stderr():  # XNNPACK announces itself when the tensors are allocated
                    rows.append(Timed(f"{name} {precision}", path, args.threads))
        for t in rows:  # warm-up
            t.run(1, 5)
            t.run(8, 2)
            t.run_singles(2)
            t.ms = {1: [], 8: [], -8: []}
        for _ in range(args.rounds):  # interleaved: every model once per round
            for t in rows:
                t.run(1, 10)
                t.run(8, 2)
                t.run_singles(2)
    p50 = {t.name: {b: float(np.median(v)) for b, v in t.ms.items()} for t in rows}
    print(f"LiteRT (ai-edge-litert, XNNPACK), {args.threads} threads, {args.rounds} interleaved rounds, p50 ms;\n"
          "b8: one call of 8; 8x1: eight calls of 1; ratios: b8 at each model's faster way (the runtime's choice)")
    print(f"{'model':26s} {'b1':>6s} {'b8':>6s} {'8x1':>6s} {'b1 / MNv3-S':>12s} {'b8 / MNv3-S':>12s}")
    out = {"machine": isa_line(), "threads": args.threads, "rounds": args.rounds, "rows": []}
    for t in rows:
        ref = p50[f"mobilenet_v3_small {t.name.split()[-1]}"]
        ours = p50[t.name]
        r1, r8 = ours[1] / ref[1], min(ours[8], ours[-8]) / min(ref[8], ref[-8])
        print(f"{t.name:26s} {ours[1]:6.2f} {ours[8]:6.2f} {ours[-8]:6.2f} {r1:12.2f} {r8:12.2f}")
        out["rows"].append({"model": t.name, "b1_p50_ms": round(ours[1], 3), "b8_p50_ms": round(ours[8], 3),
                            "b8_as_8x1_p50_ms": round(ours[-8], 3), "ratio_b1": round(r1, 3), "ratio_b8": round(r8, 3)})
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
