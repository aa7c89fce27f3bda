"""The cell record: one cell's row (a track's decision in the daemon, a detection in ``field-eval``),
as the sinks store it and the differential counts it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: the abstain reason of a smudge cell (a detection of kind ``detector.SMUDGE``): never classified, and
#: counted apart from the white cells, as hematologists count smudge cells
SMUDGE_REASON = "smudge cell"


@dataclass
class CellRecord:
    time: float
    frame_index: int
    box: tuple[int, int, int, int]
    prob_hem: float | None
    prob_all: float | None
    label: str | None  # None when abstained
    abstain_reason: str | None
    model_sha256: str
    edge_weight: float = 1.0  # Miles-Lantuéjoul weight of the cell's size (the session's ratio estimate)
    track_id: int | None = None
    first_frame: int | None = None  # frame_index is the frame the track was decided in
    observations: int = 1  # frames the cell was detected in until it was decided
    classified: int = 0  # of those, the ones the model ran on (quality gate passed); fused into the probabilities
    observed_prob_all: list[float] = field(default_factory=list)  # each classified observation's prob_all (JSONL)
    observed_frames: list[int] = field(default_factory=list)  # and the frame it was seen in (JSONL)
    appearance_distance: float | None = None  # from the training cells' look (card.appearance); None: unchecked
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)  # the cell as classified (crops sink)
