"""The PyTorch backend of the device runtime: the fp32 checkpoint in eager mode, the reference every
deployed artifact is compared with. It lives beside the model (it needs torch), not in ``runtime/``;
the runtime registry imports it only when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from alnett_edge.card import ModelCard
from alnett_edge.errors import ConfigError
from alnett_edge.model.checkpoint import load_checkpoint
from alnett_edge.runtime.base import Runtime


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda[:N]``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no GPU is available")
    return torch.device(name)


class TorchRuntime(Runtime):

    def __init__(self, path: str | Path, card: ModelCard | None = None, artifact: dict[str, Any] | None = None, threads: int = 0,
                 device: str = "cpu", **options: Any) -> None:
        model, ckpt_card = load_checkpoint(path)
        super().__init__(path, card or ckpt_card, artifact or {"precision": "fp32", "format": "checkpoint"}, threads,
                         **options)
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        self.model = model.eval().to(self.device)

    @property
    def macs(self) -> int:
        from alnett_edge.model.profile import profile_model

        return profile_model(self.model, self.card.input.size).macs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def _release(self) -> None:
        self.model = None
