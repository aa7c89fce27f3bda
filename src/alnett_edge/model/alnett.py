"""ALNett: a cluster-layer CNN for acute lymphoblastic leukemia cell classification.

Jawahar et al., "ALNett: A cluster layer deep convolutional neural network for acute lymphoblastic
leukemia classification", Comput Biol Med 148 (2022). The paper publishes no code; this module is
the reference implementation of alnett-edge. Architecture, for an input of 3 x H x W::

    stem        Conv3x3(3 -> S, stride 2, pad 1, no bias) -> BatchNorm -> ReLU           H/2
    cluster i   (for each C_i in ``channels``, input has C_{i-1} channels, C_{-1} = S)
                  parallel branches over the SAME input, one per dilation d in ``dilations``:
                    depthwise Conv3x3(C_{i-1} -> C_{i-1}, groups=C_{i-1}, dilation d, pad d, no bias)
                  fuse:  concatenate (k * C_{i-1} channels)  |  sum (C_{i-1} channels)
                  pointwise Conv1x1(-> C_i, no bias) -> BatchNorm -> ReLU -> MaxPool 2x2       /2
    head        global average pooling -> Dropout(p) -> Linear(C_last -> num_classes)

The output is logits over ``ModelCard.class_names`` (hem = 0, all = 1, or a harvest's own classes). The
head averages with ``mean(dim=(2, 3))`` rather than a flatten/view, which keeps the graph free of
reshapes for export. Where the last map is 1x1 (``alnett-s`` at 64 px), LiteRT's converter turns that
mean into a RESHAPE with the sample's batch written in it, which no other batch can run (XNNPACK:
"failed to reshape"); the map is then averaged beside a copy of itself (the same mean, a 1x2 reduce).

A model is fully described by :class:`ALNettConfig` (plain ints, stored in the model card), so a
pruned model with other channel counts is rebuilt from card + weights, never from pickled modules.
"""

from __future__ import annotations

import copy

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from alnett_edge.errors import ConfigError

FUSIONS = ("concat", "sum")


@dataclass(frozen=True)
class ALNettConfig:
    stem_channels: int = 32
    channels: tuple[int, ...] = (64, 128, 256, 384, 512)
    dilations: tuple[int, ...] = (1, 2, 3)
    fusion: str = "concat"
    dropout: float = 0.2
    num_classes: int = 2
    in_chans: int = 3

    def validate(self) -> None:
        if self.stem_channels < 1 or not self.channels or min(self.channels) < 1:
            raise ConfigError("stem_channels and every entry of channels must be >= 1")
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError("dilations must be a non-empty list of integers >= 1")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 2:
            raise ConfigError("num_classes must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ALNettConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown ALNett config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("channels", "dilations"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        cfg = cls(**d)
        cfg.validate()
        return cfg


class ClusterLayer(nn.Module):
    """Parallel dilated depthwise 3x3 convolutions -> fuse -> 1x1 -> BN -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_ch: int, out_ch: int, dilations: tuple[int, ...], fusion: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, in_ch, 3, padding=d, dilation=d, groups=in_ch, bias=False) for d in dilations
        )
        fused = in_ch * len(dilations) if fusion == "concat" else in_ch
        self.pointwise = nn.Conv2d(fused, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.fusion == "concat":
            y = torch.cat(outs, dim=1)
        else:
            y = outs[0]
            for o in outs[1:]:
                y = y + o
        return self.pool(self.act(self.bn(self.pointwise(y))))


class ALNett(nn.Module):
    def __init__(self, config: ALNettConfig | None = None) -> None:
        super().__init__()
        config = config or ALNettConfig()
        config.validate()
        self.config = config
        s = config.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, s, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(s),
            nn.ReLU(inplace=True),
        )
        layers = []
        prev = s
        for ch in config.channels:
            layers.append(ClusterLayer(prev, ch, config.dilations, config.fusion))
            prev = ch
        self.clusters = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(prev, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.clusters(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if x.shape[-2:] == (1, 1):  # the map beside itself: the same mean, never a 1x1 reduce (see pool_1x1)
            x = torch.cat([x, x], dim=3)
        return self.head(self.dropout(x.mean(dim=(2, 3))))

    def min_input_size(self) -> int:
        """Smallest square input whose last cluster layer still has a 1x1 map."""
        return 2 ** (len(self.config.channels) + 1)


def fold_batchnorm(model: ALNett) -> ALNett:
    """A copy whose BatchNorms are folded into the convolutions before them (each conv gains a bias,
    each BN becomes an Identity), with the running statistics as they are: the function of the model
    in eval mode, and the graph an int8 deployment runs. QAT with frozen BN trains this graph directly
    (see ``compress.qat``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if hasattr(model, "fold_batchnorm"):  # a torchvision baseline (model/baselines.py) folds its own
        return model.fold_batchnorm()
    folded = copy.deepcopy(model).eval()
    if hasattr(folded, "members"):  # an ensemble (model/ensemble.py): fold each member
        folded.members = nn.ModuleList(fold_batchnorm(m) for m in folded.members)
        return folded
    folded.stem[0] = fuse_conv_bn_eval(folded.stem[0], folded.stem[1])
    folded.stem[1] = nn.Identity()
    for layer in folded.clusters:
        layer.pointwise = fuse_conv_bn_eval(layer.pointwise, layer.bn)
        layer.bn = nn.Identity()
    return folded


def config_of(model: ALNett) -> ALNettConfig:
    """The config that matches the module as it is now (after pruning the channel counts change)."""
    channels = tuple(layer.pointwise.out_channels for layer in model.clusters)
    base = model.config
    return ALNettConfig(
        stem_channels=model.stem[0].out_channels,
        channels=channels,
        dilations=base.dilations,
        fusion=base.fusion,
        dropout=base.dropout,
        num_classes=model.head.out_features,
        in_chans=model.stem[0].in_channels,
    )


@dataclass(frozen=True)
class Variant:
    name: str
    config: ALNettConfig
    input_size: int
    description: str
    budgets: dict[str, float] = field(default_factory=dict)
