"""Int8 quantization-aware training with PT2E (torch.export -> prepare_qat_pt2e -> fine-tune -> convert_pt2e).

BatchNorm is folded into the convolutions *before* ``prepare_qat_pt2e`` (``model.fold_batchnorm``,
running statistics frozen as they are): QAT then trains the very graph an int8 deployment runs, and
preparing and converting take ~4 s instead of ~48 s (torchao's convert otherwise traces 120 conv-BN
patterns; measured with alnett on a 2-core AMD EPYC). QAT with BN left in the graph (PT2E simulates the
fold and applies it at convert) is what checkpoints made before this change hold; they still load.
Two schemes, both with int8 weights per-channel symmetric in [-127, 127]:

* ``symmetric``  int8 activations per-tensor with zero-point 0 — what TensorRT's explicit
  quantization accepts (it rejects non-zero zero-points).
* ``asymmetric`` int8 activations per-tensor affine — the LiteRT/XNNPACK (and ONNX Runtime on x86)
  friendly scheme; it is what litert-torch's own quantizer produces.

Both use litert-torch's ``PT2EQuantizer`` (the one whose output converts to a fully int8,
XNNPACK-delegated .tflite); the symmetric scheme swaps its activation specs for per-tensor-symmetric
ones. A QAT checkpoint stores the *prepared* model's state (weights, BN statistics, fake-quant scales
and zero-points) in safetensors with the scheme in the card; loading rebuilds the prepared graph from
the card, loads that state and converts — no pickled modules.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.export import Dim
from torch.utils.data import DataLoader

from alnett_edge.card import CARD_KEY, ModelCard
from alnett_edge.data.sources import classes_of
from alnett_edge.compress.report import calibrated_row, metrics_row
from alnett_edge.train.dataset import CellDataset, load_split_datasets
from alnett_edge.errors import CheckpointError, CompressionError, ConfigError
from alnett_edge.model.alnett import ALNett, fold_batchnorm
from alnett_edge.model.checkpoint import load_checkpoint, model_from_card, read_card
from alnett_edge.train.loop import augment_config, cosine_schedule, finetune_config, make_criterion, run_epoch
from alnett_edge.evaluation import gate_result
from alnett_edge.metrics import device_agreement, top1_agreement

log = logging.getLogger(__name__)

SCHEMES = ("symmetric", "asymmetric")
QAT_FORMAT = "pt2e-qat-prepared"
BN_FOLDED = "folded before QAT"


def quantizer_for(scheme: str, is_qat: bool = True) -> Any:
    """litert-torch's PT2E quantizer (int8 per-channel symmetric weights) for ``scheme``; ``is_qat``
    False gives the post-training (calibration) flavour of the same quantization."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    from alnett_edge.compress._litert_compat import patch_litert_qat, quiet_native_stderr

    try:
        with quiet_native_stderr():
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    except ImportError as exc:
        raise CompressionError("QAT needs litert-torch and torchao: pip install 'alnett-edge[tflite]'") from exc

    if is_qat:
        patch_litert_qat()
    cfg = get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
    if scheme == "symmetric":
        sym = {f: dataclasses.replace(getattr(cfg, f), qscheme=torch.per_tensor_symmetric)
               for f in ("input_activation", "output_activation")}
        cfg = dataclasses.replace(cfg, **sym)
    return PT2EQuantizer().set_global(cfg)


def prepare_qat(model: ALNett, input_size: tuple[int, int], scheme: str, fold_bn: bool = True) -> torch.fx.GraphModule:
    """Fold BN (unless ``fold_bn`` is False), export with a dynamic batch axis (training and evaluation
    use other batch sizes) and prepare."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    model = fold_batchnorm(model.cpu()) if fold_bn else model.cpu().eval()
    example = torch.randn(2, 3, *input_size)
    exported = torch.export.export(model, (example,), dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}})
    return prepare_qat_pt2e(exported.module(), quantizer_for(scheme))


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    return convert_pt2e(copy.deepcopy(prepared))


def activation_zero_points(converted: torch.fx.GraphModule) -> list[int]:
    """Zero-points of every per-tensor (activation) quantize node of a converted graph."""
    zps = []
    for node in converted.graph.nodes:
        if node.op == "call_function" and "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target):
            zps.append(int(node.args[2]))
    return zps


def weight_ranges(converted: torch.fx.GraphModule) -> list[tuple[int, int]]:
    """(min, max) of every int8 weight tensor stored in a converted graph."""
    out = []
    for _name, buf in list(converted.named_buffers()) + list(converted.named_parameters()):
        if buf.dtype == torch.int8:
            out.append((int(buf.min()), int(buf.max())))
    for node in converted.graph.nodes:  # weights folded as get_attr constants
        if node.op == "get_attr":
            t = getattr(converted, str(node.target), None)
            if isinstance(t, torch.Tensor) and t.dtype == torch.int8:
                out.append((int(t.min()), int(t.max())))
    return out


def qat_finetune(prepared: torch.fx.GraphModule, train_ds: CellDataset, epochs: int, lr: float, batch_size: int,
                 balance: str, seed: int = 0) -> list[float]:
    from torchao.quantization.pt2e import move_exported_model_to_eval

    torch.manual_seed(seed)
    gen = torch.Generator()
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen,
                        drop_last=len(train_ds) > batch_size)
    device = torch.device("cpu")
    criterion = make_criterion(train_ds.labels, balance, device, classes=len(classes_of(train_ds.samples).names))
    optimizer = torch.optim.AdamW(prepared.parameters(), lr=lr, weight_decay=0.0)
    scheduler = cosine_schedule(optimizer, epochs * max(1, len(loader)), 0)
    losses = []
    for epoch in range(epochs):
        gen.manual_seed(seed * 1_000_003 + epoch)
        train_ds.set_epoch(epoch)
        # eval mode (no dropout; BN, where an old checkpoint still has it, keeps its statistics): the
        # gradients still reach the weights and the fake-quant ranges still move
        move_exported_model_to_eval(prepared)
        loss, _, _ = run_epoch(prepared, loader, criterion, optimizer, scheduler, device)
        losses.append(loss)
        log.info("QAT epoch %d/%d loss %.4f", epoch + 1, epochs, loss)
    move_exported_model_to_eval(prepared)
    return losses


def save_qat_checkpoint(path: str | Path, prepared: torch.fx.GraphModule, card: ModelCard) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous().cpu() for k, v in prepared.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", CARD_KEY: card.to_json()})
    tmp.replace(path)
    return path


def load_qat_prepared(path: str | Path) -> tuple[torch.fx.GraphModule, ModelCard]:
    """The prepared (fake-quant) graph of a QAT checkpoint, rebuilt from its card, in eval mode."""
    from torchao.quantization.pt2e import move_exported_model_to_eval

    card = read_card(path)
    q = card.quantization
    if q.get("format") != QAT_FORMAT:
        raise CheckpointError(f"{path} is not a QAT checkpoint (its card has no {QAT_FORMAT!r} quantization)")
    prepared = prepare_qat(model_from_card(card), card.input.size, q["scheme"], fold_bn=q.get("batchnorm") == BN_FOLDED)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        prepared.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: QAT state does not match its card ({str(exc).splitlines()[0]})") from exc
    move_exported_model_to_eval(prepared)
    return prepared, card


def load_qat_checkpoint(path: str | Path) -> tuple[torch.fx.GraphModule, ModelCard]:
    """Rebuild the prepared graph from the card, load its state and convert to the int8 model."""
    prepared, card = load_qat_prepared(path)
    return convert(prepared), card


def to_litert_int8(path: str | Path, sample: torch.Tensor) -> tuple[Any, ModelCard]:
    """A litert-torch edge model (fully int8 .tflite when exported) from an asymmetric QAT checkpoint.

    litert-torch lowers torchao's *unfolded* quantize/dequantize pairs (``fold_quantize=False``) with
    its own quantizer passed as ``quant_config``; a folded graph fails in its converter
    ("'stablehlo.uniform_dequantize' op operand #0 must be ... quantized").
    """
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from alnett_edge.compress._litert_compat import quiet_native_stderr

    prepared, card = load_qat_prepared(path)
    scheme = card.quantization.get("scheme")
    converted = convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
    with quiet_native_stderr():
        import litert_torch

        edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer_for(scheme)))
    return edge, card


def to_litert_int8_ptq(model: ALNett, calib_inputs: Any, sample: torch.Tensor,
                       scheme: str = "asymmetric") -> Any:
    """A fully int8 litert-torch edge model from a plain fp32 model by post-training calibration.

    litert-torch's PT2E quantizer in PTQ mode: ``prepare_pt2e`` inserts observers, the calibration
    images (the card's preprocessing) run through it once, ``convert_pt2e(fold_quantize=False)`` and
    ``litert_torch.convert`` with the same quantizer lower it to int8 TFLite. QAT is the
    better-accuracy option; the export gate judges either.
    """
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from alnett_edge.compress._litert_compat import quiet_native_stderr

    model = model.cpu().eval()
    exported = torch.export.export(model, (sample,), dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}})
    quantizer = quantizer_for(scheme, is_qat=False)
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calib_inputs), 32):
            prepared(torch.from_numpy(calib_inputs[i : i + 32]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    with quiet_native_stderr():
        import litert_torch

        return litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))


def qat_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, scheme: str = "symmetric",
                   epochs: int = 2, lr: float = 2e-5, batch_size: int = 32,
                   extra_eval: str | Path | None = None) -> dict[str, Any]:
    """The ``alnett-edge qat`` job: QAT-fine-tune a fp32 checkpoint and compare int8 with fp32."""
    if epochs < 0:
        raise ConfigError("--epochs must be >= 0")
    model, card = load_checkpoint(checkpoint)
    if card.quantization:
        raise ConfigError(f"{checkpoint} is already quantized")
    tcfg = finetune_config(card, data, out, epochs, lr)
    sd = load_split_datasets(data, card.input, tcfg.layout, tcfg.labels_csv, tcfg.val_fraction, tcfg.seed,
                             tcfg.val_fold, augment_config(tcfg))
    fp32_metrics, fp32_prob = metrics_row(model, sd.val, card)
    prepared = prepare_qat(model, card.input.size, scheme)
    losses = qat_finetune(prepared, sd.train, epochs, lr, batch_size, tcfg.balance, tcfg.seed)
    converted = convert(prepared)
    int8_metrics, int8_prob, int8_calibration = calibrated_row(converted, sd.val, card)
    zps = activation_zero_points(converted)
    if scheme == "symmetric" and any(zps):
        raise CompressionError(f"symmetric QAT produced non-zero activation zero-points {sorted(set(zps))}")
    qcard = card.copy()
    qcard.quantization = {"method": "qat", "scheme": scheme, "format": QAT_FORMAT, "epochs": epochs, "lr": lr,
                          "batchnorm": BN_FOLDED,
                          "weights": "int8 per-channel symmetric [-127, 127]",
                          "activations": "int8 per-tensor " + ("symmetric (zero-point 0)" if scheme == "symmetric" else "affine")}
    qcard.calibration = int8_calibration  # the int8 model's own temperature
    qcard.metrics = {"val": int8_metrics, "fp32_val": fp32_metrics}
    out = Path(out)
    path = save_qat_checkpoint(out / f"qat-{scheme}.safetensors", prepared, qcard)
    # the export gate's own rule on the validation cells: QAT says now what export would say later
    gate = gate_result(np.asarray(fp32_prob), np.asarray(int8_prob), np.asarray(sd.val.labels))
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "qat": str(path), "scheme": scheme, "epochs": epochs, "losses": losses,
        "val": {"fp32": fp32_metrics, "int8": int8_metrics, "agreement": device_agreement(fp32_prob, int8_prob),
                "top1_agreement": top1_agreement(fp32_prob, int8_prob),
                "n": len(sd.val)},
        "gate_on_val": {k: gate[k] for k in ("passed", "failures", "agreement", "counted_drop_points", "changed",
                                                 "reference_ece", "ece", "ece_on_reference_bins")},
        "activation_zero_points": sorted(set(zps)),
    }  # fmt: skip
    if not gate["passed"]:
        log.warning("the int8 QAT model would fail the export gate on the validation split (%s): more --epochs, "
                    "another --lr, or export fp32", "; ".join(gate["failures"]))
    if extra_eval is not None:
        from alnett_edge.data.sources import load_samples

        ds, _ = CellDataset.from_samples(load_samples(extra_eval), card.input, source=str(extra_eval))
        f_m, f_p = metrics_row(model, ds, card)
        q_m, q_p = metrics_row(converted, ds, card)
        report["extra"] = {"data": str(extra_eval), "fp32": f_m, "int8": q_m, "agreement": device_agreement(f_p, q_p),
                           "n": len(ds)}
    (out / f"qat-{scheme}_report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["SCHEMES", "prepare_qat", "to_litert_int8", "to_litert_int8_ptq", "convert", "qat_checkpoint", "load_qat_checkpoint", "save_qat_checkpoint",
           "activation_zero_points", "weight_ranges"]
