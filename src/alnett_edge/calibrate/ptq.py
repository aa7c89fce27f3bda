"""Post-training int8 calibration of an fp32 ONNX model with ONNX Runtime (QDQ output).

``--scheme symmetric``: int8 activations and weights, both symmetric (every zero-point 0), biases kept
float — what TensorRT's explicit quantization accepts. ``--scheme asymmetric``: uint8 activations
(affine) with int8 symmetric per-channel weights — ONNX Runtime's fast path on x86 (u8s8).
Methods: ``minmax``, ``percentile`` (99.999th percentile of |x|) and ``entropy`` (KL divergence).

The report puts the fp32 model, this PTQ model and optionally a QAT model side by side on one
labelled evaluation set, with agreement against fp32 (as the gate counts it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from alnett_edge.calibrate.reader import (
    CalibrationSet,
    OrtCalibrationReader,
    check_patient_overlap,
    load_calibration_set,
)
from alnett_edge.calibrate.int8_safety import check_saturation, fit_weights_to_int16_pairs, saturation_summary
from alnett_edge.card import ModelCard, blast_sum
from alnett_edge.data.sources import load_samples
from alnett_edge.errors import ConfigError
from alnett_edge.onnx_io import card_from_onnx, load_onnx, set_card
from alnett_edge.evaluation import labelled_inputs, predict_batched
from alnett_edge.metrics import binary_metrics, device_agreement, summary

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
SCHEMES = ("symmetric", "asymmetric")


def quantize_qdq(model_path: str | Path, reader: Any, method: str = "minmax", scheme: str = "asymmetric",
                 fit_avx2: bool = False, proto: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """ONNX Runtime's static int8 quantization of ``model_path`` (QDQ, per-channel weights), calibrated on
    what ``reader`` (an ORT ``CalibrationDataReader``, batch 1) gives; ``scheme`` and ``method`` as
    :func:`quantize_onnx`. ``fit_avx2``: the GEMM layers' weights fitted to AVX2's int16 pairs
    (``calibrate.int8_safety``). Returns the quantized model (``proto``: the fp32 one, if loaded)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    calib_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy}[method]
    extra: dict[str, Any] = {"WeightSymmetric": True}
    if scheme == "symmetric":
        extra.update(ActivationSymmetric=True, QuantizeBias=False)
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory() as tmp:
        tmp_pre, tmp_out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(model_path), str(tmp_pre))  # shape inference + graph clean-up, as ORT advises
        # Batch 1: the histogram calibrators (percentile, entropy) cannot stack batches of unequal size.
        # ORT's calibrators print progress; keep it out of our stdout and in the debug log.
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(tmp_pre), str(tmp_out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if scheme == "symmetric" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=calib_method, extra_options=extra,
            )
        log.debug("onnxruntime calibration: %s", chatter.getvalue().strip())
        q = onnx.load_model(str(tmp_out))
    if fit_avx2:
        proto = proto or load_onnx(model_path)
        fit_weights_to_int16_pairs(q, {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer})
    return q


def quantize_onnx(model_path: str | Path, out_path: str | Path, calib: CalibrationSet, card: ModelCard,
                  method: str = "minmax", scheme: str = "symmetric", fit_avx2: bool = False) -> Path:
    """Write an int8 QDQ ONNX calibrated on ``calib``; the card records how it was made.

    ``fit_avx2``: the GEMM layers' weights are re-quantized from the fp32 weights so that x86 CPUs
    without VNNI compute them without int16 saturation; depthwise layers keep 8 bits (see
    ``calibrate.int8_safety``)."""
    proto = load_onnx(model_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    q = quantize_qdq(model_path, OrtCalibrationReader(calib, proto.graph.input[0].name, batch_size=1), method, scheme,
                     fit_avx2, proto)
    qcard = card.copy()
    qcard.quantization = {"method": "ptq", "calibration": method, "scheme": scheme, "format": "onnx-qdq",
                          "images": len(calib.inputs), "fit_avx2": fit_avx2}
    set_card(q, qcard)
    onnx.save_model(q, str(out_path))
    return out_path


def onnx_zero_points(path: str | Path) -> list[int]:
    """Zero-points of every QuantizeLinear/DequantizeLinear of a QDQ model (initializers only)."""
    proto = load_onnx(path)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    zps: list[int] = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits:
            zps.extend(int(v) for v in np.ravel(inits[node.input[2]]))
    return zps


def evaluate_onnx(path: str | Path, card: ModelCard, inputs: np.ndarray, labels: np.ndarray,
                  precision: str = "fp32") -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of an ONNX file through the runtime (the same classify path as predict and the gate)."""
    from alnett_edge.runtime.loader import open_file

    with open_file(path, card, "onnx", precision) as rt:
        prob_all = card.blast_probability(predict_batched(rt.infer, inputs))
    return summary(binary_metrics(labels, prob_all)), prob_all


def calibrate(model: str | Path, images: str | Path, out: str | Path | None = None, method: str = "minmax",
              scheme: str = "symmetric", num: int = 300, allow_any_size: bool = False,
              eval_data: str | Path | None = None, allow_patient_overlap: bool = False,
              qat_checkpoint: str | Path | None = None, fit_avx2: bool = True) -> dict[str, Any]:
    """The ``alnett-edge calibrate`` job. Returns the report (also written next to the output)."""
    if num < 1:
        raise ConfigError("--num must be >= 1")
    card = card_from_onnx(load_onnx(model), str(model))
    if card.quantization:
        raise ConfigError(f"{model} is already quantized; calibrate its fp32 ONNX")
    calib = load_calibration_set(images, card, limit=num, allow_any_size=allow_any_size)
    out = Path(out) if out else Path(model).with_name(f"{Path(model).stem}.int8-{scheme}-{method}.onnx")
    report: dict[str, Any] = {"model": str(model), "int8": str(out), "method": method, "scheme": scheme,
                              "calibration_images": len(calib.inputs), "warnings": list(calib.warnings)}
    eval_samples = load_samples(eval_data) if eval_data else None
    if eval_samples is not None:
        report["patient_overlap"] = check_patient_overlap(calib, eval_samples, allow_patient_overlap)
    quantize_onnx(model, out, calib, card, method, scheme, fit_avx2)
    zps = onnx_zero_points(out)
    report["zero_points"] = sorted(set(zps))
    report["int8_saturation"] = saturation_summary(check_saturation(str(out)))
    if eval_samples is not None:
        held_out = labelled_inputs(eval_samples, card, str(eval_data))
        x, y = held_out.inputs, held_out.labels
        fp32, p32 = evaluate_onnx(model, card, x, y)
        int8, p8 = evaluate_onnx(out, card, x, y, "int8")
        rows = {"fp32 (ORT)": fp32, f"PTQ int8 {method} (ORT)": {**int8, "agreement": device_agreement(p32, p8)}}
        if qat_checkpoint is not None:
            rows["QAT int8 (torch)"] = _qat_row(qat_checkpoint, x, y, p32, card.blast_columns)
        report["eval"] = {"data": str(eval_data), "n": len(y), "rows": rows}
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    return report


def _qat_row(qat_checkpoint: str | Path, x: np.ndarray, y: np.ndarray, p32: np.ndarray, blast: list[int]) -> dict[str, Any]:
    import torch

    from alnett_edge.compress.qat import load_qat_checkpoint

    model, _ = load_qat_checkpoint(qat_checkpoint)
    with torch.inference_mode():
        prob = blast_sum(torch.softmax(model(torch.from_numpy(x)), dim=1).numpy(), blast)
    return {**summary(binary_metrics(y, prob)), "agreement": device_agreement(p32, prob)}
