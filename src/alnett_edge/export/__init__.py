"""Export: a checkpoint to a gated bundle for a device profile (``exporter``), one module per format
in ``formats/`` (a registry), the accuracy gate (``gate``) and the TensorRT ONNX lint (``trt_lint``)."""
