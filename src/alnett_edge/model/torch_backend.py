"""The PyTorch backend of the device runtime: the fp32 checkpoint in eager mode, the reference every
deployed artifact is compared with. It lives beside the model (it needs torch), not in ``runtime/``;
the runtime registry imports it only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from alnett_edge.model.checkpoint import load_checkpoint
from alnett_edge.runtime.base import Runtime


class TorchRuntime(Runtime):
    name = "pytorch"

    def __init__(self, path: str | Path, card: Any = None, artifact: dict[str, Any] | None = None, threads: int = 0,
                 **options: Any) -> None:
        model, ckpt_card = load_checkpoint(path)
        super().__init__(path, card or ckpt_card, artifact or {"precision": "fp32", "format": "checkpoint"}, threads,
                         **options)
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    @property
    def macs(self) -> int:
        from alnett_edge.model.profile import profile_model

        return profile_model(self.model, self.card.input.size).macs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(batch)), dim=1).numpy()

    def _release(self) -> None:
        self.model = None
