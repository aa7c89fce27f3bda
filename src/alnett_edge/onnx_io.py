"""The model card inside ONNX files (metadata_props), readable without torch."""

from __future__ import annotations

from pathlib import Path

import onnx

from alnett_edge.card import CARD_KEY, ModelCard
from alnett_edge.errors import CheckpointError



def set_card(proto: onnx.ModelProto, card: ModelCard) -> None:
    for prop in list(proto.metadata_props):
        if prop.key == CARD_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    try:
        return onnx.load_model(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc


def card_from_onnx(proto: onnx.ModelProto, source: str = "ONNX model") -> ModelCard:
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            return ModelCard.from_json(prop.value)
    raise CheckpointError(f"{source} has no alnett-edge model card (export it with alnett-edge)")
