"""Static int8 checks over a QDQ ONNX graph: can an x86 CPU without VNNI saturate on it?

ONNX Runtime fuses ``DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear`` into integer kernels.
On x86 CPUs without VNNI (AVX2 only) those kernels feed activation bytes as u8 (s8 activations are
shifted by +128 first) and weights as s8 to ``vpmaddubsw``, which adds the products of two
neighbouring K elements into one *saturating* int16 lane. A pair can saturate when
``255 * (|w_i| + |w_j|) > 32767`` for two same-signed weights of one output channel. The check takes,
per output channel, the two largest positive and the two largest negative weights (whichever pair
the kernel happens to form), so it is sound for any packing order: a layer that passes cannot
saturate on any activation. 8-bit weights (|w| up to 127) generally fail it; weights limited to
7 bits (|w| <= 64: 255 * 128 = 32640) always pass, and so does any channel whose two largest
same-signed weights sum to at most 128.

Depthwise convolutions (one input channel per group, as many groups as outputs) do not go through
that GEMM: ONNX Runtime's QLinearConv runs them on MLAS's depthwise kernel, which widens to 16 bits
and accumulates in int32. Measured on an AVX2-only AMD EPYC (onnxruntime 1.32): 8-bit depthwise
convolutions, u8 and s8 activations, dilations 1-3, 16-256 channels, equal the unfused reference
exactly (``tests/test_int8.py`` re-checks it on every machine). They keep their 8-bit weights.

:func:`fit_weights_to_int16_pairs` re-quantizes a QDQ graph's GEMM weights so that every channel
passes (bias re-quantized to match), the fix for artifacts that must run on every x86-64 CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

INT16_MAX = 32767
ACT_MAX = 255  # a u8 activation byte, or an s8 one after the kernel's +128 shift
PAIR_BUDGET = INT16_MAX // ACT_MAX  # 128: two same-signed weights summing to this x 255 fit in int16
_LAYERS = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerCheck:
    node: str
    op: str
    activation: str  # uint8 / int8
    weight_max: int  # largest |w| (integer)
    worst_pair: int  # largest |sum of two same-signed weight x 255| in any output channel (0: depthwise)
    safe: bool
    kernel: str = "gemm"  # "gemm" (pairs may saturate without VNNI) or "depthwise" (int32 accumulation)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _weight_rows(w: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """The weight as (outputs, K): Conv OIHW, Gemm per transB, MatMul (K, N)."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    w2 = w.reshape(w.shape[0], -1) if w.ndim != 2 else w
    return w2 if (node.op_type == "Gemm" and trans_b) else w2.T


def _is_depthwise(node: onnx.NodeProto, w: np.ndarray) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and w.ndim == 4 and w.shape[1] == 1 and group == w.shape[0] > 1


def _worst_pair(rows: np.ndarray) -> int:
    rows = rows.astype(np.int64)
    pos = -np.sort(-np.clip(rows, 0, None), axis=1)[:, :2]
    neg = -np.sort(-np.clip(-rows, 0, None), axis=1)[:, :2]
    return int(ACT_MAX * max(pos.sum(1).max(initial=0), neg.sum(1).max(initial=0)))


def _quantized_operands(graph: onnx.GraphProto, node: onnx.NodeProto, inits: dict[str, np.ndarray],
                        prod: dict[str, onnx.NodeProto]) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(activation DQ, weight DQ) when ``node`` runs on an integer kernel after QDQ fusion."""
    if len(node.input) < 2:
        return None
    act, wdq = prod.get(node.input[0]), prod.get(node.input[1])
    if act is None or wdq is None or act.op_type != "DequantizeLinear" or wdq.op_type != "DequantizeLinear":
        return None
    if wdq.input[0] not in inits or inits[wdq.input[0]].dtype != np.int8:
        return None
    return act, wdq


def _zero_point_dtype(dq: onnx.NodeProto, inits: dict[str, np.ndarray], prod: dict[str, onnx.NodeProto]) -> str:
    if len(dq.input) > 2 and dq.input[2] in inits:
        return inits[dq.input[2]].dtype.name
    src = prod.get(dq.input[0])  # Q without zero-point initializer: uint8 by the ONNX default
    if src is not None and len(src.input) > 2 and src.input[2] in inits:
        return inits[src.input[2]].dtype.name
    return "uint8"


def _int8_layers(graph: onnx.GraphProto) -> Iterator[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto,
                                                             dict[str, np.ndarray], dict[str, onnx.NodeProto]]]:
    """(layer, activation DQ, weight DQ, initializers, producers) for every integer Conv/Gemm/MatMul."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prod = _producers(graph)
    for node in graph.node:
        ops = _quantized_operands(graph, node, inits, prod) if node.op_type in _LAYERS else None
        if ops is not None:
            yield node, ops[0], ops[1], inits, prod


def check_saturation(model: onnx.ModelProto | str) -> list[LayerCheck]:
    """One row per integer Conv/Gemm/MatMul of a QDQ model (empty for a float model)."""
    proto = onnx.load(model) if isinstance(model, str) else model
    rows = []
    for node, act, wdq, inits, prod in _int8_layers(proto.graph):
        raw = inits[wdq.input[0]]
        w = _weight_rows(raw, node)
        depthwise = _is_depthwise(node, raw)
        worst = 0 if depthwise else _worst_pair(w)
        rows.append(LayerCheck(node.name or node.output[0], node.op_type, _zero_point_dtype(act, inits, prod),
                               int(np.abs(w.astype(np.int64)).max()), worst, worst <= INT16_MAX,
                               "depthwise" if depthwise else "gemm"))
    return rows


def saturation_summary(checks: list[LayerCheck]) -> dict[str, Any]:
    """What the manifest records: whether the artifact is exact on AVX2-only x86 CPUs, and why."""
    unsafe = [c for c in checks if not c.safe]
    return {
        "int8_layers": len(checks),
        "max_weight": max((c.weight_max for c in checks), default=0),
        "worst_pair": max((c.worst_pair for c in checks), default=0),
        "exact_on_x86_without_vnni": not unsafe,
        "layers_that_may_saturate": [c.node for c in unsafe],
        "depthwise_layers": sum(c.kernel == "depthwise" for c in checks),
        "rule": f"per output channel 255 x (two largest same-signed |w|) <= {INT16_MAX}; depthwise: int32 kernel",
    }


def _pair_sums(rows: np.ndarray) -> np.ndarray:
    """Per row: the larger of (two largest positive) and (two largest |negative|) values summed."""
    pos = -np.sort(-np.clip(rows, 0, None), axis=1)[:, :2].sum(1)
    neg = -np.sort(-np.clip(-rows, 0, None), axis=1)[:, :2].sum(1)
    return np.maximum(pos, neg)


def fit_weights_to_int16_pairs(proto: onnx.ModelProto, float_weights: dict[str, np.ndarray] | None = None) -> int:
    """Re-quantize the integer weights of the fused GEMM layers, in place, so that the static check
    passes: per output channel, the two largest same-signed integer weights sum to at most
    ``PAIR_BUDGET`` (128: 255 x 128 = 32640 fits in int16). Depthwise layers keep theirs.

    The scale of a channel becomes ``max(top-2 same-signed |w| / 128, max|w| / 127)``, so a channel
    whose largest weight stands out keeps nearly 8 bits, and a channel of even weights gets 7 — better
    than cutting every weight to 7 bits (measured on ``alnett-s``: 100 % vs 98.98 % top-1 agreement with
    fp32 on 490 cells). Weights come from ``float_weights`` (initializer name without ``_quantized``,
    as ONNX Runtime's quantizer names them) when given, else from the dequantized integers (a QAT
    graph). A bias stored as an int32 DequantizeLinear is re-quantized to the new ``activation scale x
    weight scale``. Returns how many layers changed.
    """
    by_name = {i.name: i for i in proto.graph.initializer}
    changed = 0
    for node, act, wdq, inits, prod in list(_int8_layers(proto.graph)):
        q = inits[wdq.input[0]].astype(np.int64)
        scale = inits.get(wdq.input[1])
        zp = inits.get(wdq.input[2]) if len(wdq.input) > 2 else None
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        per_channel = scale is not None and scale.size > 1
        if (_is_depthwise(node, q) or scale is None or (zp is not None and np.any(zp != 0))
                or (per_channel and axis != 0 and node.op_type == "Conv")):
            continue
        rows_q = _weight_rows(q, node)
        if _pair_sums(rows_q).max() <= PAIR_BUDGET:
            continue
        name = wdq.input[0].removesuffix("_quantized")
        if float_weights is not None and name in float_weights and float_weights[name].shape == q.shape:
            w = float_weights[name].astype(np.float64)
        else:
            w = q * (scale.reshape([-1] + [1] * (q.ndim - 1)) if per_channel and axis == 0 else scale)
        rows = _weight_rows(w, node)
        new_scale = np.maximum(_pair_sums(rows) / PAIR_BUDGET, np.abs(rows).max(1) / 127)
        if not per_channel:
            new_scale = np.full_like(new_scale, new_scale.max())
        new_scale = np.maximum(new_scale, np.finfo(np.float32).tiny)
        for _ in range(50):  # rounding can still push a pair over the budget: widen those channels
            new_rows = np.clip(np.round(rows / new_scale[:, None]), -127, 127)
            over = _pair_sums(new_rows) > PAIR_BUDGET
            if not over.any():
                break
            new_scale = np.where(over, new_scale * 1.01, new_scale) if per_channel else new_scale * 1.01
        new_q = _weight_rows_inverse(new_rows, q.shape, node)
        stored = (new_scale.astype(scale.dtype) if per_channel else np.asarray(new_scale[0], dtype=scale.dtype))
        by_name[wdq.input[0]].CopyFrom(numpy_helper.from_array(new_q.astype(np.int8), wdq.input[0]))
        by_name[wdq.input[1]].CopyFrom(numpy_helper.from_array(stored, wdq.input[1]))
        _requantize_bias(node, act, stored.astype(np.float64), inits, prod, by_name)
        changed += 1
    return changed


def _weight_rows_inverse(rows: np.ndarray, shape: tuple[int, ...], node: onnx.NodeProto) -> np.ndarray:
    """Undo :func:`_weight_rows`."""
    if node.op_type == "Conv" or len(shape) != 2:
        return rows.reshape(shape)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return rows.reshape(shape) if (node.op_type == "Gemm" and trans_b) else rows.T.reshape(shape)


def _requantize_bias(node: onnx.NodeProto, act: onnx.NodeProto, w_scale: np.ndarray, inits: dict[str, np.ndarray],
                     prod: dict[str, onnx.NodeProto], by_name: dict[str, onnx.TensorProto]) -> None:
    if len(node.input) < 3 or node.input[2] not in prod:
        return
    bdq = prod[node.input[2]]
    if bdq.op_type != "DequantizeLinear" or bdq.input[0] not in inits or inits[bdq.input[0]].dtype != np.int32:
        return
    a_scale = inits.get(act.input[1])
    if a_scale is None or bdq.input[1] not in inits:
        return
    bias = inits[bdq.input[0]].astype(np.float64) * inits[bdq.input[1]].astype(np.float64)
    b_scale = (np.float64(a_scale) * w_scale.astype(np.float64)).astype(np.float32)
    b_q = np.round(bias / b_scale).astype(np.int32)
    by_name[bdq.input[0]].CopyFrom(numpy_helper.from_array(b_q, bdq.input[0]))
    by_name[bdq.input[1]].CopyFrom(numpy_helper.from_array(b_scale, bdq.input[1]))
