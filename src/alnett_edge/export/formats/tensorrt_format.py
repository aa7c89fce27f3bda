"""TensorRT: the bundle carries the ONNX (fp32 for fp16/fp32 engines, symmetric int8 QDQ for int8)
and a build config; the engine is built on the Jetson (``alnett-edge build-engine``) because engines
do not move between GPUs or TensorRT versions. The ONNX is linted for TensorRT here and gated with
ONNX Runtime, which runs the same graph — a proxy, said so in the manifest: int8 is gated with the
exact int8 arithmetic of the QDQ graph (unfused, as TensorRT's int32 accumulation computes it, not
this CPU's kernels), and the engine itself is verified on the device (``alnett-edge verify``).
TensorRT's rules hold for int8: symmetric, zero-point 0, full 8-bit weights."""

from __future__ import annotations

import json

from alnett_edge.errors import ConfigError, ExportError
from alnett_edge.export.formats.base import REFERENCE, Artifact, ExportFormat, ExportJob, register
from alnett_edge.export.formats.onnx_format import int8_onnx
from alnett_edge.export.trt_lint import lint_tensorrt
from alnett_edge.model.to_onnx import export_onnx
from alnett_edge.tensorrt.engine import BUILD_CONFIG


@register
class TensorRTFormat(ExportFormat):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    int8_gate = (REFERENCE,)
    proxy = ("the TensorRT engine is built and run on the Jetson; the host gates the same ONNX in ONNX Runtime "
             "(int8: exact QDQ arithmetic), which approximates the engine (its own kernels, fusions and rounding)")

    def build(self, job: ExportJob, precision: str) -> Artifact:
        if precision not in self.precisions:
            raise ConfigError(f"TensorRT export has no precision {precision!r}")
        profile = job.profile
        dest = job.out / f"model.trt-{precision}.onnx"
        extra: dict[str, object] = {}
        if precision == "int8":
            _, extra = int8_onnx(job, dest, "symmetric")  # TensorRT's explicit quantization: zero-point 0
        else:
            export_onnx(job.model, job.card, dest)
        lint = lint_tensorrt(dest, getattr(profile, "onnx_opset", None))
        if not lint.ok:
            raise ExportError(f"{dest.name}: {lint.summary()}")
        max_batch = getattr(profile, "max_batch", 16)
        config = {
            "onnx": dest.name, "precision": precision,
            "workspace_mb": (getattr(profile, "tensorrt", {}) or {}).get("workspace_mb", 1024),
            "batch": {"min": 1, "opt": min(8, max_batch), "max": max_batch},
            "input": {"name": "input", "layout": job.card.input.layout, "shape": _chw_or_hwc(job.card.input)},
        }  # fmt: skip
        (job.out / BUILD_CONFIG).write_text(json.dumps(config, indent=2))
        extra.update(build_config=BUILD_CONFIG, lint=lint.summary(), engine="built on the device: alnett-edge build-engine")
        return Artifact(dest.name, self.name, precision, self.runtime, extra=extra)


def _chw_or_hwc(spec) -> list[int]:  # noqa: ANN001 - the card's InputSpec
    """One input image's shape as the card lays it out (the engine's optimisation profile adds N)."""
    h, w = spec.size
    return [3, h, w] if spec.layout == "NCHW" else [h, w, 3]
