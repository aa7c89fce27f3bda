"""ONNX: fp32 (dynamo exporter + onnxslim), fp16 (onnxconverter-common, float I/O kept) and int8 QDQ
(from a QAT checkpoint, else post-training calibration on the checkpoint's own training images).

int8 follows the device profile: its scheme (``asymmetric`` u8 activations, or ``symmetric`` with
zero-point 0 for TensorRT) and, when it covers x86 CPUs without VNNI, GEMM weights fitted so their
int16 pairs cannot saturate (see ``calibrate.int8_safety``). Every int8 artifact carries
the static saturation check in its manifest entry."""

from __future__ import annotations

from pathlib import Path

import onnx

from alnett_edge.errors import ConfigError
from alnett_edge.export.formats.base import KERNELS, REFERENCE, Artifact, ExportFormat, ExportJob, register
from alnett_edge.calibrate.int8_safety import check_saturation, fit_weights_to_int16_pairs, saturation_summary
from alnett_edge.onnx_io import set_card
from alnett_edge.model.to_onnx import export_onnx


def int8_onnx(job: ExportJob, dest: Path, scheme: str, fit_avx2: bool = False) -> tuple[Path, dict[str, object]]:
    """An int8 QDQ ONNX: the QAT checkpoint when given (its scheme must fit), else PTQ calibration.
    ``fit_avx2``: GEMM weights fitted so x86 CPUs without VNNI cannot saturate (``calibrate.int8_safety``)."""
    if job.qat_checkpoint is not None:
        from alnett_edge.compress.qat import load_qat_checkpoint

        qmodel, qcard = load_qat_checkpoint(job.qat_checkpoint)
        have = qcard.quantization.get("scheme")
        if scheme == "symmetric" and have != "symmetric":
            raise ConfigError(f"this target needs a symmetric QAT checkpoint (TensorRT zero-point 0), got {have}")
        export_onnx(qmodel, qcard, dest, simplify=False)
        extra: dict[str, object] = {"source": "qat", "scheme": have}
    else:
        from alnett_edge.calibrate.ptq import quantize_onnx
        from alnett_edge.calibrate.reader import load_calibration_set, training_calibration_set

        fp32 = export_onnx(job.model, job.card, dest.with_suffix(".calib-src.onnx"))
        calib = load_calibration_set(job.calib_images, job.card, layout=job.layout) if job.calib_images is not None \
            else training_calibration_set(job.card)
        quantize_onnx(fp32, dest, calib, job.card, "minmax", scheme, fit_avx2)
        fp32.unlink()
        extra = {"source": "ptq", "scheme": scheme, "calibration_images": len(calib.inputs)}
    proto = onnx.load(str(dest))
    if fit_avx2 and fit_weights_to_int16_pairs(proto):  # a QAT graph carries full 8-bit weights
        onnx.save(proto, str(dest))
    extra["fit_avx2"] = fit_avx2
    extra["int8_saturation"] = saturation_summary(check_saturation(proto))
    return dest, extra


@register
class OnnxFormat(ExportFormat):
    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    int8_gate = (KERNELS, REFERENCE)  # this CPU's kernels and the exact arithmetic other CPUs compute

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
            if job.profile is None:
                raise ConfigError("ONNX int8 export needs a device profile (its int8 scheme and CPUs)")
            _, extra = int8_onnx(job, dest, job.profile.int8_scheme, job.profile.int8_fits_avx2)
        else:
            raise ConfigError(f"ONNX export has no precision {precision!r}")
        return Artifact(dest.name, self.name, precision, self.runtime, extra=extra)
