"""Torch datasets over :class:`Sample` lists.

Images are decoded and :func:`prepare`-d (pad-square + resize, uint8) once, in a thread pool, and kept
in memory: C-NMC at 224x224 is ~1.6 GB and re-decoding 450x450 BMPs every epoch would dominate a
2-core CPU. Each item is then augmented (training only) and :func:`normalize`-d, so an item without
augmentation is bit-identical to ``preprocess(load_image(path), spec)``.

Unreadable images are skipped with a warning naming the file and counted in :class:`LoadReport`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from alnett_edge.card import InputSpec
from alnett_edge.data.augment import AugmentConfig, augment
from alnett_edge.data.preprocess import load_image, normalize, prepare
from alnett_edge.data.sources import Sample, check_classes, load_samples
from alnett_edge.data.splits import Split, make_split
from alnett_edge.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    #: "HxW" of the source images -> count (the calibration size check compares against it)
    source_sizes: Counter = field(default_factory=Counter)

    def __add__(self, other: "LoadReport") -> "LoadReport":
        return LoadReport(self.loaded + other.loaded, self.skipped + other.skipped, self.source_sizes + other.source_sizes)

    @property
    def common_size(self) -> str | None:
        return self.source_sizes.most_common(1)[0][0] if self.source_sizes else None

    @property
    def sides(self) -> list[int] | None:
        """The smallest and the largest side of the source images (the size rule's range)."""
        sides = [int(v) for size in self.source_sizes for v in size.split("x")]
        return [min(sides), max(sides)] if sides else None

    def to_dict(self) -> dict[str, object]:
        return {"loaded": self.loaded, "skipped": len(self.skipped), "skipped_files": self.skipped[:20],
                "source_size": self.common_size, "source_sides": self.sides}


def _prepare_one(sample: Sample, spec: InputSpec) -> tuple[np.ndarray, str] | None:
    try:
        img = load_image(sample.path)
        return prepare(img, spec), f"{img.shape[0]}x{img.shape[1]}"
    except DataError as exc:
        log.warning("skipping unreadable image %s: %s", sample.path, exc)
        return None


def prepare_samples(samples: list[Sample], spec: InputSpec, threads: int | None = None) -> tuple[np.ndarray, list[Sample], LoadReport]:
    """Decode + prepare every sample. Returns (uint8 N x H x W x 3, kept samples, report)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        prepared = list(pool.map(lambda s: _prepare_one(s, spec), samples))
    kept = [s for s, r in zip(samples, prepared) if r is not None]
    report = LoadReport(loaded=len(kept), skipped=[str(s.path) for s, r in zip(samples, prepared) if r is None],
                        source_sizes=Counter(r[1] for r in prepared if r is not None))
    if not kept:
        raise DataError("no readable images in the dataset")
    return np.stack([r[0] for r in prepared if r is not None]), kept, report


class CellDataset(Dataset):
    """(input tensor, label) pairs from prepared images; augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, images: np.ndarray, samples: list[Sample], spec: InputSpec,
                 augment_cfg: AugmentConfig | None = None, seed: int = 0) -> None:
        if len(images) != len(samples):
            raise DataError("images and samples differ in length")
        self.images = images
        self.samples = samples
        self.labels = np.array([s.label for s in samples], dtype=np.int64)  # the class (the loss's target)
        self.blast = np.array([s.is_blast for s in samples], dtype=np.int64)  # 1: a blast class (the metrics' truth)
        self.spec = spec
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0
        self.bags: np.ndarray | None = None  # with_bags(): each cell's bag, -1 for a cell with its own label

    @classmethod
    def from_samples(cls, samples: list[Sample], spec: InputSpec, augment_cfg: AugmentConfig | None = None,
                     seed: int = 0, source: str = "dataset") -> tuple["CellDataset", LoadReport]:
        images, kept, report = prepare_samples(samples, spec)
        check_classes(kept, source)
        return cls(images, kept, spec, augment_cfg, seed), report

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def with_bags(self) -> int:
        """Multiple-instance learning: cells with weak labels are grouped into bags by their field
        (``patient_id``, a harvest's split group), and each item's target becomes (label, bag) with bag -1
        for a cell a person labelled. Returns the number of bags."""
        keys: dict[tuple[str | None, int], int] = {}
        bags = np.full(len(self.samples), -1, np.int64)
        for i, s in enumerate(self.samples):
            if s.weak:
                bags[i] = keys.setdefault((s.patient_id or f"#{i}", s.label), len(keys))
        self.bags = bags
        return len(keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        img = self.images[i]
        if self.augment_cfg is not None:
            img = augment(img, np.random.default_rng([self.seed, self.epoch, i]), self.augment_cfg)
        x = torch.from_numpy(normalize(img, self.spec))
        if self.bags is not None:
            return x, torch.tensor([int(self.labels[i]), int(self.bags[i])])
        return x, int(self.labels[i])


class BagBatchSampler(Sampler[list[int]]):
    """Batches of whole bags (every cell of a field together, so a field's cells are pooled in one
    step), bags and labelled cells in a random order from ``generator``, about ``batch_size`` cells a
    batch (a bag is never split; one larger than the batch is a batch of its own)."""

    def __init__(self, bags: np.ndarray, batch_size: int, generator: torch.Generator) -> None:
        self.batch_size, self.generator = batch_size, generator
        units: dict[int, list[int]] = {}
        self.units: list[list[int]] = []
        for i, b in enumerate(bags.tolist()):
            if b < 0:
                self.units.append([i])
            else:
                units.setdefault(b, []).append(i)
        self.units += list(units.values())

    def _batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.units), generator=self.generator).tolist()
        batches, cur = [], []
        for u in order:
            if cur and len(cur) + len(self.units[u]) > self.batch_size:
                batches.append(cur)
                cur = []
            cur = cur + self.units[u]
        return batches + ([cur] if cur else [])

    def __iter__(self):  # noqa: ANN204 - torch Sampler protocol
        return iter(self._batches())

    def __len__(self) -> int:
        n, cur = 0, 0
        for u in sorted(len(x) for x in self.units):  # an estimate for the schedule: packing is order-dependent
            if cur and cur + u > self.batch_size:
                n, cur = n + 1, 0
            cur += u
        return n + (cur > 0)


@dataclass
class SplitData:
    split: Split
    train: CellDataset
    val: CellDataset
    report: LoadReport


def load_split_datasets(data: str | Path, spec: InputSpec, layout: str = "auto", labels_csv: str | None = None,
                        val_fraction: float = 0.2, seed: int = 0, val_fold: str | None = None,
                        augment_cfg: AugmentConfig | None = None, cv: tuple[int, int] | None = None,
                        samples: list[Sample] | None = None) -> SplitData:
    """Load a dataset (or take its already listed ``samples``), split it patient-disjointly (leaving out
    cross-validation fold ``cv`` = (fold, folds) first) and decode both sides once."""
    samples = load_samples(data, layout, labels_csv) if samples is None else samples
    split = make_split(samples, val_fraction, seed, val_fold, cv)
    train_ds, train_report = CellDataset.from_samples(split.train, spec, augment_cfg, seed, "training split")
    val_ds, val_report = CellDataset.from_samples(split.val, spec, None, seed, "validation split")
    report = train_report + val_report
    if report.skipped:
        log.warning("%d unreadable images were skipped", len(report.skipped))
    return SplitData(split, train_ds, val_ds, report)
