"""ONNX: fp32 (dynamo exporter + onnxslim), fp16 (onnxconverter-common, float I/O kept) and int8 QDQ
(from a QAT checkpoint, else post-training calibration on the checkpoint's own training images)."""

from __future__ import annotations

from pathlib import Path

import onnx

from alnett_edge.errors import ConfigError
from alnett_edge.export.formats.base import Artifact, ExportFormat, ExportJob, register
from alnett_edge.export.metadata import set_card
from alnett_edge.export.onnx import export_onnx


def int8_onnx(job: ExportJob, dest: Path, scheme: str) -> tuple[Path, dict[str, object]]:
    """An int8 QDQ ONNX: the QAT checkpoint when given (its scheme must fit), else PTQ calibration."""
    if job.qat_checkpoint is not None:
        from alnett_edge.compress.qat import load_qat_checkpoint

        qmodel, qcard = load_qat_checkpoint(job.qat_checkpoint)
        have = qcard.quantization.get("scheme")
        if scheme == "symmetric" and have != "symmetric":
            raise ConfigError(f"this target needs a symmetric QAT checkpoint (TensorRT zero-point 0), got {have}")
        export_onnx(qmodel, qcard, dest, simplify=False)
        return dest, {"source": "qat", "scheme": have}
    from alnett_edge.calibrate.ptq import quantize_onnx
    from alnett_edge.calibrate.reader import load_calibration_set, training_calibration_set

    fp32 = export_onnx(job.model, job.card, dest.with_suffix(".calib-src.onnx"))
    if job.calib_images is not None:
        calib = load_calibration_set(job.calib_images, job.card)
    else:
        calib = training_calibration_set(job.card)
    quantize_onnx(fp32, dest, calib, job.card, "minmax", scheme)
    fp32.unlink()
    return dest, {"source": "ptq", "scheme": scheme, "calibration_images": len(calib.inputs)}


@register
class OnnxFormat(ExportFormat):
    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    runtime = "onnxruntime"

    def build(self, job: ExportJob, precision: str) -> Artifact:
        dest = job.out / f"model.{precision}.onnx"
        extra: dict[str, object] = {}
        if precision == "fp32":
            export_onnx(job.model, job.card, dest)
        elif precision == "fp16":
            from onnxconverter_common import float16

            export_onnx(job.model, job.card, dest)
            half = float16.convert_float_to_float16(onnx.load(str(dest)), keep_io_types=True)
            set_card(half, job.card)
            onnx.save(half, str(dest))
        elif precision == "int8":
            family = getattr(job.profile, "family", "x86")
            _, extra = int8_onnx(job, dest, "symmetric" if family == "jetson" else "asymmetric")
        else:
            raise ConfigError(f"ONNX export has no precision {precision!r}")
        return Artifact(dest.name, self.name, precision, self.runtime, extra=extra)
