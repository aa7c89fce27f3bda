"""Export formats: one module per format, one registry (``FORMATS``).

A format turns the source model(s) of an :class:`ExportJob` into artifact files for a precision and
says how to run an artifact on this machine for the accuracy gate (``predictor``; ``None`` where it
cannot run here, e.g. TensorRT). Adding a format is one module with a :func:`register`-ed class and
one import line below.
"""

from alnett_edge.export.formats.base import FORMATS, Artifact, ExportFormat, ExportJob, get_format, register
from alnett_edge.export.formats import onnx_format, tensorrt_format, tflite_format  # noqa: F401  (registration)

__all__ = ["FORMATS", "Artifact", "ExportFormat", "ExportJob", "get_format", "register"]
