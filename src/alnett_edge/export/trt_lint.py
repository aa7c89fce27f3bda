"""A TensorRT-readiness lint for ONNX models that runs anywhere (no GPU, no TensorRT).

Checks what TensorRT's explicit quantization and ONNX parser require, so a bad model is caught on
the workstation instead of at engine build time on the Jetson:

* the default-domain opset is >= 13 (per-channel QuantizeLinear/DequantizeLinear) and not above
  what the target's TensorRT parses (``max_opset``, from the device profile);
* every QuantizeLinear/DequantizeLinear zero-point is 0 (TensorRT rejects others);
* int8 weights are per-channel (a 1-D scale of one entry per output channel) and within [-127, 127];
* every operator is in TensorRT's supported ONNX operator list (onnx-tensorrt docs/operators.md,
  TensorRT 10; ops of other domains are flagged);
* the input's spatial dimensions (and channels) are static; only the batch may be dynamic.

Torch-free; used by ``alnett-edge export`` for Jetson targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from alnett_edge.onnx_io import load_onnx

#: ONNX operators the TensorRT 10 ONNX parser supports (onnx-tensorrt, docs/operators.md).
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Compress Concat ConcatFromSequence Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace DequantizeLinear Div Dropout DynamicQuantizeLinear
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HammingWindow
HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul MatMulInteger
Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg
NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QLinearConv QLinearMatMul
QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu
SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

MIN_OPSET = 13


@dataclass
class LintReport:
    path: str
    opset: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    qdq_nodes: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        if self.ok:
            return f"TensorRT lint passed ({self.qdq_nodes} Q/DQ nodes, opset {self.opset})"
        more = f" (+{len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        return "TensorRT lint failed: " + "; ".join(self.errors[:3]) + more


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def lint_tensorrt(path: str | Path, max_opset: int | None = None) -> LintReport:
    model = load_onnx(path)
    report = LintReport(str(path), _opset(model))
    if report.opset < MIN_OPSET:
        report.errors.append(f"opset {report.opset} < {MIN_OPSET} (per-channel Q/DQ needs opset 13)")
    if max_opset is not None and report.opset > max_opset:
        report.errors.append(f"opset {report.opset} > {max_opset}, the newest this target's TensorRT parses")
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    bad_ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                      for n in graph.node if n.op_type not in TENSORRT_OPS or n.domain not in ("", "ai.onnx")})
    if bad_ops:
        report.errors.append(f"operators not in TensorRT's ONNX op list: {', '.join(bad_ops)}")

    nonzero, per_tensor_weights, out_of_range = set(), set(), set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        report.qdq_nodes += 1
        if len(node.input) > 2 and node.input[2]:
            zp = const(node.input[2])
            if zp is None or np.any(zp != 0):
                nonzero.add(node.name or node.output[0])
        if node.op_type == "DequantizeLinear":
            w = const(node.input[0])
            if w is not None and w.dtype == np.int8 and w.ndim >= 2:  # a stored int8 weight
                scale = const(node.input[1])
                if scale is None or scale.size <= 1:
                    per_tensor_weights.add(node.name or node.output[0])
                if w.min() < -127:
                    out_of_range.add(node.name or node.output[0])
    if nonzero:
        report.errors.append(f"{len(nonzero)} Q/DQ node(s) with a non-zero zero-point (e.g. {sorted(nonzero)[0]}); "
                             "TensorRT needs symmetric quantization (--scheme symmetric)")
    if per_tensor_weights:
        report.errors.append(f"{len(per_tensor_weights)} int8 weight(s) quantized per-tensor, not per-channel")
    if out_of_range:
        report.errors.append(f"{len(out_of_range)} int8 weight(s) use -128 (TensorRT expects [-127, 127])")

    for inp in graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                report.errors.append(f"input {inp.name!r} axis {axis} is dynamic ({d.dim_param or '?'}); "
                                     "only the batch axis may be dynamic")
    if report.qdq_nodes == 0:
        report.warnings.append("no Q/DQ nodes: TensorRT will build fp16/fp32, not int8")
    return report
