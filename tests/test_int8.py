"""int8 that means the same on every CPU (issue 10).

ONNX Runtime's int8 GEMM kernels on x86 CPUs without VNNI add the products of two neighbouring K
elements into a saturating int16 lane; VNNI CPUs, ARM and GPUs accumulate exactly. These tests never
depend on which of the two this machine has: they compare with a numpy emulation of each arithmetic
(the exact one, and the saturating AVX2 one), and where they look at this machine's real kernels they
pick the expected arithmetic from the detected ISA (``machine.int8_kernel``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from alnett_edge.bundle import load_bundle
from alnett_edge.calibrate.int8_safety import INT16_MAX, PAIR_BUDGET, check_saturation, fit_weights_to_int16_pairs
from alnett_edge.machine import int8_kernel, isa_line, isa_summary
from alnett_edge.runtime.ort_backend import open_session

from conftest import cli, one_line_error

HERE = isa_summary()["int8_kernel"]
ACT_BYTE = 255


# -- a one-layer QDQ model and two numpy emulations of its integer arithmetic ----------------------------

def qdq_conv(w_q: np.ndarray, w_scale: np.ndarray, x_scale: float, y_scale: float, act: str = "u8",
             group: int = 1) -> bytes:
    """Quantize(x) -> Conv(3x3, pad 1) with int8 per-channel weights -> Quantize(y), as ONNX QDQ."""
    cout, cin_g = w_q.shape[:2]
    cin = cin_g * group
    zp = np.uint8(0) if act == "u8" else np.int8(0)
    inits = [numpy_helper.from_array(w_q.astype(np.int8), "wq"), numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"), numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(zp), "xz"), numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(zp), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1], group=group, name="conv"),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, cout, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model.SerializeToString()


def conv_int32(x_q: np.ndarray, w_q: np.ndarray, saturate_pairs: bool) -> np.ndarray:
    """Integer 3x3 convolution (pad 1, zero-point 0) of u8 activations (1, C, H, W) with s8 weights.

    ``saturate_pairs``: the AVX2 u8s8 kernel — K ordered as ONNX Runtime packs it for NHWC
    (kernel position outer, channel inner), products of K pairs (2j, 2j+1) summed into int16 with
    saturation, then accumulated in int32. Otherwise the exact int32 sum (VNNI, ARM, GPUs).
    """
    _, c, h, w = x_q.shape
    xp = np.pad(x_q.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[0, :, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)])  # 9, C, H, W
    a = cols.reshape(9 * c, h * w)  # K = (position, channel)
    b = w_q.astype(np.int64).transpose(0, 2, 3, 1).reshape(len(w_q), 9 * c)  # O, K in the same order
    prod = b[:, :, None] * a[None]  # O, K, HW
    if saturate_pairs:
        prod = np.clip(prod[:, 0::2] + prod[:, 1::2], -32768, 32767)
    return prod.sum(1).reshape(1, len(w_q), h, w)


def requantize(acc: np.ndarray, x_scale: float, w_scale: np.ndarray, y_scale: float) -> np.ndarray:
    return np.clip(np.round(acc * x_scale * w_scale[None, :, None, None] / y_scale), 0, 255) * y_scale


def ort_run(model: bytes, x: np.ndarray, unfused: bool) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if unfused else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def layer(seed: int = 0, cin: int = 32, cout: int = 16, bits: int = 8):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, 3, 3))
    qmax = 127 if bits == 8 else 64
    w_scale = np.abs(w).reshape(cout, -1).max(1) / qmax
    w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -qmax, qmax)
    x_scale = 4.0 / 255
    x = rng.uniform(0, 4.0, (1, cin, 8, 8)).astype(np.float32)
    x[0, :, 2:5, 2:5] = 4.0  # a patch of full-scale activations: where saturation bites
    x_q = np.clip(np.round(x / x_scale), 0, 255)
    return w_q, w_scale, x, x_q, x_scale


# -- the kernels ----------------------------------------------------------------------------------------

def test_isa_detection_names_the_int8_kernel():
    assert int8_kernel({"avx2", "fma"}, "x86_64") == "x86-avx2"
    assert int8_kernel({"avx2", "avx512f", "avx512_vnni"}, "x86_64") == "x86-vnni"
    assert int8_kernel({"avx2", "avx_vnni"}, "x86_64") == "x86-vnni"
    assert int8_kernel({"asimd", "asimddp"}, "aarch64") == "arm"
    line = isa_line()
    assert isa_summary()["cpu"] in line and ("VNNI" in line or "ARM" in line or "int8: other" in line)


def test_arm_is_named_by_its_own_features_and_emulation_is_said():
    """Under qemu-user, /proc/cpuinfo is the x86 host's: the Arm features come from the auxiliary vector
    (AT_HWCAP / AT_HWCAP2), and the CPU is called emulated (deploy/arm-check prints this line)."""
    import struct

    from alnett_edge.machine import arm_hwcaps, cpu_model, emulated, simd

    x86_info = "vendor_id : AuthenticAMD\nmodel name : AMD EPYC 9B14\nflags : fpu avx2 avx512f avx512_vnni\n"
    pi_info = "processor : 0\nFeatures : fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    assert emulated(x86_info, "aarch64") and not emulated(x86_info, "x86_64") and not emulated(pi_info, "aarch64")
    auxv = struct.pack("<QQQQQQ", 16, (1 << 0) | (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0)  # fp asimd asimddp | i8mm
    assert arm_hwcaps(auxv) == {"fp", "asimd", "asimddp", "i8mm"}
    assert simd(arm_hwcaps(auxv), "aarch64") == ("NEON+dotprod+i8mm", 16)
    assert simd({"avx512f", "avx512_vnni"}, "aarch64")[0].startswith("NEON")  # never an x86 name on Arm
    assert int8_kernel(arm_hwcaps(auxv), "aarch64") == "arm"
    if emulated():
        assert cpu_model().startswith("emulated aarch64")
    else:
        assert not cpu_model().startswith("emulated")


def test_saturating_emulation_is_what_this_cpus_kernels_compute():
    """8-bit weights: the AVX2 emulation saturates (so it differs from exact); ONNX Runtime's real
    kernels here equal the emulation of *this* CPU's arithmetic, picked from the detected ISA."""
    w_q, w_scale, x, x_q, x_scale = layer(bits=8)
    y_scale = 0.5
    model = qdq_conv(w_q, w_scale, x_scale, y_scale)
    exact = requantize(conv_int32(x_q, w_q, False), x_scale, w_scale, y_scale)
    avx2 = requantize(conv_int32(x_q, w_q, True), x_scale, w_scale, y_scale)
    assert np.abs(avx2 - exact).max() > 1.0  # the inputs do make 8-bit pairs saturate
    reference = ort_run(model, x, unfused=True)
    assert np.abs(reference - exact).max() <= y_scale + 1e-6  # unfused QDQ = exact arithmetic (1 LSB of rounding)
    kernels = ort_run(model, x, unfused=False)
    # x86 without VNNI computes the saturating pairs; VNNI x86 and ARM accumulate exactly
    expected = avx2 if HERE == "x86-avx2" else exact
    assert np.abs(kernels - expected).max() <= y_scale + 1e-6, HERE


def test_static_check_is_sound_and_fitted_weights_cannot_saturate():
    w_q, w_scale, x, x_q, x_scale = layer(seed=1, bits=8)
    proto = onnx.load_from_string(qdq_conv(w_q, w_scale, x_scale, 0.5))
    (row,) = check_saturation(proto)
    assert not row.safe and row.worst_pair > INT16_MAX and row.kernel == "gemm" and row.activation == "uint8"
    # worst case for the emulated kernel: every activation at 255 — the check's bound is reached
    full = np.full_like(x_q, 255)
    assert not np.array_equal(conv_int32(full, w_q, True), conv_int32(full, w_q, False))

    fixed = copy.deepcopy(proto)
    assert fit_weights_to_int16_pairs(fixed) == 1 and fit_weights_to_int16_pairs(fixed) == 0  # idempotent
    (row7,) = check_saturation(fixed)
    assert row7.safe and row7.worst_pair <= ACT_BYTE * PAIR_BUDGET <= INT16_MAX
    inits = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    w7 = inits["wq"].astype(np.int64)
    for acts in (full, x_q):  # the proof: for any activations, the saturating kernel is exact now
        assert np.array_equal(conv_int32(acts, w7, True), conv_int32(acts, w7, False))
    # and the fitted layer still computes the same function (within the coarser weight step)
    before = ort_run(proto.SerializeToString(), x, unfused=True)
    after_ref = ort_run(fixed.SerializeToString(), x, unfused=True)
    after_kernels = ort_run(fixed.SerializeToString(), x, unfused=False)
    assert np.abs(after_kernels - after_ref).max() <= 0.5 + 1e-6  # at most 1 LSB: same arithmetic on any CPU
    assert np.abs(after_ref - before).max() / np.abs(before).max() < 0.05


def test_depthwise_int8_is_exact_on_every_cpu():
    """The check exempts depthwise convolutions (ONNX Runtime's depthwise kernel accumulates in int32):
    8-bit depthwise weights give the unfused reference's result on this machine's real kernels."""
    rng = np.random.default_rng(2)
    c = 64
    w = rng.standard_normal((c, 1, 3, 3))
    w_scale = np.abs(w).reshape(c, -1).max(1) / 127
    w_q = np.round(w / w_scale[:, None, None, None])
    x = rng.uniform(0, 4.0, (1, c, 8, 8)).astype(np.float32)
    for act in ("u8", "s8"):
        model = qdq_conv(w_q, w_scale, 4.0 / 255, 0.05, act, group=c)
        (row,) = check_saturation(onnx.load_from_string(model))
        assert row.kernel == "depthwise" and row.safe and row.weight_max == 127
        assert np.abs(ort_run(model, x, False) - ort_run(model, x, True)).max() <= 0.05 + 1e-6, act


# -- every int8 artifact the exporter builds ------------------------------------------------------------

def test_x86_int8_artifacts_are_proven_exact_on_every_x86(x86_bundle, trained, qat_asym, tmp_path):
    from alnett_edge.export.exporter import export_bundle

    m = x86_bundle
    int8 = next(a for a in m["artifacts"] + m["rejected_by_gate"] if a["precision"] == "int8")
    sat = int8["extra"]["int8_saturation"]
    assert sat["exact_on_x86_without_vnni"] and sat["int8_layers"] > 5 and sat["depthwise_layers"] > 0
    assert int8["extra"]["fit_avx2"] and sat["max_weight"] <= 127
    g = int8["gate"]
    assert set(g["arithmetic"]) == {"kernels", "reference"} and g["measured_on"] == isa_line() and g["proxy"] is None
    # proven exact: this CPU's kernels and the exact arithmetic give the same gate, whatever the CPU
    assert g["arithmetic"]["kernels"]["agreement"] == g["arithmetic"]["reference"]["agreement"]
    assert m["gate_host"]["int8_kernel"] == HERE and m["gate_host"]["isa"] == isa_line()
    # from a QAT checkpoint (8-bit weights) too: GEMM weights re-quantized to fit
    _, result = trained
    q = export_bundle(result.best, "x86-cpu", tmp_path / "q", precision="int8", qat=qat_asym, allow_drop=100,
                      min_agreement=0.0)
    art = q["artifacts"][0]
    assert art["extra"]["source"] == "qat" and art["extra"]["int8_saturation"]["exact_on_x86_without_vnni"]
    proto = onnx.load(str(tmp_path / "q" / art["file"]))
    assert all(c.safe for c in check_saturation(proto))
    golden = np.load(tmp_path / "q" / "golden" / "inputs.npy")
    sessions = [open_session(tmp_path / "q" / art["file"], unfused=u) for u in (False, True)]
    kernels, reference = (s.run(None, {"input": golden})[0] for s in sessions)
    assert np.abs(kernels - reference).max() < 0.1 and (kernels.argmax(1) == reference.argmax(1)).all()


def test_vnni_profile_keeps_eight_bit_weights_and_says_so(trained, tmp_path):
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    m = export_bundle(result.best, "x86-vnni", tmp_path / "v", precision="int8", allow_drop=100, min_agreement=0.0)
    sat = m["artifacts"][0]["extra"]["int8_saturation"]
    assert not m["artifacts"][0]["extra"]["fit_avx2"] and sat["max_weight"] == 127
    assert not sat["exact_on_x86_without_vnni"] and sat["layers_that_may_saturate"]


def test_tensorrt_int8_keeps_tensorrt_rules_and_is_a_proxy_gate(trained, qat_sym, tmp_path):
    from alnett_edge.calibrate.ptq import onnx_zero_points
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    # alnett-tiny on 64 px has near-tie cells (p ~ 0.49) that any int8 arithmetic may flip: lenient gate
    m = export_bundle(result.best, "jetson", tmp_path / "j", qat=qat_sym, allow_drop=5.0, min_agreement=0.95)
    art = m["artifacts"][0]
    path = tmp_path / "j" / art["file"]
    assert set(onnx_zero_points(path)) == {0}  # symmetric, zero-point 0
    assert not art["extra"]["fit_avx2"] and art["extra"]["int8_saturation"]["max_weight"] == 127
    g = art["gate"]
    assert list(g["arithmetic"]) == ["reference"] and "TensorRT" in g["proxy"]
    # the bundle carries an fp32 reference for on-device re-gating (no fp32 artifact in it)
    assert m["reference"] == {"file": "reference.fp32.onnx", "precision": "fp32", "added": True}
    assert "reference.fp32.onnx" in load_bundle(tmp_path / "j").manifest["files"]


def test_rpi_int8_from_calibration_alone(trained, easy_cells, tmp_path):
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    m = export_bundle(result.best, "rpi5", tmp_path / "r", precision="int8", calib_images=easy_cells / "fold_0",
                      allow_drop=10.0, min_agreement=0.9)
    t = {a["file"]: a for a in m["artifacts"]}["model.int8.tflite"]
    assert t["extra"]["source"] == "ptq" and t["extra"]["calibration_images"] > 50
    assert t["input_dtype"] == "int8" and t["gate"]["passed"] and t["gate"]["agreement"] >= 0.9
    assert t["bytes"] < {a["file"]: a for a in m["artifacts"]}["model.fp32.onnx"]["bytes"]  # int8 weights


# -- on the device: re-gate with labelled images ------------------------------------------------------

def test_verify_gate_images_regates_here_and_fails_loudly(x86_bundle, easy_cells, tmp_path):
    from alnett_edge.runtime.verify import VerifyFailed, check_regated, regate_bundle

    root = x86_bundle["bundle"]
    rows, info = regate_bundle(root, easy_cells / "fold_2")
    assert info["reference"].startswith("model.fp32.onnx") and info["machine"] == isa_line()
    fp32 = next(r for r in rows if r.precision == "fp32")
    assert fp32.passed and fp32.agreement == 1.0 and fp32.drop_points["accuracy"] == 0.0
    assert all(r.n == info["n"] > 50 for r in rows)
    check_regated(rows, root)
    strict, _ = regate_bundle(root, easy_cells / "fold_2", min_agreement=1.01)
    with pytest.raises(VerifyFailed, match="accuracy gate FAILED on this machine"):
        check_regated(strict, root)

    out = tmp_path / "v.json"
    res = cli("verify", root, "--gate-images", easy_cells / "fold_2", "--json", out)
    assert res.exit_code == 0, res.output
    assert "accuracy gate here" in res.output and f"machine: {isa_line()}" in res.output
    saved = json.loads(out.read_text())
    assert saved["gate"]["n"] == info["n"] and {r["artifact"] for r in saved["gate"]["rows"]} == {r.artifact for r in rows}
    one_line_error(cli("verify", root, "--gate-images", tmp_path / "nope"), "not found")


def test_opening_a_qat_export_prints_no_native_error(qat_sym_onnx, capfd):
    """A PT2E (QAT) export used to make ONNX Runtime print a raw '[E:onnxruntime:...] Attempt to replace
    the existing tensor' line (from a session option it cannot apply to such graphs) before a retry."""
    from alnett_edge.runtime.loader import onnx_card
    from alnett_edge.runtime.ort_backend import OrtRuntime

    path = qat_sym_onnx
    card = onnx_card(path)
    capfd.readouterr()
    with OrtRuntime(path, card, {"precision": "int8"}, provider="cpu") as rt:
        assert rt.infer(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 2)
    captured = capfd.readouterr()
    assert "onnxruntime" not in captured.err and "[E:" not in captured.err, captured.err
    assert not Path(path).with_suffix(".onnx.data").exists()
