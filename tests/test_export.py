import json
import pathlib
import shutil
import tarfile

import numpy as np
import pytest

from alnett_edge.devices import UnsupportedOnDevice
from alnett_edge.errors import ConfigError
from alnett_edge.bundle import BundleError, extract_archive, load_bundle
from alnett_edge.export.exporter import AUTO_MIN_GAIN, GateFailed, export_bundle, fastest
from alnett_edge.export.formats import FORMATS, get_format
from alnett_edge.tensorrt.engine import build_engine
from alnett_edge.tensorrt.backend import EngineMismatch, check_engine_key, engine_key
from alnett_edge.export.trt_lint import lint_tensorrt
from alnett_edge.tensorrt.backend import TensorRTUnavailable


def test_registry_has_one_entry_per_format():
    assert set(FORMATS) == {"onnx", "tflite", "tensorrt"}
    with pytest.raises(ConfigError, match="unknown export format"):
        get_format("coreml")


def test_x86_auto_bundle_gates_every_artifact_and_verifies(x86_bundle):
    m = x86_bundle
    assert m["status"] == "ok"
    files = {a["file"]: a for a in m["artifacts"]}
    tried = set(files) | {a["file"] for a in m["rejected_by_gate"]}
    assert tried == {"model.fp32.onnx", "model.int8.onnx"} and "model.fp32.onnx" in files
    for a in files.values():  # what stays in the bundle passed; what failed is listed with its reasons
        assert a["gate"]["passed"] and a["gate"]["agreement"] >= 0.99 and a["latency_b1_ms_here"] > 0
    for a in m["rejected_by_gate"]:
        assert a["gate"]["failures"] and not (pathlib.Path(m["bundle"]) / a["file"]).exists()
    int8 = files.get("model.int8.onnx") or m["rejected_by_gate"][0]
    assert int8["extra"]["source"] == "ptq"
    # auto picks the fastest passing artifact on this (x86) host, timed round by round against the
    # first built (fp32); int8 only when at least AUTO_MIN_GAIN faster
    assert files["model.fp32.onnx"]["latency_vs_first_here"] == 1.0
    rel = {f: a["latency_vs_first_here"] for f, a in files.items()}
    int8_wins = rel.get("model.int8.onnx", 2.0) <= 1 - AUTO_MIN_GAIN
    assert m["selected"] == ("model.int8.onnx" if int8_wins else "model.fp32.onnx"), rel
    # every BatchNorm is folded into its convolution at export: the runtime never normalises twice
    import onnx

    ops = {n.op_type for n in onnx.load(pathlib.Path(m["bundle"]) / "model.fp32.onnx").graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops, ops
    bundle = load_bundle(m["bundle"])
    assert bundle.card.input.size == (64, 64)
    golden = np.load(bundle.root / "golden" / "inputs.npy")
    probs = np.load(bundle.root / "golden" / "model.fp32.onnx.probs.npy")
    assert golden.shape[1:] == (3, 64, 64) and probs.shape == (len(golden), 2)
    # the stored host outputs are reproducible from the artifact itself
    pred = get_format("onnx").predictor(bundle.root / "model.fp32.onnx", None, bundle.card)
    assert np.allclose(pred(golden), probs, atol=1e-6)
    assert set(bundle.manifest["files"]) >= {"card.json", "model.fp32.onnx", "golden/inputs.npy"}
    assert bundle.manifest["source_checkpoint"]["sha256"] and bundle.manifest["toolkit"]["onnxruntime"]


def test_auto_keeps_the_more_exact_artifact_unless_the_other_is_clearly_faster():
    def arts(int8_rel):
        return [{"file": "model.fp32.onnx", "precision": "fp32", "latency_vs_first_here": 1.0},
                {"file": "model.int8.onnx", "precision": "int8", "latency_vs_first_here": int8_rel}]

    assert fastest(arts(0.97)) == "model.fp32.onnx"  # within timing noise: the exact one
    assert fastest(arts(0.80)) == "model.int8.onnx"
    assert fastest(arts(1.70)) == "model.fp32.onnx"
    assert fastest(list(reversed(arts(1.2)))) == "model.fp32.onnx"  # build order does not matter


def test_tampered_truncated_and_failed_bundles(x86_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(x86_bundle["bundle"], copy)
    load_bundle(copy)
    data = (copy / "model.fp32.onnx").read_bytes()
    (copy / "model.fp32.onnx").write_bytes(data[:-10])
    with pytest.raises(BundleError, match="model.fp32.onnx does not match its sha256"):
        load_bundle(copy)
    (copy / "model.fp32.onnx").write_bytes(data)
    (copy / "card.json").unlink()
    with pytest.raises(BundleError, match="missing: card.json"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not an alnett-edge bundle"):
        load_bundle(tmp_path)


def test_archive_roundtrip_and_unsafe_archives(x86_bundle, tmp_path):
    bundle = load_bundle(x86_bundle["archive"])
    assert bundle.manifest["status"] == "ok"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        import io

        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(BundleError, match="unsafe path"):
        extract_archive(evil, tmp_path / "x")
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("b/passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BundleError, match="link or special file"):
        extract_archive(link, tmp_path / "y")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_failing_gate_marks_the_bundle_failed(trained, tmp_path):
    _, result = trained
    with pytest.raises(GateFailed, match="accuracy gate failed"):
        export_bundle(result.best, "x86-cpu", tmp_path / "b", precision="fp32", allow_drop=-5.0)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    manifest = json.loads((tmp_path / "b.failed" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    with pytest.raises(BundleError, match="failed its accuracy gate"):
        load_bundle(tmp_path / "b.failed")


def test_tflite_fp32_and_int8_from_qat(trained, rpi_bundle, tmp_path):
    _, result = trained
    m = export_bundle(result.best, "rpi5", tmp_path / "rpi", precision="fp32")
    a = {x["file"]: x for x in m["artifacts"]}
    assert a["model.fp32.tflite"]["gate"]["agreement"] == 1.0
    assert a["model.fp32.tflite"]["gate"]["drop_points"]["accuracy"] == 0.0
    # int8: a fully int8 .tflite from the asymmetric QAT checkpoint; gate it leniently (alnett-tiny)
    m = rpi_bundle
    assert [x["precision"] for x in m["artifacts"]] == ["int8", "fp32"]  # the ONNX fallback stays fp32
    t = {x["file"]: x for x in m["artifacts"]}["model.int8.tflite"]
    assert t["input_dtype"] == "int8" and t["extra"]["input_quantization"]
    assert t["gate"]["agreement"] >= 0.95 and t["bytes"] < a["model.fp32.tflite"]["bytes"]
    assert "rpi5" in m["notes"][0]


def test_jetson_bundle_lints_and_engine_is_built_on_device(trained, qat_sym, qat_asym, tmp_path):
    _, result = trained
    # lenient gate: alnett-tiny on 64 px has near-tie cells that any int8 arithmetic may flip (test_int8.py)
    m = export_bundle(result.best, "jetson", tmp_path / "j", qat=qat_sym, allow_drop=5.0, min_agreement=0.95)
    art = m["artifacts"][0]
    assert art["format"] == "tensorrt" and art["precision"] == "int8" and "passed" in art["extra"]["lint"]
    assert lint_tensorrt(tmp_path / "j" / art["file"]).ok
    cfg = json.loads((tmp_path / "j" / "tensorrt.json").read_text())
    assert cfg["batch"]["max"] == 16 and cfg["workspace_mb"] == 1024 and cfg["precision"] == "int8"
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        build_engine(tmp_path / "j")
    with pytest.raises(ConfigError, match="symmetric QAT checkpoint"):
        export_bundle(result.best, "jetson-agx-orin", tmp_path / "j2", qat=qat_asym)
    with pytest.raises(UnsupportedOnDevice, match="Maxwell"):
        export_bundle(result.best, "jetson-nano", tmp_path / "n", precision="int8")
    with pytest.raises(ConfigError, match="unknown target"):
        export_bundle(result.best, "jetson-tx1", tmp_path / "t")


def test_engine_cache_key():
    a = engine_key("10.3.0", "Orin", "8.7", "ab" * 32)
    assert a == engine_key("10.3.0", "Orin", "8.7", "ab" * 32) and len(a["id"]) == 16
    check_engine_key(a, a)
    with pytest.raises(EngineMismatch, match="rebuild it here"):
        check_engine_key(a, engine_key("10.3.0", "Orin", "8.7", "cd" * 32))
    with pytest.raises(EngineMismatch, match="gpu"):
        check_engine_key(a, engine_key("10.3.0", "Xavier", "7.2", "ab" * 32))


def test_onnx_fp16_runs_and_matches(trained, tmp_path):
    import pathlib

    from alnett_edge.export.formats import ExportJob
    from alnett_edge.model import load_checkpoint

    _, result = trained
    model, card = load_checkpoint(result.best)
    job = ExportJob(model, card, pathlib.Path(tmp_path))
    fmt = get_format("onnx")
    a32, a16 = fmt.build(job, "fp32"), fmt.build(job, "fp16")
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    p32 = fmt.predictor(tmp_path / a32.file, a32, card)(x)
    p16 = fmt.predictor(tmp_path / a16.file, a16, card)(x)
    assert np.abs(p32 - p16).max() < 0.01
    assert (tmp_path / a16.file).stat().st_size < 0.7 * (tmp_path / a32.file).stat().st_size
