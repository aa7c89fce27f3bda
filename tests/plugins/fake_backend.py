"""A third-party runtime backend, as a contributor would add one: this file plus one table entry.
It runs the ``fakeonnx`` artifacts of ``fake_format`` with ONNX Runtime's bare API (not alnett-edge's
ONNX Runtime backend), so everything above it is exercised through the registry alone."""

from __future__ import annotations

import numpy as np

from alnett_edge.runtime.base import BACKENDS, BackendSpec, Runtime


class FakeRuntime(Runtime):
    calls = 0

    def __init__(self, path, card, artifact=None, threads=0, **options):
        super().__init__(path, card, artifact, threads, **options)
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        FakeRuntime.calls += 1
        return self.session.run(None, {self.input_name: batch})[0]  # logits: infer applies the card's temperature


BACKENDS["fakert"] = BackendSpec("fake_backend:FakeRuntime", ("fakeonnx",), profiling="the fake's own profiler")
