"""Synthetic smear frames (BCCD-like, with known white cells) for the offline demo and tests.
``synthetic:SEED``; frames carry their ground-truth boxes in ``meta["objects"]``."""

from __future__ import annotations

import numpy as np

from alnett_edge.capture.base import Source, SourceError
from alnett_edge.data.synth import synth_smear


class SyntheticSmearSource(Source):
    paced = True

    def open(self) -> None:
        if not (self.arg or "0").isdigit():
            raise SourceError(f"synthetic:SEED takes a non-negative integer seed, got {self.arg!r}")
        self.rng = np.random.default_rng(int(self.arg or 0))
        self.last_objects: list = []

    def read(self) -> np.ndarray | None:
        s = self.settings
        frame = synth_smear(self.rng, s.width or 640, s.height or 480)
        self.last_objects = [o for o in frame.objects if o.name == "WBC"]
        return frame.image
