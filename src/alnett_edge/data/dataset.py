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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from alnett_edge.card import InputSpec
from alnett_edge.data.augment import AugmentConfig, augment
from alnett_edge.data.preprocess import load_image, normalize, prepare
from alnett_edge.data.sources import Sample, check_classes
from alnett_edge.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"loaded": self.loaded, "skipped": len(self.skipped), "skipped_files": self.skipped[:20]}


def _prepare_one(sample: Sample, spec: InputSpec) -> np.ndarray | None:
    try:
        return prepare(load_image(sample.path), spec)
    except DataError as exc:
        log.warning("skipping unreadable image %s: %s", sample.path, exc)
        return None


def prepare_samples(samples: list[Sample], spec: InputSpec, threads: int | None = None) -> tuple[np.ndarray, list[Sample], LoadReport]:
    """Decode + prepare every sample. Returns (uint8 N x H x W x 3, kept samples, report)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        prepared = list(pool.map(lambda s: _prepare_one(s, spec), samples))
    kept = [s for s, img in zip(samples, prepared) if img is not None]
    report = LoadReport(loaded=len(kept), skipped=[str(s.path) for s, img in zip(samples, prepared) if img is None])
    if not kept:
        raise DataError("no readable images in the dataset")
    h, w = spec.size
    images = np.stack([img for img in prepared if img is not None]) if kept else np.zeros((0, h, w, 3), np.uint8)
    return images, kept, report


class CellDataset(Dataset):
    """(input tensor, label) pairs from prepared images; augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, images: np.ndarray, samples: list[Sample], spec: InputSpec,
                 augment_cfg: AugmentConfig | None = None, seed: int = 0) -> None:
        if len(images) != len(samples):
            raise DataError("images and samples differ in length")
        self.images = images
        self.samples = samples
        self.labels = np.array([s.label for s in samples], dtype=np.int64)
        self.spec = spec
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.augment_cfg is not None:
            img = augment(img, np.random.default_rng([self.seed, self.epoch, i]), self.augment_cfg)
        return torch.from_numpy(normalize(img, self.spec)), int(self.labels[i])
