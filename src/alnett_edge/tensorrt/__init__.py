"""The device-side TensorRT code in one place (torch-free; TensorRT itself comes with JetPack): the
runtime backend (``backend``), building the engine from a bundle on the Jetson (``engine``) and an
INT8 calibrator for implicit quantization (``calibrator``). The export side is
``export/formats/tensorrt_format.py`` and ``export/trt_lint.py``."""
