"""The device runtime: runs exported bundles with ONNX Runtime, LiteRT or TensorRT (and the fp32
PyTorch checkpoint as the reference). Imports no torch; ``pip install alnett-edge[rpi]`` is enough."""

from alnett_edge.runtime.base import BACKENDS, InputError, Runtime, RuntimeUnavailable, unavailable_reason
from alnett_edge.runtime.loader import Target, choose, open_runtime, targets_of

__all__ = ["BACKENDS", "InputError", "Runtime", "RuntimeUnavailable", "Target", "choose", "open_runtime",
           "targets_of", "unavailable_reason"]
