"""Parameter and multiply-accumulate (MAC) counts with per-layer output shapes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelProfile:
    input_shape: tuple[int, ...]
    params: int
    macs: int
    layers: tuple[LayerProfile, ...]


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() // out.shape[0] * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def profile_model(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> ModelProfile:
    """Run one batch-1 forward pass and count MACs of convolutions and linear layers (per image)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    layers: list[LayerProfile] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def hook(mod: nn.Module, _inp: object, out: torch.Tensor, _name: str = name) -> None:
            layers.append(
                LayerProfile(
                    name=_name,
                    kind=type(mod).__name__,
                    output_shape=tuple(out.shape),
                    params=sum(p.numel() for p in mod.parameters(recurse=False)),
                    macs=_macs(mod, out),
                )
            )

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, h, w))
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return ModelProfile(
        input_shape=(1, in_chans, h, w),
        params=sum(p.numel() for p in model.parameters()),
        macs=sum(layer.macs for layer in layers),
        layers=tuple(layers),
    )
