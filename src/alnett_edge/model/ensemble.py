"""Several ALNett models as one: the cross-validation fold models averaged (``train --folds K
--ensemble``).

The ensemble runs every member on the same input and returns the mean of the members' *calibrated*
logits: member k's logits divided by the temperature fitted on its own validation split. Each member
keeps the calibration it earned, and the ensemble's card then carries temperature 1. The graph is one
module, so export, QAT, every runtime backend and the daemon take it like any checkpoint; it costs the
sum of its members at run time (K times one model's multiply-accumulates and latency).

Its card records ``arch = {"members": [config, ...]}``; weights are stored as ``members.<k>.<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alnett_edge.errors import ConfigError
from alnett_edge.model.alnett import ALNett, ALNettConfig, config_of
from alnett_edge.model.baselines import BASELINE_KEY, Baseline, baseline_from_arch

#: the card's ``arch`` key that marks an ensemble
MEMBERS_KEY = "members"


class ALNettEnsemble(nn.Module):
    def __init__(self, members: Sequence[ALNett], temperatures: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 models, got {len(members)}")
        temps = list(temperatures) if temperatures is not None else [1.0] * len(members)
        if len(temps) != len(members) or min(temps) <= 0:
            raise ConfigError("an ensemble needs one positive temperature per member")
        classes = {m.head.out_features for m in members}
        if len(classes) != 1:
            raise ConfigError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("inv_temperature", torch.tensor([1.0 / t for t in temps], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x) for m in self.members])  # K x N x classes
        return (logits * self.inv_temperature.view(-1, 1, 1)).mean(dim=0)

    def min_input_size(self) -> int:
        return max(m.min_input_size() for m in self.members)


def arch_of(model: nn.Module) -> dict[str, Any]:
    """The card's ``arch`` for an ALNett, a baseline or an ensemble of them, as the module is now."""
    if isinstance(model, ALNettEnsemble):
        return {MEMBERS_KEY: [arch_of(m) for m in model.members]}
    if isinstance(model, Baseline):
        return model.arch()
    return config_of(model).to_dict()


def _one(arch: dict[str, Any]) -> nn.Module:
    return baseline_from_arch(arch) if BASELINE_KEY in arch else ALNett(ALNettConfig.from_dict(arch))


def model_from_arch(arch: dict[str, Any]) -> nn.Module:
    """A fresh module for a card's ``arch`` (raises ConfigError for an invalid one)."""
    if MEMBERS_KEY in arch:
        members = arch[MEMBERS_KEY]
        if not isinstance(members, list):
            raise ConfigError(f"arch.{MEMBERS_KEY} must be a list of member architectures")
        return ALNettEnsemble([_one(d) for d in members], [1.0] * len(members))
    return _one(arch)


def members_of(model: nn.Module) -> list[ALNett]:
    """The ALNett models inside ``model`` (itself when it is one)."""
    return list(model.members) if isinstance(model, ALNettEnsemble) else [model]
