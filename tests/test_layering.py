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
from alnett_edge.train import metrics
from alnett_edge.export import trt_lint, metadata
from alnett_edge.calibrate import reader, int8_safety
from alnett_edge import bundle, devices, evaluation, files, machine
from alnett_edge.runtime import base, loader, ort_backend, litert_backend, tensorrt_backend, predict, verify
from alnett_edge.bench import latency, runner, system, worker
from alnett_edge.capture import base as cbase, watchdog, images, video, v4l2, gstreamer, url, synthetic, picamera2
from alnett_edge.daemon import detector, cells, config, pipeline, sinks, stats, http
from alnett_edge.cli import app
assert devices.resolve_target("rpi")[0].name == "rpi5"
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


def test_nothing_outside_cli_imports_cli_and_bottom_layer_stays_at_the_bottom():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        imports = _imports(path)
        if rel.parts[0] != "cli" and rel.name != "__main__.py":
            assert not any(i.startswith("alnett_edge.cli") for i in imports), rel
        if rel.parts[0] in ("runtime", "capture", "daemon", "bench"):  # the device side: no torch, no training layers
            assert not any(i.split(".")[0] == "torch" for i in imports), rel
            training = ("alnett_edge.model", "alnett_edge.train", "alnett_edge.compress", "alnett_edge.export")
            torch_free = ("alnett_edge.train.metrics",)  # pure numpy, imported in the torch-blocked test above
            assert not any(i.startswith(training) and i not in torch_free for i in imports), rel
        if rel.name in ("errors.py", "card.py"):
            assert not any(i.startswith("torch") for i in imports), rel
            assert all(i in ("alnett_edge.errors",) or not i.startswith("alnett_edge") for i in imports), rel
