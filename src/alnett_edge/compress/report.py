"""Before/after rows for compression reports: size, MACs, ONNX Runtime latency and validation metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from alnett_edge.runtime.loader import open_file
from alnett_edge.timing import runtime_latency
from alnett_edge.card import ModelCard
from alnett_edge.train.dataset import CellDataset
from alnett_edge.model.to_onnx import export_onnx
from alnett_edge.model.profile import profile_model
from alnett_edge.train.loop import evaluate_dataset
from alnett_edge.metrics import summary


def metrics_row(model: nn.Module, ds: CellDataset, card: ModelCard) -> tuple[dict[str, Any], Any]:
    metrics, prob_all = evaluate_dataset(model, ds, torch.device("cpu"), card.blast_columns)
    return summary(metrics), prob_all


def calibrated_row(model: nn.Module, ds: CellDataset, card: ModelCard) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """:func:`metrics_row` plus temperature scaling refitted on these (validation) cells for a compressed
    model (pruning and QAT change its logits): what its card records."""
    metrics, prob_all = evaluate_dataset(model, ds, torch.device("cpu"), card.blast_columns, calibrate=True)
    return summary(metrics), prob_all, metrics["calibration"]


def fp32_row(name: str, model: nn.Module, card: ModelCard, ds: CellDataset, workdir: Path,
             checkpoint: Path | None = None, latency_runs: int = 100) -> dict[str, Any]:
    """Params, MACs, checkpoint and ONNX size, ORT fp32 batch-1 latency (p50) and validation metrics."""
    prof = profile_model(model, card.input.size[0])
    onnx_path = export_onnx(model, card, workdir / f"{name}.onnx")
    with open_file(onnx_path, card, "onnx") as rt:
        lat = runtime_latency(rt, batch=1, runs=latency_runs, warmup=10)
    metrics, _ = metrics_row(model, ds, card)
    return {
        "name": name, "params": prof.params, "macs": prof.macs,
        "checkpoint_bytes": checkpoint.stat().st_size if checkpoint else None,
        "onnx_bytes": onnx_path.stat().st_size, "ort_b1_p50_ms": round(lat.p50_ms, 4), **metrics,
    }  # fmt: skip
