"""Structured channel pruning of ALNett with torch-pruning's dependency graph (DepGraph).

The dependency graph keeps the parallel dilated depthwise branches, their concatenation (or sum),
the pointwise convolutions and BatchNorms consistent: removing input channel c of a cluster layer
removes channel c of every branch and the matching slices of the pointwise input. The head is never
pruned (it is the class output).

torch-pruning 1.6.1 sizes a group's importance vector from the pointwise convolution's input
(k x C channels after concatenation) instead of the group root (C channels) and then silently skips
every such group, so without a fix only the last layer shrinks. :class:`_RootSized` truncates the
importance to the root's channel count; a test checks that every cluster layer really shrinks.

``ratio`` is the share of MACs to remove (0.5 = half the MACs). Each stage bisects torch-pruning's
channel ratio (uniform per layer, or global), pruning a copy per trial, and keeps the model whose MAC
count is closest to the target (channel counts rounded to multiples of ``round_to``); with ``steps``
> 1 the MAC target is reached in that many stages (geometric), calling ``finetune`` after each stage
(prune, fine-tune, repeat).
The result's architecture is plain channel counts, written to the model card.

A budget (``budget``: accuracy points, default 1) keeps pruning honest: after each stage (and its
fine-tuning) the model is scored on the validation split, and a stage that leaves it more than the
budget below the unpruned model is undone and pruning stops there, saying so. When even the first
stage breaks the budget there is no pruned model: :func:`prune_checkpoint` writes no checkpoint and its
report says why (the demo then exports the unpruned model). In more ``steps`` the stages are smaller,
so more of the pruning can stay within the budget.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from alnett_edge.compress.report import calibrated_row, fp32_row, metrics_row
from alnett_edge.train.dataset import load_split_datasets
from alnett_edge.errors import CompressionError, ConfigError
from alnett_edge.model.alnett import ALNett, config_of
from alnett_edge.model.baselines import Baseline
from alnett_edge.model.checkpoint import load_checkpoint, save_checkpoint
from alnett_edge.model.ensemble import MEMBERS_KEY
from alnett_edge.model.profile import profile_model
from alnett_edge.train.loop import finetune_config, recalibrate_bn, train

log = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2", "bn", "taylor")
MAX_LAYER_RATIO = 0.8  # no layer loses more than 80 % of its channels (global pruning would empty some)
_SEARCH_STEPS = 12  # bisection steps over the channel ratio (each prunes a copy)
TOLERANCE = 0.10  # the MAC target may be missed by this share (channel counts are discrete)


class _RootSized(tp.importance.Importance):
    """Wraps an importance so its vector has one entry per root channel (fixes skipped concat groups)."""

    def __init__(self, inner: tp.importance.Importance) -> None:
        self.inner = inner

    def __call__(self, group: Any, **kwargs: Any) -> torch.Tensor | None:
        imp = self.inner(group, **kwargs)
        if imp is None:
            return None
        return imp[: len(group[0].idxs)]


def make_importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        inner = tp.importance.GroupMagnitudeImportance(p=1)
    elif name == "l2":
        inner = tp.importance.GroupMagnitudeImportance(p=2)
    elif name == "bn":
        inner = tp.importance.BNScaleImportance()
    elif name == "taylor":
        inner = tp.importance.GroupTaylorImportance()
    else:
        raise ConfigError(f"unknown importance {name!r}; use one of {', '.join(IMPORTANCES)}")
    return _RootSized(inner)


@dataclass(frozen=True)
class PruneConfig:
    ratio: float | None = 0.5  # share of MACs to remove
    target_macs: float | None = None  # absolute MAC target (overrides ratio)
    importance: str = "l1"
    global_pruning: bool = False
    steps: int = 1
    #: Keep channel counts multiples of this (None: any count). Measured with ONNX Runtime on this
    #: 2-core AVX2 CPU, alnett-s batch 1 / 8, p50: unpruned 1.04 / 7.9 ms; 50 % MACs with free channel
    #: counts (21, 43, 87, 131, 175) 1.74 / 11.2 ms, i.e. *slower*; multiples of 8 1.09 / 8.0 ms;
    #: multiples of 16 (45 % MACs) 0.63 / 4.6 ms. Multiples of 16 also suit TensorRT's int8 kernels.
    round_to: int | None = 16
    #: The most validation accuracy (in points) pruning may cost against the unpruned model; None: no limit.
    budget: float | None = 1.0

    def validate(self) -> None:
        if self.target_macs is None:
            if self.ratio is None or not 0.0 < self.ratio < 1.0:
                raise ConfigError(f"--ratio must be in (0, 1), got {self.ratio}")
        elif self.target_macs <= 0:
            raise ConfigError("--target-macs must be > 0")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown importance {self.importance!r}; use one of {', '.join(IMPORTANCES)}")
        if self.steps < 1:
            raise ConfigError("--steps must be >= 1")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError("--round-to must be >= 1")
        if self.budget is not None and not 0.0 <= self.budget <= 100.0:
            raise ConfigError(f"--budget is in accuracy points, 0 to 100, got {self.budget:g}")


@dataclass
class PruneResult:
    model: ALNett
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    channels_before: dict[str, Any]
    channels_after: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: The stage that broke the budget and was undone (None: every stage kept).
    stopped: dict[str, Any] | None = None

    @property
    def pruned(self) -> bool:
        """Whether any stage was kept (False: the budget undid the first one; ``model`` is unpruned)."""
        return self.macs_after < self.macs_before

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before, "macs_after": self.macs_after, "mac_ratio": round(self.mac_ratio, 4),
            "params_before": self.params_before, "params_after": self.params_after,
            "channels_before": self.channels_before, "channels_after": self.channels_after, "stages": self.stages,
            "stopped": self.stopped,
        }  # fmt: skip


def _channels(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, Baseline):  # a torchvision model: every convolution's output channels, in order
        return {"convs": [m.out_channels for m in model.net.modules() if isinstance(m, nn.Conv2d)]}
    cfg = config_of(model)
    return {"stem": cfg.stem_channels, "clusters": list(cfg.channels)}


def _prune_once(model: ALNett, input_size: int, ratio: float, cfg: PruneConfig,
                batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None) -> None:
    model.eval()
    if cfg.importance == "taylor":
        _accumulate_gradients(model, batches)
    try:
        pruner = tp.pruner.MetaPruner(
            model, torch.randn(1, 3, input_size, input_size), importance=make_importance(cfg.importance),
            global_pruning=cfg.global_pruning, pruning_ratio=ratio, max_pruning_ratio=MAX_LAYER_RATIO,
            iterative_steps=1, ignored_layers=[model.head], round_to=cfg.round_to,
        )
    except (ArithmeticError, IndexError, KeyError, RuntimeError, ValueError) as exc:
        # ShuffleNetV2: its channel shuffle reshapes the channel axis, which DepGraph cannot follow
        # (ZeroDivisionError in torch-pruning 1.6.1; Torch-Pruning issue 14, open since 2020)
        name = getattr(model, "name", type(model).__name__)
        raise CompressionError(f"torch-pruning cannot build {name}'s dependency graph ({type(exc).__name__}: "
                               f"{exc}); use it unpruned") from exc
    pruner.step()
    model.zero_grad(set_to_none=True)


def _prune_to(model: ALNett, input_size: int, target: float, cfg: PruneConfig,
              batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None) -> tuple[ALNett, int]:
    """Bisect the channel pruning ratio (each trial on a copy) for the MAC count closest to ``target``."""
    lo, hi = 0.0, MAX_LAYER_RATIO
    best: tuple[float, ALNett, int] | None = None
    for _ in range(_SEARCH_STEPS):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        _prune_once(trial, input_size, ratio, cfg, batches)
        macs = profile_model(trial, input_size).macs
        if best is None or abs(macs - target) < best[0]:
            best = (abs(macs - target), trial, macs)
        if macs > target:
            lo = ratio
        else:
            hi = ratio
    assert best is not None
    return best[1], best[2]


def prune(model: ALNett, input_size: int, cfg: PruneConfig,
          batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None,
          finetune: Callable[[ALNett, int], None] | None = None,
          score: Callable[[ALNett], float] | None = None) -> PruneResult:
    """Prune to the MAC target; ``result.model`` is the pruned model (``model`` is left as it was).

    ``batches`` yields (x, y) for Taylor importance; ``finetune(model, stage)`` runs after each stage.
    ``score(model)`` is validation accuracy (0..1): with it, ``cfg.budget`` is kept (see the module doc);
    without it there is nothing to keep a budget against and every stage stands.
    """
    cfg.validate()
    if cfg.importance == "taylor" and batches is None:
        raise ConfigError("Taylor importance needs training batches")
    before = profile_model(model, input_size)
    target = cfg.target_macs if cfg.target_macs is not None else before.macs * (1.0 - cfg.ratio)
    if target >= before.macs:
        raise ConfigError(f"target {target / 1e6:.1f} M MACs is not below the model's {before.macs / 1e6:.1f} M")
    channels_before = _channels(model)
    stage_targets = [before.macs * (target / before.macs) ** ((i + 1) / cfg.steps) for i in range(cfg.steps)]
    stages: list[dict[str, Any]] = []
    stopped = None
    baseline = score(model) if score is not None else None
    for i, stage_target in enumerate(stage_targets):
        kept = model
        model, macs = _prune_to(model, input_size, stage_target, cfg, batches)
        if macs > stage_target * (1 + TOLERANCE):
            raise CompressionError(
                f"pruning reached {macs / 1e6:.2f} M MACs, not the {stage_target / 1e6:.2f} M target: channel "
                f"counts stay multiples of {cfg.round_to or 1} and each layer keeps at least "
                f"{1 - MAX_LAYER_RATIO:.0%} of its channels; ask for a smaller ratio, a smaller --round-to "
                f"or another importance than '{cfg.importance}'"
            )
        log.info("pruning stage %d/%d: %.1f M MACs (target %.1f M)", i + 1, cfg.steps, macs / 1e6, stage_target / 1e6)
        if finetune is not None:
            finetune(model, i)
        row: dict[str, Any] = {"stage": i + 1, "macs": macs, "channels": _channels(model)}
        if baseline is not None:
            row["accuracy"] = acc = score(model)  # type: ignore[misc]
            drop = 100.0 * (baseline - acc)
            if cfg.budget is not None and drop > cfg.budget + 1e-9:
                stopped = {**row, "baseline_accuracy": baseline, "drop_points": round(drop, 2),
                           "budget_points": cfg.budget}
                log.info("pruning stage %d to %.1f M MACs costs %.1f points of validation accuracy (%.4f -> %.4f), "
                            "more than the %g-point budget: stage undone, pruning stopped", i + 1, macs / 1e6, drop,
                            baseline, acc, cfg.budget)
                model = kept
                break
        stages.append(row)
    after = profile_model(model, input_size)
    return PruneResult(model, before.macs, after.macs, before.params, after.params, channels_before,
                       _channels(model), stages, stopped)


def _accumulate_gradients(model: nn.Module, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> None:
    model.zero_grad(set_to_none=True)
    model.eval()  # BN statistics stay as they are; gradients flow all the same
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches():
        loss_fn(model(x), y).backward()


# --- the `alnett-edge prune` job ---------------------------------------------------------------


def prune_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, cfg: PruneConfig,
                     finetune_epochs: int = 2, lr: float = 1e-3, progress: bool = False) -> dict[str, Any]:
    """Prune a checkpoint, fine-tune after each stage on its own training split, report before -> after.

    Writes ``out/pruned.safetensors`` (channel counts in its card) and ``out/prune_report.json``; when
    the budget undoes the first stage, only the report (``pruned`` None, ``stopped`` saying why).
    """
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, card = load_checkpoint(checkpoint)
    if card.quantization:
        raise ConfigError(f"{checkpoint} is a quantized ({card.quantization.get('scheme')}) model; prune its fp32 parent")
    if MEMBERS_KEY in card.arch:
        raise ConfigError(f"{checkpoint} is an ensemble of {len(card.arch[MEMBERS_KEY])} models; prune the fold "
                          "models, then build the ensemble from the pruned ones")
    base_cfg = finetune_config(card, data, out / "finetune", finetune_epochs, lr)
    sd = load_split_datasets(data, card.input, base_cfg.layout, base_cfg.labels_csv, base_cfg.val_fraction,
                             base_cfg.seed, base_cfg.val_fold)
    before = fp32_row("before", model, card, sd.val, out, Path(checkpoint))
    size = card.input.size[0]

    def batches():  # a few training batches for Taylor importance
        loader = torch.utils.data.DataLoader(sd.train, batch_size=32, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        for i, (x, y) in enumerate(loader):
            if i >= 4:
                break
            yield x, y

    def finetune(m: ALNett, stage: int) -> None:
        if finetune_epochs > 0:
            tcfg = finetune_config(card, data, out / f"finetune-stage{stage + 1}", finetune_epochs, lr)
            train(tcfg, progress=progress, init=(m, card.copy()))
        else:
            recalibrate_bn(m, sd.train, torch.device("cpu"), 32)
        m.cpu().eval()

    result = prune(model, size, cfg, batches=batches, finetune=finetune,
                   score=lambda m: metrics_row(m, sd.val, card)[0]["accuracy"])
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "config": cfg.__dict__, "before": before,
                              "stopped": result.stopped, "stages": result.stages}
    if not result.pruned:  # the budget undid the first stage: no pruned model to write
        report.update(pruned=None, after=None, mac_ratio=1.0)
        (out / "prune_report.json").write_text(json.dumps(report, indent=2))
        return report
    model = result.model
    pruned_card = card.copy()
    pruned_card.compression = {"pruning": {**result.to_dict(), "importance": cfg.importance,
                                           "global": cfg.global_pruning, "round_to": cfg.round_to,
                                           "finetune_epochs": finetune_epochs, "budget_points": cfg.budget}}
    path = save_checkpoint(out / "pruned.safetensors", model, pruned_card)
    after = fp32_row("after", model, pruned_card, sd.val, out, path)
    pruned_card.metrics = {"val": {k: after[k] for k in ("accuracy", "sensitivity", "specificity", "f1")}}
    pruned_card.calibration = calibrated_row(model, sd.val, pruned_card)[2]  # the pruned model's own temperature
    save_checkpoint(path, model, pruned_card)
    report.update(pruned=str(path), after=after, mac_ratio=round(result.mac_ratio, 4))
    (out / "prune_report.json").write_text(json.dumps(report, indent=2))
    return report
