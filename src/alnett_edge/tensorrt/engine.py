"""``alnett-edge build-engine BUNDLE``: build the TensorRT engine on the device (TensorRT Python API).

Engines do not move between GPUs or TensorRT versions, so the engine is built where it runs and
cached under a key of TensorRT version + GPU name + compute capability + ONNX sha256; loading an
engine whose key does not match this device is an error that says to rebuild. Parsing uses
``OnnxParser``; fp16 sets ``BuilderFlag.FP16``; int8 is explicit quantization only (the ONNX carries
symmetric Q/DQ, so ``BuilderFlag.INT8`` with no calibrator) with fp16 allowed for the rest; one
optimisation profile covers batch min/opt/max; the workspace comes from the device profile; a timing
cache beside the engine speeds up rebuilds. Without TensorRT (any non-Jetson host) every entry point
fails with a one-line :class:`TensorRTUnavailable`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alnett_edge.errors import AlnettError
from alnett_edge.bundle import load_bundle
from alnett_edge.tensorrt.backend import (  # noqa: F401 - EngineMismatch, check_engine_key re-exported
    ENGINE_DIR,
    EngineMismatch,
    TensorRTUnavailable,
    check_engine_key,
    current_key,
    engine_key,
    tensorrt_module,
)

log = logging.getLogger(__name__)

#: the engine build settings an export for a Jetson writes into the bundle
BUILD_CONFIG = "tensorrt.json"


def build_engine(bundle_path: str | Path, workspace_mb: int | None = None, max_batch: int | None = None) -> Path:
    bundle = load_bundle(bundle_path)  # a tampered bundle is refused before anything else
    trt = tensorrt_module("build engines on the Jetson (JetPack provides python3-libnvinfer)")
    if BUILD_CONFIG not in bundle.manifest["files"]:
        raise AlnettError(f"{bundle.root} has no {BUILD_CONFIG}: export it for a Jetson target")
    cfg = json.loads(bundle.file(BUILD_CONFIG).read_text())
    onnx_path = bundle.file(str(cfg.get("onnx", "")))
    key = current_key(onnx_path)
    engine_dir = bundle.root / ENGINE_DIR
    engine_path = engine_dir / f"model.{key['id']}.engine"
    if engine_path.is_file():
        log.info("engine cache hit: %s", engine_path)
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AlnettError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, (workspace_mb or cfg["workspace_mb"]) << 20)
    if cfg["precision"] in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg["precision"] == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    b = cfg["batch"]
    top = max_batch or b["max"]
    shape = cfg["input"]["shape"]
    profile = builder.create_optimization_profile()
    profile.set_shape(cfg["input"]["name"], (1, *shape), (min(b["opt"], top), *shape), (top, *shape))
    config.add_optimization_profile(profile)
    engine_dir.mkdir(exist_ok=True)
    cache_file = engine_dir / "timing.cache"
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AlnettError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    (engine_dir / f"model.{key['id']}.json").write_text(json.dumps({**key, "precision": cfg["precision"],
                                                                     "max_batch": top}, indent=2))
    return engine_path
