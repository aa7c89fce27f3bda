"""A third-party capture source: small synthetic smear frames (this file plus one table entry)."""

from __future__ import annotations

import numpy as np

from alnett_edge.capture.base import SOURCES, Source, SourceSpec
from alnett_edge.data.synth import synth_smear


class FakeCamera(Source):
    paced = True

    def open(self) -> None:
        self.rng = np.random.default_rng(int(self.arg or 0))

    def read(self) -> np.ndarray | None:
        return synth_smear(self.rng, 320, 240).image


SOURCES["fakecam"] = SourceSpec("fake_source:FakeCamera", "fakecam:SEED")
