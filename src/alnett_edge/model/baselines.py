"""The models ALNett is compared with, built from torchvision and run through the same path.

The ALNett paper compares against VGG16, ResNet-50, GoogLeNet and AlexNet; a user deploying to an edge
device would pick MobileNetV2 / V3-Small, EfficientNet-B0 or ShuffleNetV2 instead. Each is torchvision's
architecture with a head of the card's classes (``--model NAME``), trained from scratch by default
(nothing can be downloaded here; ``train --weights FILE`` loads a torchvision state dict a user has),
then pruned, quantised, exported, gated and benched exactly like ALNett: the checkpoint is safetensors
with the card, whose ``arch`` is ``{"baseline": NAME, "num_classes": K}`` plus, once pruned, the
shapes of the layers pruning changed (``shapes``), so a pruned baseline is rebuilt from its card.

torchvision is imported only here and only on the workstation side (the ``train`` extra).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alnett_edge.errors import ConfigError

log = logging.getLogger(__name__)

#: the card's ``arch`` key that marks a baseline
BASELINE_KEY = "baseline"


@dataclass(frozen=True)
class BaselineSpec:
    builder: str  # torchvision.models function
    min_input: int  # the smallest square input its layers take
    description: str
    kwargs: tuple[tuple[str, Any], ...] = ()


#: name -> torchvision builder. Smallest inputs measured with a batch-1 forward pass (torchvision 0.29.1).
BASELINES: dict[str, BaselineSpec] = {
    "vgg16": BaselineSpec("vgg16", 32, "VGG16 (the paper's comparison), 138 M parameters at 1000 classes"),
    "resnet50": BaselineSpec("resnet50", 32, "ResNet-50 (the paper's comparison)"),
    "googlenet": BaselineSpec("googlenet", 32, "GoogLeNet / Inception v1 (the paper's comparison), no auxiliary heads",
                              (("aux_logits", False), ("init_weights", True))),
    "alexnet": BaselineSpec("alexnet", 63, "AlexNet (the paper's comparison)"),
    "mobilenet_v2": BaselineSpec("mobilenet_v2", 32, "MobileNetV2 (an edge model)"),
    "mobilenet_v3_small": BaselineSpec("mobilenet_v3_small", 32, "MobileNetV3-Small (an edge model)"),
    "efficientnet_b0": BaselineSpec("efficientnet_b0", 32, "EfficientNet-B0 (an edge model)"),
    "shufflenet_v2": BaselineSpec("shufflenet_v2_x1_0", 32, "ShuffleNetV2 x1.0 (an edge model)"),
}
#: the input size a baseline trains at unless ``--input-size`` says otherwise (torchvision's own)
DEFAULT_INPUT = 224


def is_baseline(name: str) -> bool:
    return name in BASELINES


def _spec(name: str) -> BaselineSpec:
    try:
        return BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def _build(name: str, num_classes: int) -> nn.Module:
    import torchvision.models as tvm

    spec = _spec(name)
    return getattr(tvm, spec.builder)(weights=None, num_classes=num_classes, **dict(spec.kwargs))


# --- layer shapes (what pruning changes) -----------------------------------------------------------

def _shape(module: nn.Module) -> list[int] | None:
    if isinstance(module, nn.Conv2d):
        return [module.in_channels, module.out_channels, module.groups]
    if isinstance(module, nn.BatchNorm2d):
        return [module.num_features]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    return None


def layer_shapes(net: nn.Module) -> dict[str, list[int]]:
    """Every convolution's (in, out, groups), BatchNorm's features and linear layer's (in, out)."""
    return {name: s for name, m in net.named_modules() if (s := _shape(m)) is not None}


def _reshaped(old: nn.Module, shape: list[int]) -> nn.Module:
    """A fresh module like ``old`` (its kernel, stride, padding, bias...) with another shape."""
    if isinstance(old, nn.Conv2d) and len(shape) == 3:
        return nn.Conv2d(shape[0], shape[1], old.kernel_size, old.stride, old.padding, old.dilation, shape[2],
                         old.bias is not None, old.padding_mode)
    if isinstance(old, nn.BatchNorm2d) and len(shape) == 1:
        return nn.BatchNorm2d(shape[0], old.eps, old.momentum, old.affine, old.track_running_stats)
    if isinstance(old, nn.Linear) and len(shape) == 2:
        return nn.Linear(shape[0], shape[1], old.bias is not None)
    raise ConfigError(f"a {type(old).__name__} cannot take the shape {shape}")


def _replace(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


# --- the module --------------------------------------------------------------------------------

class Baseline(nn.Module):
    """A torchvision classifier (``self.net``) with the interface the rest of the toolkit uses:
    ``head`` (its last linear layer, replaceable), ``min_input_size()`` and an ``arch`` for the card."""

    def __init__(self, name: str, num_classes: int = 2, shapes: dict[str, list[int]] | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError("num_classes must be >= 2")
        self.name = name
        self.net = _build(name, num_classes)
        self._fresh = {k: list(v) for k, v in layer_shapes(self.net).items()}
        for path, shape in (shapes or {}).items():
            try:
                old = self.net.get_submodule(path)
            except AttributeError:
                raise ConfigError(f"{name} has no layer {path!r}") from None
            _replace(self.net, path, _reshaped(old, list(shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _head_path(self) -> str:
        return [name for name, m in self.net.named_modules() if isinstance(m, nn.Linear)][-1]

    @property
    def head(self) -> nn.Linear:
        return self.net.get_submodule(self._head_path())  # type: ignore[return-value]

    @head.setter
    def head(self, module: nn.Linear) -> None:
        _replace(self.net, self._head_path(), module)

    def min_input_size(self) -> int:
        return _spec(self.name).min_input

    def arch(self) -> dict[str, Any]:
        """The card's ``arch``: the name, the classes and the layers whose shape is not torchvision's."""
        now = layer_shapes(self.net)
        changed = {k: v for k, v in now.items() if self._fresh.get(k) != v}
        out: dict[str, Any] = {BASELINE_KEY: self.name, "num_classes": self.head.out_features}
        if changed:
            out["shapes"] = changed
        return out

    def fold_batchnorm(self) -> "Baseline":
        """A copy whose BatchNorms that follow a convolution are folded into it (the same function in
        eval mode; what QAT trains and int8 runs). The pairs are found on the traced graph
        (``torch.fx``), so every torchvision block (Sequential, named attributes, downsample paths) is
        covered."""
        return _fold(self)


def create_baseline(name: str, num_classes: int = 2, **overrides: object) -> Baseline:
    if overrides:
        raise ConfigError(f"{name} is a torchvision baseline: {', '.join(sorted(overrides))} apply to ALNett only")
    return Baseline(name, num_classes)


def baseline_from_arch(arch: dict[str, Any]) -> Baseline:
    unknown = set(arch) - {BASELINE_KEY, "num_classes", "shapes"}
    if unknown:
        raise ConfigError(f"unknown baseline arch keys: {sorted(unknown)}")
    shapes = arch.get("shapes") or {}
    if not isinstance(shapes, dict):
        raise ConfigError("a baseline's shapes must be a mapping of layer -> shape")
    return Baseline(str(arch[BASELINE_KEY]), int(arch.get("num_classes", 2)), shapes)


def _fold(model: Baseline) -> Baseline:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    graph = torch.fx.symbolic_trace(folded.net).graph
    modules = dict(folded.net.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), nn.Conv2d)):
            _replace(folded.net, src.target, fuse_conv_bn_eval(modules[src.target], modules[node.target]))
            _replace(folded.net, node.target, nn.Identity())
    return folded


def load_torchvision_weights(model: Baseline, path: str | Path) -> dict[str, int]:
    """Load a torchvision state dict (``torch.save`` of ``model.state_dict()``, read with
    ``weights_only=True``: nothing pickled runs) into ``model.net``. A head of another class count is
    left as initialised. Raises ConfigError when the file is not that architecture's weights."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--weights: no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise ConfigError(f"--weights {path} is not a readable state dict ({type(exc).__name__})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {path} is not a state dict of tensors")
    own = model.net.state_dict()
    head = model._head_path()
    head_keys = {f"{head}.weight", f"{head}.bias"}
    missing = [k for k in own if k not in state and k not in head_keys]
    misfit = [k for k in own if k in state and k not in head_keys and state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own]
    if missing or misfit or extra:
        first = (missing or misfit or extra)[0]
        raise ConfigError(f"--weights {path} is not {model.name}'s: {len(missing)} of its {len(own)} tensors "
                          f"missing, {len(misfit)} of another shape, {len(extra)} unknown (first: {first!r})")
    kept = {k: v for k, v in state.items() if k not in head_keys or v.shape == own[k].shape}
    model.net.load_state_dict(kept, strict=False)
    skipped = len(state) - len(kept)
    if skipped:
        log.info("--weights %s: the %d-class head left as initialised for %d classes", path,
                 state[f"{head}.weight"].shape[0], model.head.out_features)
    return {"loaded": len(kept), "head_skipped": skipped}
