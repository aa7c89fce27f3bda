from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from alnett_edge.devices import UnsupportedOnDevice, load_profiles, resolve_target
from alnett_edge.errors import ConfigError
from alnett_edge.export.trt_lint import lint_tensorrt


def test_profiles_ship_and_resolve():
    profiles = load_profiles()
    assert {"jetson-nano", "jetson-orin-nano", "jetson-agx-orin", "rpi4", "rpi5", "x86-cpu"} <= set(profiles)
    p, note = resolve_target("jetson")
    assert p.name == "jetson-orin-nano" and "jetson-orin-nano" in note
    assert resolve_target("rpi5") == (profiles["rpi5"], None)
    assert profiles["rpi5"].runtimes[0] == "litert" and profiles["rpi5"].threads == 4
    assert profiles["jetson-agx-orin"].tensorrt["workspace_mb"] > profiles["jetson-orin-nano"].tensorrt["workspace_mb"]
    assert "nvarguscamerasrc" in profiles["jetson-orin-nano"].gstreamer["csi"]
    with pytest.raises(ConfigError, match="unknown target 'coral'"):
        resolve_target("coral")



def test_profiles_say_which_int8_kernels_their_cpus_have():
    profiles = load_profiles()
    assert all(p.cpu_int8 for p in profiles.values())
    assert profiles["x86-cpu"].int8_fits_avx2 and set(profiles["x86-cpu"].cpu_int8) == {"x86-avx2", "x86-vnni"}
    assert not profiles["x86-vnni"].int8_fits_avx2 and not profiles["rpi5"].int8_fits_avx2
    assert {p.int8_scheme for name, p in profiles.items() if name.startswith("jetson")} == {"symmetric"}
    from alnett_edge.devices import _parse

    text = (Path(__file__).resolve().parents[1] / "src/alnett_edge/devices/profiles/x86-cpu.toml").read_text()
    with pytest.raises(ConfigError, match="cpu_int8 takes"):
        _parse(text.replace('cpu_int8 = ["x86-avx2", "x86-vnni"]', 'cpu_int8 = ["avx9"]'), "bad.toml")

def test_impossible_requests_are_explicit_errors():
    nano = load_profiles()["jetson-nano"]
    with pytest.raises(UnsupportedOnDevice, match="jetson-nano cannot run int8: .*Maxwell"):
        nano.check_precision("int8")
    nano.check_precision("fp16")
    with pytest.raises(UnsupportedOnDevice, match="1..8"):
        nano.check_batch(32)
    with pytest.raises(ConfigError, match="unknown precision"):
        nano.check_precision("int4")


def _qdq_model(path, zero_point=0, weight_min=-127, per_channel=True, opset=17, dynamic_hw=False, op="Conv"):
    w = np.full((4, 3, 3, 3), 5, np.int8)
    w.flat[0] = weight_min
    scale = np.full(4 if per_channel else 1, 0.02, np.float32)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(scale if per_channel else scale[:1].reshape(()), "w_scale"),
        numpy_helper.from_array(np.zeros(4 if per_channel else (), np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero_point, np.int8), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w",
                         **({"axis": 0} if per_channel else {})),
        helper.make_node(op, ["xdq", "w"], ["logits"], name="conv", **({"domain": "com.microsoft"} if op == "FusedConv" else {})),
    ]
    hw = ["h", "w"] if dynamic_hw else [16, 16]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path)
    return path


def test_trt_lint_accepts_a_clean_symmetric_model(tmp_path):
    r = lint_tensorrt(_qdq_model(tmp_path / "ok.onnx"))
    assert r.ok, r.errors
    assert r.qdq_nodes == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zero_point": 3}, "non-zero zero-point"),
        ({"weight_min": -128}, "use -128"),
        ({"per_channel": False}, "per-tensor, not per-channel"),
        ({"opset": 11}, "opset 11 < 13"),
        ({"dynamic_hw": True}, "axis 2 is dynamic"),
        ({"op": "FusedConv"}, "com.microsoft::FusedConv"),
    ],
)
def test_trt_lint_catches_each_problem(tmp_path, kwargs, message):
    r = lint_tensorrt(_qdq_model(tmp_path / "bad.onnx", **kwargs))
    assert not r.ok and any(message in e for e in r.errors), r.errors
    assert message.split()[0] in r.summary() or "failed" in r.summary()


def test_trt_lint_on_real_exports(trained, tmp_path):
    """fp32 export passes with a warning; symmetric PTQ passes; asymmetric PTQ fails on zero-points."""
    from alnett_edge.calibrate.ptq import calibrate
    from alnett_edge.model.to_onnx import export_onnx
    from alnett_edge.model import load_checkpoint

    cfg, result = trained
    model, card = load_checkpoint(result.best)
    fp32 = export_onnx(model, card, tmp_path / "fp32.onnx")
    r = lint_tensorrt(fp32)
    assert r.ok and r.warnings and r.opset >= 13
    assert not lint_tensorrt(fp32, max_opset=13).ok  # the Jetson Nano's TensorRT 8.2
    sym = calibrate(fp32, cfg.data + "/fold_0", tmp_path / "s.onnx", scheme="symmetric", num=40)
    assert lint_tensorrt(sym["int8"]).ok
    asym = calibrate(fp32, cfg.data + "/fold_0", tmp_path / "a.onnx", scheme="asymmetric", num=40)
    bad = lint_tensorrt(asym["int8"])
    assert not bad.ok and "zero-point" in bad.summary()
