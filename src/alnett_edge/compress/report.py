"""Before/after rows for compression reports: size, MACs, ONNX Runtime latency and validation metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from alnett_edge.bench.latency import ort_latency
from alnett_edge.card import ModelCard
from alnett_edge.data.dataset import CellDataset
from alnett_edge.export.onnx import export_onnx
from alnett_edge.model.profile import profile_model
from alnett_edge.train.loop import evaluate_dataset
from alnett_edge.train.metrics import summary


def metrics_row(model: nn.Module, ds: CellDataset) -> tuple[dict[str, Any], Any]:
    metrics, prob_all = evaluate_dataset(model, ds, torch.device("cpu"))
    return summary(metrics), prob_all


def fp32_row(name: str, model: nn.Module, card: ModelCard, ds: CellDataset, workdir: Path,
             checkpoint: Path | None = None, latency_runs: int = 100) -> dict[str, Any]:
    """Params, MACs, checkpoint and ONNX size, ORT fp32 batch-1 latency (p50) and validation metrics."""
    prof = profile_model(model, card.input.size[0])
    onnx_path = export_onnx(model, card, workdir / f"{name}.onnx")
    lat = ort_latency(onnx_path, batch=1, runs=latency_runs, warmup=10)
    metrics, _ = metrics_row(model, ds)
    return {
        "name": name, "params": prof.params, "macs": prof.macs,
        "checkpoint_bytes": checkpoint.stat().st_size if checkpoint else None,
        "onnx_bytes": onnx_path.stat().st_size, "ort_b1_p50_ms": round(lat.p50_ms, 4), **metrics,
    }  # fmt: skip
