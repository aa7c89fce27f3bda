"""Training: AdamW + warm-up/cosine schedule, class-balanced loss, an exponential moving average (EMA)
of the weights, and the epoch chosen on a smoothed validation loss (``select``).

A small validation split is noisy: on 42 cells one lucky epoch's F1 can jump 10 points, and early
stopping on it ends runs at epoch 2-3 (issue 16). So by default every epoch validates the EMA of the
weights (a model averaged over the last ``ema_epochs`` epochs of steps), and the epoch kept is the one
with the lowest validation negative log-likelihood at its fitted temperature, averaged over the last
``SMOOTH_EPOCHS`` epochs; patience counts epochs without a better smoothed value. ``select = "f1"`` is
the earlier rule (best raw validation F1); ``select = "last"`` trains the whole schedule and keeps the
final model, validation only reporting.

Writes to ``out``: ``best.safetensors`` (the kept epoch), ``last.safetensors`` + ``last.state.pt``
(optimiser/scheduler/epoch, for ``--resume``), ``history.json`` and ``summary.json``.

Runs on CUDA with AMP when a GPU is present. Under ``torchrun`` (``WORLD_SIZE`` > 1) it uses
DistributedDataParallel with a DistributedSampler (NCCL on GPUs, gloo on CPU); rank 0 validates,
writes files and decides early stopping, which is broadcast to the other ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from alnett_edge.card import STAIN_MODES, TTA_MODES, ClassSet, InputSpec, ModelCard, blast_sum
from alnett_edge.data.appearance import fit_appearance
from alnett_edge.data.augment import AugmentConfig
from alnett_edge.data.preprocess import with_tta
from alnett_edge.data.scale import measure_canvas_um
from alnett_edge.train.dataset import BagBatchSampler, CellDataset, load_split_datasets
from alnett_edge.data.sources import class_counts, classes_of, load_samples
from alnett_edge.errors import ConfigError, TrainingError
from alnett_edge.model.alnett import ALNett
from alnett_edge.model.baselines import Baseline, load_torchvision_weights
from alnett_edge.model.checkpoint import load_checkpoint, load_training_state, new_card, save_checkpoint
from alnett_edge.model.registry import check_model, create_model
from alnett_edge.model.torch_backend import pick_device
from alnett_edge.vision.harvest import dataset_canvas_um
from alnett_edge.metrics import (binary_metrics, calibration_summary, field_rule, field_scores, patient_metrics,
                                 softmax)

log = logging.getLogger(__name__)

# The resume pair a run keeps beside best.safetensors (deleted by `compare` once a fold is done).
LAST_WEIGHTS, LAST_STATE = "last.safetensors", "last.state.pt"
RESUME_FILES = (LAST_WEIGHTS, LAST_STATE)

BALANCE_MODES = ("weights", "sampler", "none")
#: how a cell with only its field's label is trained (``--weak-labels``): ``naive``, the field's label is the
#: cell's; ``mil``, multiple-instance learning: a benign field has no blasts (each of its cells is benign),
#: an ALL field has at least one (its most blast-like cell is pushed towards blast, the others are free)
WEAK_MODES = ("naive", "mil")
SELECT_MODES = ("loss", "f1", "last")
#: the validation loss that chooses the epoch is the mean over this many epochs (see the module doc)
SMOOTH_EPOCHS = 3
HISTORY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "f1_weighted", "roc_auc")


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/train"
    variant: str = "alnett-s"
    input_size: int | None = None
    layout: str = "auto"
    labels_csv: str | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int = 8
    val_fraction: float = 0.2
    val_fold: str | None = None
    seed: int = 0
    workers: int = 2
    balance: str = "weights"
    augment: bool = True
    colour_jitter: tuple[float, float] = (0.0, 0.0)  # augmentation: hue turned up to [0] degrees, saturation x 1 +- [1]
    amp: bool = True
    device: str = "auto"
    resume: bool = False
    stop_after: int | None = None  # run at most this many epochs now; continue later with resume
    dilations: tuple[int, ...] | None = None
    fusion: str | None = None
    stain: str = "auto"  # colour normalisation recorded in the card (InputSpec.stain); auto: resolve_stain
    canvas_um: float = 0.0  # the input canvas side in µm; 0: measured from the training cells
    cv_folds: int = 0  # cross-validation: this run is fold cv_fold of cv_folds (train/cv.py); 0: no CV
    cv_fold: int = 0
    ema_epochs: float = 2.0  # the weights' moving average spans about this many epochs (at most a fifth of
    # the schedule); 0: no EMA
    select: str = "loss"  # which epoch is kept (SELECT_MODES, see the module doc)
    label_smoothing: float = 0.0
    tta: str = "none"  # test-time augmentation recorded in the card (InputSpec.tta)
    init: str | None = None  # fine-tune from this checkpoint (its preprocessing kept; canvas, appearance re-measured)
    freeze: int = 0  # with init: the stem and this many first clusters keep their weights (BN statistics adapt)
    weak_labels: str = "naive"  # WEAK_MODES: how cells labelled only by their field are trained
    weights: str | None = None  # a baseline's starting weights: a torchvision state dict (model/baselines.py)

    def validate(self) -> None:
        check_model(self.variant)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("learning rate must be > 0 and weight decay >= 0")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"balance must be one of {BALANCE_MODES}")
        if self.workers < 0 or self.patience < 1:
            raise ConfigError("workers must be >= 0 and patience >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}")
        if self.stain not in ("auto", *STAIN_MODES):
            raise ConfigError(f"--stain must be auto or one of {', '.join(STAIN_MODES)}, got {self.stain!r}")
        if not self.canvas_um >= 0:
            raise ConfigError(f"--canvas-um must be >= 0, got {self.canvas_um}")
        hue, sat = self.colour_jitter
        if not (0 <= hue <= 90 and 0 <= sat < 1):
            raise ConfigError(f"--colour-jitter HUE,SAT needs 0 <= HUE <= 90 degrees and 0 <= SAT < 1, got {hue:g},{sat:g}")
        if not self.ema_epochs >= 0:
            raise ConfigError(f"--ema-epochs must be >= 0, got {self.ema_epochs}")
        if self.select not in SELECT_MODES:
            raise ConfigError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.freeze < 0 or (self.freeze and not self.init):
            raise ConfigError("--freeze N (>= 0) freezes the early clusters of the model given with --init")
        if self.init and self.resume:
            raise ConfigError("--init starts a fine-tune; --resume continues one: give one of them")
        if self.weak_labels not in WEAK_MODES:
            raise ConfigError(f"--weak-labels must be one of {', '.join(WEAK_MODES)}, got {self.weak_labels!r}")


def finetune_config(card: ModelCard, data: str | Path, out: str | Path, epochs: int, lr: float,
                    **overrides: Any) -> TrainConfig:
    """A TrainConfig that fine-tunes with the data split and settings recorded in ``card``."""
    recorded = dict(card.training.get("config", {}))
    known = set(TrainConfig.__dataclass_fields__)
    base = {k: v for k, v in recorded.items() if k in known}
    if base.get("dilations") is not None:
        base["dilations"] = tuple(base["dilations"])
    if base.get("colour_jitter") is not None:
        base["colour_jitter"] = tuple(base["colour_jitter"])
    base.update(data=str(data), out=str(out), epochs=epochs, lr=lr, warmup_epochs=0.0, patience=max(epochs, 1),
                resume=False, stop_after=None, variant=card.variant)
    base.update(overrides)
    return TrainConfig(**base)


def augment_config(cfg: TrainConfig) -> AugmentConfig | None:
    """The training augmentation a config asks for (None: ``--no-augment``)."""
    return AugmentConfig(hue=cfg.colour_jitter[0], saturation=cfg.colour_jitter[1]) if cfg.augment else None


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    load_report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_eval(model: nn.Module) -> None:
    """``model.eval()``; exported (PT2E) graphs refuse it and are put in eval mode by their own helpers."""
    try:
        model.eval()
    except NotImplementedError:
        pass


def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, spec: InputSpec | None = None) -> np.ndarray:
    """Logits (N x classes) in loader order; under ``spec``'s test-time augmentation, as every runtime
    backend applies it."""
    set_eval(model)

    def run(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch).to(device, non_blocking=True)).float().cpu().numpy()

    out = []
    with torch.inference_mode():
        for x, _ in loader:
            out.append(with_tta(run, x.numpy(), spec) if spec is not None else run(x.numpy()))
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def evaluate_dataset(model: nn.Module, ds: CellDataset, device: torch.device, blast: Sequence[int], batch_size: int = 64,
                     workers: int = 0, calibrate: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Image- and patient-level metrics of ``model`` on ``ds`` (blast or not); also returns P(blast) per
    image (``blast``: the card's ``blast_columns``, whose probabilities are summed); with more than two
    classes, ``class_accuracy`` too (the top class against the label). With ``calibrate``,
    ``metrics["calibration"]`` is the temperature fitted on these cells
    (:func:`alnett_edge.metrics.calibration_summary`): on a validation split, what the card records."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    logits = predict_logits(model, loader, device, ds.spec)
    prob = softmax(logits)
    prob_all = blast_sum(prob, blast)
    metrics = binary_metrics(ds.blast, prob_all)
    if prob.shape[1] > 2 and len(ds.labels):
        metrics["class_accuracy"] = round(float((prob.argmax(axis=1) == ds.labels).mean()), 4)
    per_patient = patient_metrics(ds.blast, prob_all, [s.patient_id for s in ds.samples])
    if per_patient is not None:
        metrics["per_patient"] = per_patient
    if calibrate:  # the labels are the output columns (the loss is trained on them)
        metrics["calibration"] = calibration_summary(logits, ds.labels) if len(ds.labels) else {}
    return metrics, prob_all


@torch.no_grad()
def recalibrate_bn(model: nn.Module, ds: CellDataset, device: torch.device, batch_size: int, max_images: int = 2048,
                   seed: int = 0) -> None:
    """Precise BatchNorm: replace running mean/var by their exact averages over training batches.

    With few steps per epoch and a high learning rate, the exponential running averages lag far
    behind the weights and an eval-mode model can be much worse than the same model in train mode
    (measured here: 55 % vs 87 % training accuracy after 4 epochs of 300 images). Recomputing the
    statistics before every validation makes validation, checkpoints and exports use the statistics
    of the weights they hold. Only BatchNorm buffers change; weights and optimiser state do not.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(ds) > batch_size)
    seen = 0
    for x, _ in loader:
        model(x.to(device))
        seen += len(x)
        if seen >= max_images:
            break
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)


def _class_weights(labels: np.ndarray, classes: int = 2) -> torch.Tensor:
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _lr_lambda(total_steps: int, warmup_steps: int):  # noqa: ANN202
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _amp_context(device: torch.device, enabled: bool):  # noqa: ANN202
    if not (enabled and device.type == "cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def run_epoch(net: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, device: torch.device, amp: bool = False, scaler: Any = None,
              on_step: Any = None, after_update: Any = None) -> tuple[float, int, float]:
    """One pass over ``loader``; returns (mean loss, images seen, seconds). ``net`` must be in train mode.
    ``after_update()`` runs after every optimiser step (the weights' moving average)."""
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _amp_context(device, amp):
            loss = criterion(net(x), y)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if after_update is not None:
            after_update()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.item() * len(y)
        seen += len(y)
        if on_step:
            on_step(loss_sum / seen)
    return loss_sum / max(seen, 1), seen, time.perf_counter() - t0


def make_criterion(labels: np.ndarray, balance: str, device: torch.device, label_smoothing: float = 0.0,
                   mil_blast: Sequence[int] | None = None, classes: int = 2) -> nn.Module:
    weight = _class_weights(labels, classes).to(device) if balance == "weights" else None
    if mil_blast is not None:
        return MILLoss(mil_blast, weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


class MILLoss(nn.Module):
    """Multiple-instance loss over targets (label, bag) (:meth:`CellDataset.with_bags`). A cell with its
    own label (bag -1) and every cell of a negative bag: cross-entropy on its label (a benign field has
    no blasts). A positive bag (an ALL field): the bag's probability of holding a blast (P(blast): the sum
    over the blast classes ``blast``) is its most blast-like cell's, -log max_i P_i(blast), counted once per
    cell of the bag (with that cell's class weight) so that the classes weigh as they would in the naive
    loss. Class weights as the naive loss; the mean over cells."""

    def __init__(self, blast: Sequence[int], weight: torch.Tensor | None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.blast = list(blast)
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="none")
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels, bags = target[:, 0], target[:, 1]
        w = self.weight if self.weight is not None else logits.new_ones(logits.shape[1])
        blast = torch.tensor(self.blast, device=labels.device)
        pooled = (bags >= 0) & torch.isin(labels, blast)
        cell = ~pooled
        total = self.ce(logits[cell], labels[cell]).sum() if cell.any() else logits.sum() * 0
        weight = w[labels[cell]].sum() if cell.any() else logits.new_zeros(())
        if pooled.any():
            logp = torch.logsumexp(torch.log_softmax(logits[pooled].float(), dim=1)[:, blast], dim=1)
            ids, inverse = torch.unique(bags[pooled], return_inverse=True)
            best = torch.full((len(ids),), -torch.inf, device=logits.device).scatter_reduce(0, inverse, logp, "amax")
            bag_weight = torch.zeros(len(ids), device=logits.device).index_add(0, inverse, w[labels[pooled]].float())
            total = total - (best * bag_weight).sum()
            weight = weight + bag_weight.sum()
        return total / weight.clamp_min(1e-9)


def make_ema(model: nn.Module, epochs: float, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights spanning about ``epochs`` epochs of steps
    (decay 1 - 1 / steps); None for ``epochs`` 0. BatchNorm statistics are not averaged: they are
    recomputed for the averaged weights before it is validated (:func:`recalibrate_bn`)."""
    if epochs <= 0:
        return None
    decay = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def selection_score(select: str, history: list[dict[str, Any]]) -> float:
    """The number the kept epoch minimises, from the validation history up to this epoch."""
    if select == "f1":
        return -float(history[-1]["f1"])
    if select == "loss":
        window = [float(r["val_nll"]) for r in history[-SMOOTH_EPOCHS:]]
        return float(np.mean(window))
    return -float(history[-1]["epoch"])  # "last": every epoch is better than the one before


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup_steps))


#: fewer patients of a class than this in the training split: each patient's stain can stand in for the class
FEW_PATIENTS = 8


def few_patients(samples: list[Any], class_names: tuple[str, ...]) -> dict[str, int]:
    """The classes whose cells come from fewer than ``FEW_PATIENTS`` patients, with their patient
    counts (samples without patient ids are not counted)."""
    patients: dict[int, set[str]] = {}
    for sample in samples:
        if sample.patient_id is not None:
            patients.setdefault(int(sample.label), set()).add(sample.patient_id)
    return {class_names[k]: len(v) for k, v in sorted(patients.items()) if len(v) < FEW_PATIENTS}


def _listed(few: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in few.items())


def resolve_stain(stain: str, samples: list[Any], class_names: tuple[str, ...]) -> str:
    """``--stain auto``: "cell" when a class of the dataset comes from few patients, else "none". With
    few patients the model can learn which patient a cell came from (its stain) instead of what the cell
    is. Measured on 300 synthetic cells of 15 patients (10 ALL, 5 normal, each its own stain; 5-fold,
    patient-disjoint, alnett-s): accuracy 0.683 +- 0.062 with "none", 0.917 +- 0.020 with "cell"; on
    the 70 real C-NMC cells of 42 patients the two are equal within noise (docs/engineering/data-and-metrics.md)."""
    if stain != "auto":
        return stain
    few = few_patients(samples, class_names)
    if few:  # a caveat about the data as much as a choice: said by default
        log.warning("stain normalisation: cell (--stain auto: few patients per class, %s; each cell's colour is "
                    "standardised so that a patient's stain cannot stand in for the class)", _listed(few))
        return "cell"
    log.info("stain normalisation: none (--stain auto: every class has %d or more patients)", FEW_PATIENTS)
    return "none"


def _warn_few_patients(ds: Any, class_names: tuple[str, ...]) -> None:
    """Warn when ``--stain none`` was asked although a class of the training split comes from few
    patients (see ``resolve_stain``)."""
    few = few_patients(ds.samples, class_names)
    if few:
        log.warning("few patients in the training split (%s): the model can learn each patient's stain instead "
                    "of the cell; --stain cell normalises each cell's colour (docs/engineering/data-and-metrics.md)",
                    _listed(few))


def _field_decision(val_ds: CellDataset, prob_all: np.ndarray) -> dict[str, Any] | None:
    """The field rule (``metrics.field_rule``) fitted on the validation split's fields (its groups: a
    harvest's fields or sessions), when it holds fields of both classes."""
    keys, labels, scores, _ = field_scores(val_ds.blast, prob_all, [s.patient_id for s in val_ds.samples])
    if len(set(labels.tolist())) < 2:
        return None
    return field_rule(labels, scores, f"{len(keys)} validation fields")


def _fine_tune_start(cfg: TrainConfig, classes: ClassSet) -> tuple[ALNett, ModelCard]:
    """The model and card of ``--init``, for new cells: the card's preprocessing (input size, mean/std,
    stain mode, masking) is kept; its canvas and the look of its training cells are measured again on
    the new data; the stem and the first ``--freeze`` clusters keep their weights. New data of other
    classes (a two-class card fine-tuned on Benign / Early / Pre / Pro cells) gets a new head."""
    model, card = load_checkpoint(cfg.init)
    card = card.copy()
    card.input = replace(card.input, canvas_um=0.0)
    card.appearance, card.field_decision = {}, {}
    if card.class_set != classes:
        if not isinstance(model, (ALNett, Baseline)):
            raise ConfigError(f"--init {cfg.init}: an ensemble cannot take new classes; fine-tune one member")
        log.info("fine-tuning from %s onto the classes %s: a new head (was %s)", cfg.init, ", ".join(classes.names),
                 ", ".join(card.class_names))
        model.head = nn.Linear(model.head.in_features, len(classes.names))
        if isinstance(model, ALNett):
            model.config = replace(model.config, num_classes=len(classes.names))
        card.class_names, card.blast_classes = classes.names, () if classes.binary else classes.blast
        card.calibration, card.metrics = {}, {}
    if cfg.freeze:
        if not isinstance(model, ALNett):
            raise ConfigError(f"--freeze counts ALNett's clusters; {card.variant} has none (fine-tune it whole)")
        clusters = list(model.clusters)
        if cfg.freeze > len(clusters):
            raise ConfigError(f"--freeze {cfg.freeze}: {card.variant} has {len(clusters)} clusters")
        for module in [model.stem, *clusters[: cfg.freeze]]:
            for p in module.parameters():
                p.requires_grad_(False)
        log.info("fine-tuning from %s: stem and clusters 1-%d frozen", cfg.init, cfg.freeze)
    return model, card


def train(cfg: TrainConfig, progress: bool = True, init: tuple[ALNett, ModelCard] | None = None) -> TrainResult:
    """Train a fresh variant, resume (``cfg.resume``), or fine-tune ``init`` = (model, card). The model
    object ends as the last validated weights (with EMA on, the moving average)."""
    cfg.validate()
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    dd = _init_distributed(device)
    if dd.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{dd.local_rank}")
        torch.cuda.set_device(device)
    seed_everything(cfg.seed + dd.rank)
    out = Path(cfg.out)
    last_path, state_path, best_path = out / LAST_WEIGHTS, out / LAST_STATE, out / "best.safetensors"

    asked_stain = cfg.stain
    samples = load_samples(cfg.data, cfg.layout, cfg.labels_csv)  # listed once: --stain auto and the split
    classes = classes_of(samples)
    # Model and card: the last checkpoint when resuming, a given model to fine-tune, or a fresh variant.
    state = None
    if cfg.resume:
        model, card = load_checkpoint(last_path)
        state = load_training_state(state_path)
    elif init is not None:
        model, card = init[0], init[1].copy()
    elif cfg.init:
        model, card = _fine_tune_start(cfg, classes)
        init = (model, card)
    else:
        overrides: dict[str, Any] = {}
        if cfg.dilations:
            overrides["dilations"] = tuple(cfg.dilations)
        if cfg.fusion:
            overrides["fusion"] = cfg.fusion
        model = create_model(cfg.variant, num_classes=len(classes.names), **overrides)
        if cfg.weights:
            if not isinstance(model, Baseline):
                raise ConfigError(f"--weights loads a torchvision state dict into a baseline; {cfg.variant} "
                                  "starts from a checkpoint with --init")
            load_torchvision_weights(model, cfg.weights)
        cfg = replace(cfg, stain=resolve_stain(cfg.stain, samples, classes.names))
        card = new_card(model, cfg.variant, cfg.input_size, stain=cfg.stain, tta=cfg.tta)
        if not classes.binary:
            card.class_names, card.blast_classes = classes.names, classes.blast
    if card.class_set != classes:
        raise ConfigError(f"{cfg.data} holds the classes {', '.join(classes.names)} (blast: {', '.join(classes.blast)}); "
                          f"the model's are {', '.join(card.class_names)} (blast: {', '.join(card.blast_names)})")

    # Data: patient-disjoint split, decoded once.
    sd = load_split_datasets(cfg.data, card.input, cfg.layout, cfg.labels_csv, cfg.val_fraction, cfg.seed,
                             cfg.val_fold, augment_config(cfg),
                             (cfg.cv_fold, cfg.cv_folds) if cfg.cv_folds else None, samples=samples)
    train_ds, val_ds, report = sd.train, sd.val, sd.report
    if cfg.stain == "none" and asked_stain == "none":
        _warn_few_patients(train_ds, card.class_names)
    scale_info: dict[str, Any] = {}
    harvest_canvas = dataset_canvas_um(cfg.data)
    if cfg.canvas_um:
        card.input = replace(card.input, canvas_um=float(cfg.canvas_um))
        scale_info = {"canvas_um": float(cfg.canvas_um), "method": "given (--canvas-um)"}
    elif harvest_canvas and not card.input.canvas_um:  # cut by alnett-edge harvest on a canvas of known size
        card.input = replace(card.input, canvas_um=harvest_canvas)
        scale_info = {"canvas_um": harvest_canvas, "method": "the harvest's canvas (harvest.json)"}
        log.info("input canvas %.1f µm (%s)", harvest_canvas, scale_info["method"])
    elif not card.input.canvas_um:  # the physical scale of the training cells, for scale-true field crops
        negative = next(i for i in range(len(card.class_names)) if i not in card.blast_columns)
        scale_info = measure_canvas_um(train_ds.images, train_ds.labels, negative, card.input.mask_threshold)
        card.input = replace(card.input, canvas_um=scale_info["canvas_um"])
        log.info("input canvas %.1f µm (%s)", scale_info["canvas_um"], scale_info["method"])
    if not card.appearance:  # what the training cells look like: the daemon abstains crops far from it
        card.appearance = fit_appearance(train_ds.images, card.input.canvas_um, card.input.mask_threshold, seed=cfg.seed,
                                         stain=card.input.stain)

    model.to(device)
    mil = cfg.weak_labels == "mil" and any(s.weak for s in train_ds.samples)
    if cfg.weak_labels == "mil" and not mil:
        log.warning("--weak-labels mil: no cell of the training split has a weak label; trained on its own labels")
    criterion = make_criterion(train_ds.labels, cfg.balance, device, cfg.label_smoothing,
                               card.blast_columns if mil else None, len(card.class_names))
    shuffle_gen = torch.Generator()
    if mil:
        if dd.enabled or cfg.balance == "sampler":
            raise ConfigError("--weak-labels mil batches whole fields: not with torchrun or --balance sampler")
        log.info("multiple-instance learning: %d fields of weak labels as bags", train_ds.with_bags())
        sampler = None
    elif dd.enabled:
        sampler = DistributedSampler(train_ds, dd.world, dd.rank, shuffle=True, seed=cfg.seed)
        if cfg.balance == "sampler":
            raise ConfigError("--balance sampler is not supported with torchrun; use --balance weights")
    elif cfg.balance == "sampler":
        w = _class_weights(train_ds.labels, len(card.class_names)).numpy()[train_ds.labels]
        sampler = WeightedRandomSampler(w, len(w), replacement=True)
    else:
        sampler = None
    if isinstance(sampler, WeightedRandomSampler):
        sampler.generator = shuffle_gen
    if mil:
        loader = DataLoader(train_ds, batch_sampler=BagBatchSampler(train_ds.bags, cfg.batch_size, shuffle_gen),
                            num_workers=cfg.workers, pin_memory=device.type == "cuda")
    else:
        loader = DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=cfg.workers,
            drop_last=len(train_ds) // dd.world > cfg.batch_size,
            pin_memory=device.type == "cuda",
            generator=shuffle_gen,
        )
    net: nn.Module = model
    if dd.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(loader))
    scheduler = cosine_schedule(optimizer, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    use_scaler = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    if device.type == "cuda":
        amp_what = ("off" if not cfg.amp else "float16 with a gradient scaler" if use_scaler else "bfloat16")
        log.info("training on %s (%s), mixed precision %s%s", device, torch.cuda.get_device_name(device), amp_what,
                 f", {dd.world} processes" if dd.enabled else "")

    # At most a fifth of the schedule: the average of a short run (a 1-3 epoch fine-tune after pruning)
    # would otherwise still weigh the weights it started from.
    ema = make_ema(model, min(cfg.ema_epochs, cfg.epochs / 5), steps_per_epoch)
    kept = ema.module if ema is not None else model  # the weights validated and saved as best

    start_epoch, best_score, best_epoch, bad_epochs, history = 0, math.inf, -1, 0, []
    best_metrics: dict[str, Any] = {}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        start_epoch = int(state["epoch"]) + 1
        best_score = float(state.get("best_score", -float(state.get("best_f1", -math.inf))))
        best_epoch, bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        history = json.loads(state["history"])
        best_metrics = json.loads(state["best_metrics"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming at epoch %d (best epoch so far %d)", start_epoch + 1, best_epoch + 1)

    info = {
        "data": str(cfg.data),
        "layout": cfg.layout,
        "classes_train": class_counts(train_ds.samples),
        "classes_val": class_counts(val_ds.samples),
        "split": sd.split.summary(),
        "skipped_images": len(report.skipped),
        "source_size": report.common_size,
        "source_sides": report.sides,  # the size rule's range (data.preprocess.size_refusal)
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "resume", "stop_after")},
        "world_size": dd.world,
        "device": device.type,
        "scale": scale_info or card.training.get("scale", {}),
    }
    if init is not None and card.training:
        card.training = {**card.training, "finetune": info}
    elif state is None:
        card.training = info

    prog = _Progress(progress and dd.main, cfg.epochs, steps_per_epoch)
    stop = start_epoch >= cfg.epochs
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    with prog:
        for epoch in range(start_epoch, end_epoch):
            if stop:
                break
            # Data order and augmentation depend on (seed, epoch) only, so a resumed run sees
            # exactly the batches an uninterrupted run would have seen.
            shuffle_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
            train_ds.set_epoch(epoch)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            net.train()
            loss, seen, train_seconds = run_epoch(net, loader, criterion, optimizer, scheduler, device, cfg.amp,
                                                  scaler, prog.step,
                                                  None if ema is None else lambda: ema.update_parameters(model))

            decision = torch.zeros(1)
            if dd.main:
                recalibrate_bn(kept, train_ds, device, cfg.batch_size, seed=cfg.seed + epoch)
                metrics, val_prob = evaluate_dataset(kept, val_ds, device, card.blast_columns,
                                                     batch_size=max(64, cfg.batch_size), calibrate=True)
                calibration = metrics.pop("calibration")
                row = {
                    "epoch": epoch + 1,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": seen * dd.world / max(train_seconds, 1e-9),
                    **{k: metrics[k] for k in HISTORY_METRICS},
                    "val_nll": calibration.get("nll_after", math.nan),
                }
                history.append(row)
                score = selection_score(cfg.select, history)
                if score < best_score or best_epoch < 0:
                    best_score, best_epoch, bad_epochs, best_metrics = score, epoch, 0, metrics
                    card.metrics = {"val": metrics, "epoch": epoch + 1}
                    card.calibration = calibration  # temperature scaling on the validation split
                    if harvest_canvas:  # cells of fields labelled per field: how a field is called from its cells
                        card.field_decision = _field_decision(val_ds, val_prob) or card.field_decision
                    save_checkpoint(best_path, kept, card)
                else:
                    bad_epochs += 1
                card.metrics = {"val": best_metrics, "epoch": best_epoch + 1}
                save_checkpoint(last_path, model, card)
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best_score": best_score,
                        "ema": None if ema is None else ema.state_dict(),
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "history": json.dumps(history),
                        "best_metrics": json.dumps(best_metrics),
                        "torch_rng": torch.get_rng_state(),
                    },
                    state_path,
                )
                prog.epoch_done(row)
                if bad_epochs >= cfg.patience:  # never under "last": every epoch is kept in turn
                    what = "F1" if cfg.select == "f1" else f"loss (mean of {SMOOTH_EPOCHS} epochs)"
                    log.info("early stop: validation %s has not improved for %d epochs", what, bad_epochs)
                    decision[0] = 1
            if dd.enabled:
                dist.broadcast(decision, src=0)
            stop = bool(decision[0])

    if ema is not None and history:  # the model object ends as the weights validated last (a fine-tune's caller
        model.load_state_dict(kept.state_dict())  # goes on with it), BatchNorm statistics included
    seconds = time.perf_counter() - t0
    result = TrainResult(out, best_path, last_path, best_epoch + 1, best_metrics, history, report.to_dict(), seconds)
    if dd.main:
        (out / "history.json").write_text(json.dumps(history, indent=2))
        summary = {
            "best": str(best_path), "last": str(last_path), "best_epoch": best_epoch + 1,
            "epochs_run": len(history), "seconds": round(seconds, 2), "images": report.to_dict(),
            "split": sd.split.summary(), "val": best_metrics,
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if dd.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return result


class _Progress:
    """A rich progress bar (rank 0 only) with loss and the last validation metrics."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled = enabled
        self.epochs, self.steps = epochs, steps
        self._p = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                               TextColumn("{task.fields[info]}"), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.epochs * self.steps, info="")
        return self

    def step(self, loss: float) -> None:
        if self._p:
            self._p.update(self._task, advance=1, description=f"train loss {loss:.4f}")

    def epoch_done(self, row: dict[str, Any]) -> None:
        if self._p:
            self._p.update(self._task, completed=row["epoch"] * self.steps,
                           info=f"ep {row['epoch']} val acc {row['accuracy']:.3f} F1 {row['f1']:.3f}")
            self._p.console.log(
                f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}  val acc {row['accuracy']:.4f}  "
                f"sens {row['sensitivity']:.4f}  spec {row['specificity']:.4f}  F1 {row['f1']:.4f}  "
                f"{row['images_per_s']:.0f} img/s"
            )

    def __exit__(self, *exc: object) -> None:
        if self._p:
            self._p.__exit__(*exc)


