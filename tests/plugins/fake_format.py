"""A third-party export format: an fp32 ONNX graph stored as ``model.fake`` (this file plus one
registration). Its gate runs on the ``fakert`` backend."""

from __future__ import annotations

from alnett_edge.export.formats.base import Artifact, ExportFormat, ExportJob, register
from alnett_edge.model.to_onnx import export_onnx


@register
class FakeOnnxFormat(ExportFormat):
    name = "fakeonnx"
    precisions = ("fp32",)

    def build(self, job: ExportJob, precision: str) -> Artifact:
        dest = job.out / "model.fake"
        export_onnx(job.model, job.card, dest)
        return Artifact(dest.name, self.name, precision, self.runtime)
