"""Import-direction rules: the bottom layer and the device-side data code never import torch; nothing imports cli/."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alnett_edge"

BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_torch_free_modules_run_without_torch():
    code = BLOCK_TORCH + """
import numpy as np
from alnett_edge.card import ModelCard, InputSpec
from alnett_edge.data import preprocess, sources, splits, synth, augment, sheet
from alnett_edge.export import trt_lint
from alnett_edge.calibrate import reader, int8_safety
from alnett_edge import bundle, devices, evaluation, files, machine, metrics, onnx_io, timing
from alnett_edge.runtime import base, loader, ort_backend, litert_backend, predict, verify
from alnett_edge.tensorrt import backend, calibrator, engine
from alnett_edge.bench import runner, system, worker
from alnett_edge.capture import base as cbase, watchdog, images, video, v4l2, gstreamer, url, synthetic, picamera2
from alnett_edge.vision import annotations, cells, centres, detector, differential, fieldeval, marks, optics, path, record, tracking
from alnett_edge.daemon import config, service, sinks, http, report, markpage
from alnett_edge.cli import app
assert devices.resolve_target("rpi")[0].name == "rpi5"
from alnett_edge.vision.centres import CentreFinder
assert CentreFinder("builtin").find(np.full((64, 64, 3), 200, np.uint8), 0.3) == []  # the learned detector runs
img = synth.synth_cell(np.random.default_rng(0), 1, 96, 0.3)
x = preprocess.preprocess(augment.augment(img, np.random.default_rng(1)), InputSpec(size=(64, 64)))
assert x.shape == (3, 64, 64)
assert metrics.binary_metrics(np.array([0, 1]), np.array([0.2, 0.9]))["accuracy"] == 1.0
assert "torch" not in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


#: the layers, bottom first: a module imports only from its own layer or below. The device side
#: (runtime, capture, vision, daemon, bench) never imports the workstation chain (model ... export). Cell
#: vision sits below the daemon: field-eval, optics calibrate, report and harvest use it without the service.
LAYERS = [("errors", "card", "files", "machine", "timing", "metrics", "plugins"),
          ("devices", "data", "bundle", "evaluation", "onnx_io"),
          ("runtime", "capture", "tensorrt"),
          ("vision",),
          ("daemon", "bench"),
          ("model",), ("train",), ("compress",), ("calibrate",), ("export",), ("compare",),
          ("demo",), ("cli", "__main__")]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
DEVICE = {"runtime", "capture", "tensorrt", "vision", "daemon", "bench"}
WORKSTATION = {"model", "train", "compress", "calibrate", "export", "compare"}


def test_imports_run_one_way_at_module_and_function_level():
    """Every ``import`` anywhere in a file (ast.walk sees function bodies too) follows the layer order."""
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        me = rel.parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        assert me in RANK, f"{rel}: put its package in LAYERS"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.split(".")[0] in ("torch", "torchvision") and (me in DEVICE or RANK[me] <= RANK["onnx_io"]):
                    wrong.append(f"{rel}:{node.lineno} imports {name.split('.')[0]}")
                if not name.startswith("alnett_edge.") or name.split(".")[1] == me:
                    continue
                other = name.split(".")[1]
                if RANK[other] > RANK[me] or (me in DEVICE and other in WORKSTATION):
                    wrong.append(f"{rel}:{node.lineno} imports {name}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_offline_vision_commands_do_not_load_the_service():
    """field-eval, optics calibrate and report run cell vision without the daemon's service, sinks
    or HTTP server (the modules a long-running process needs, and nothing else)."""
    code = BLOCK_TORCH + """
import sys
from alnett_edge.vision import fieldeval, optics, path, tracking
from alnett_edge.daemon import report
from alnett_edge.cli import daemon as cli_daemon, optics as cli_optics
loaded = sorted(m for m in sys.modules if m in ("alnett_edge.daemon.service", "alnett_edge.daemon.sinks",
                                                 "alnett_edge.daemon.http"))
print(loaded)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
