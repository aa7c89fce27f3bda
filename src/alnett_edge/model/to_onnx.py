"""PyTorch (fp32 or PT2E-converted int8) -> ONNX with the model card in the file's metadata.

Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, opset 20) with a dynamic batch
axis and weights inside the file (``external_data=False``; the dynamo exporter would otherwise write
a separate ``.onnx.data``), then simplifies with onnxslim for fp32 graphs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim

from alnett_edge.card import ModelCard
from alnett_edge.errors import ExportError
from alnett_edge.onnx_io import set_card

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 1024


def export_onnx(model: nn.Module, card: ModelCard, path: str | Path, opset: int = 20, simplify: bool = True,
                batch: int = 2) -> Path:
    """Write ``model`` as ONNX (input ``input`` NCHW float32, output ``logits``, dynamic batch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = card.input.size
    example = torch.randn(batch, 3, h, w)
    try:
        model.eval()
    except NotImplementedError:  # exported PT2E graphs are already in eval mode
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: Dim("batch", min=1, max=MAX_BATCH)}}, verbose=False,
            )
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    proto = program.model_proto
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    set_card(proto, card)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return path
