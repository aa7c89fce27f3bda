"""TFLite (LiteRT) through litert-torch, no TensorFlow: fp32, and full int8 (int8 input and output,
XNNPACK-delegated) from an asymmetric QAT checkpoint (better accuracy) or, without one, by post-training
calibration of the fp32 model with litert-torch's PT2E quantizer (``--calib-images``, else the
checkpoint's own training images). Input stays NCHW (one TRANSPOSE inside), batch
dynamic (converted with a batch-2 sample: batch 1 would be specialised). Run with ai-edge-litert."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from alnett_edge.errors import ConfigError
from alnett_edge.export.formats.base import Artifact, ExportFormat, ExportJob, register
from alnett_edge.errors import ExportError


def _sample(job: ExportJob):  # noqa: ANN202
    import torch

    return torch.randn(2, 3, *job.card.input.size)


@register
class TFLiteFormat(ExportFormat):
    name = "tflite"
    precisions = ("fp32", "int8")

    def build(self, job: ExportJob, precision: str) -> Artifact:
        dest = job.out / f"model.{precision}.tflite"
        extra: dict[str, object] = {}
        chatter = io.StringIO()  # litert-torch prints its conversion progress
        from alnett_edge.compress._litert_compat import quiet_native_stderr

        with contextlib.redirect_stdout(chatter), quiet_native_stderr():
            edge = self._convert(job, precision, extra)
            edge.export(str(dest))
        dtype, quant = _input_spec(dest)
        extra["input_quantization"] = quant
        return Artifact(dest.name, self.name, precision, self.runtime, input_dtype=dtype, extra=extra)

    def _convert(self, job: ExportJob, precision: str, extra: dict[str, object]):  # noqa: ANN202
        from alnett_edge.compress._litert_compat import quiet_native_stderr

        try:
            if precision == "fp32":
                with quiet_native_stderr():
                    import litert_torch

                    edge = litert_torch.convert(job.model.eval(), (_sample(job),))
            elif precision == "int8" and job.qat_checkpoint is None:
                from alnett_edge.calibrate.reader import load_calibration_set, training_calibration_set
                from alnett_edge.compress.qat import to_litert_int8_ptq

                calib = load_calibration_set(job.calib_images, job.card, layout=job.layout) if job.calib_images is not None \
                    else training_calibration_set(job.card)
                edge = to_litert_int8_ptq(job.model, calib.inputs, _sample(job))
                extra.update(source="ptq", scheme="asymmetric", calibration_images=len(calib.inputs))
            elif precision == "int8":
                from alnett_edge.compress.qat import to_litert_int8
                from alnett_edge.model.checkpoint import read_card

                scheme = read_card(job.qat_checkpoint).quantization.get("scheme")
                if scheme != "asymmetric":
                    raise ConfigError(f"TFLite int8 needs an asymmetric QAT checkpoint (LiteRT/XNNPACK), got {scheme}")
                edge, _ = to_litert_int8(job.qat_checkpoint, _sample(job))
                extra.update(source="qat", scheme=scheme)
            else:
                raise ConfigError(f"TFLite export has no precision {precision!r}")
        except ImportError as exc:
            raise ExportError("TFLite export needs litert-torch: pip install 'alnett-edge[tflite]'") from exc
        return edge


def _input_spec(path: Path) -> tuple[str, list[float] | None]:
    from alnett_edge.runtime.litert_backend import interpreter_class, quiet_native_stderr

    with quiet_native_stderr():
        interp = interpreter_class()(model_path=str(path))
    d = interp.get_input_details()[0]
    quant = list(d["quantization"]) if d["dtype"] == np.int8 else None
    return np.dtype(d["dtype"]).name, quant
