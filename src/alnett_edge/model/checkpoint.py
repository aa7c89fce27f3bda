"""Checkpoints: safetensors weights with the model card in the file's metadata.

Nothing pickled is ever executed on load: weights come from safetensors, the card is JSON, and the
optimiser state used by ``--resume`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from alnett_edge.card import CARD_KEY, InputSpec, ModelCard
from alnett_edge.errors import CheckpointError, ConfigError
from alnett_edge.model.alnett import ALNett
from alnett_edge.model.ensemble import arch_of, model_from_arch
from alnett_edge.model.registry import default_input_size

log = logging.getLogger(__name__)



def new_card(model: ALNett, variant: str, input_size: int | None = None, **input_overrides: object) -> ModelCard:
    """A card for ``model`` with the variant's default input size unless one is given."""
    size = input_size or default_input_size(variant)
    if size < model.min_input_size():
        raise ConfigError(f"input size {size} is below the {model.min_input_size()} this model needs")
    spec = InputSpec(size=(size, size), **input_overrides)  # type: ignore[arg-type]
    spec.validate()
    return ModelCard(variant=variant, arch=arch_of(model), input=spec)


def model_from_card(card: ModelCard) -> ALNett:
    """A fresh module for ``card`` (an ALNett, or an :class:`ALNettEnsemble` of them)."""
    try:
        return model_from_arch(card.arch)  # type: ignore[return-value]
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model card has an invalid architecture: {exc}") from exc


def save_checkpoint(path: str | Path, model: ALNett, card: ModelCard) -> Path:
    """Write weights + card atomically (a crash never leaves a half-written checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card.arch = arch_of(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", CARD_KEY: card.to_json()})
    tmp.replace(path)
    return path


def _open(path: Path):  # noqa: ANN202 - safetensors handle type is private
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc


def read_card(path: str | Path) -> ModelCard:
    path = Path(path)
    with _open(path) as f:
        meta = f.metadata() or {}
    if CARD_KEY not in meta:
        raise CheckpointError(f"{path} has no alnett-edge model card (not an alnett-edge checkpoint)")
    return ModelCard.from_json(meta[CARD_KEY])


def load_checkpoint(path: str | Path) -> tuple[ALNett, ModelCard]:
    path = Path(path)
    card = read_card(path)
    if card.quantization.get("method") == "qat":
        raise CheckpointError(
            f"{path} is an int8 QAT checkpoint ({card.quantization.get('scheme')}); it is for export, "
            "an fp32 model is needed here (use its fp32 parent)"
        )
    model = model_from_card(card)
    try:
        with _open(path) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights cannot be read ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the model card ({first})") from exc
    model.eval()
    return model, card


def load_training_state(path: str | Path) -> dict:
    """Optimizer/scheduler/epoch state for ``--resume`` (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable training state ({type(exc).__name__})") from exc
