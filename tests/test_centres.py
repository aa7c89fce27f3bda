"""The learned nucleus-centre detector (issue 34's second route, in the product): the shipped model seeding
the rule-based detector's nuclei on generated clusters and on real frames of optics it never saw, the
trainer and fine-tune from the command line, and every refusal one line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, cli, one_line_error, require_shared


def _crowded(tmp_path, size: int, n: int = 3):
    from alnett_edge.data.synth import CrowdSpec, generate_crowded

    spec = CrowdSpec(um_per_px=0.25, clusters=1, cluster_size=(size, size), singles=1, smudges=1)
    generate_crowded(tmp_path / f"c{size}", n, spec, seed=1000)
    return tmp_path / f"c{size}"


@pytest.mark.parametrize("size", [2, 4, 6, 8])
def test_builtin_centres_split_generated_clusters(tmp_path, size):
    """Every cell of a touching cluster found once (measured 1.000 at every size 2-8 over 10 fields
    each, precision >= 0.98; the rule-based detector alone 0.751 over sizes 1-8)."""
    from alnett_edge.vision.detector import DetectorConfig
    from alnett_edge.vision.fieldeval import field_eval
    from alnett_edge.vision.optics import OpticsConfig

    rep, _ = field_eval(None, _crowded(tmp_path, size), DetectorConfig(centres="builtin"),
                        optics=OpticsConfig(um_per_px=0.25))
    row = rep["by_cluster"][str(size)]
    assert row["cells"] == 3 * size
    assert row["found_once"] >= 0.95 and row["precision"] >= 0.9, row


def test_builtin_centres_on_smartphone_optics_never_trained_on():
    """wbc-smartphone ``valid/`` (a smartphone on an eyepiece; the builtin model saw ``train/`` only):
    measured recall 0.957, precision 0.914, found once 0.963 (the rule-based detector 0.931 / 0.837)."""
    from alnett_edge.vision.detector import DetectorConfig
    from alnett_edge.vision.fieldeval import field_eval

    rep, _ = field_eval(None, require_shared(SHARED / "wbc-smartphone" / "valid"), DetectorConfig(centres="builtin"))
    assert rep["recall"] >= 0.95 and rep["precision"] >= 0.88 and rep["found_once"] >= 0.95, rep


def test_centre_detector_trains_fine_tunes_and_runs_from_the_command_line(tmp_path):
    from alnett_edge.model.centres import load_centres
    from alnett_edge.vision.centres import CentreFinder

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    res = cli("detector", "train", "--crowded", "2", "--steps", "3", "--arch", "light", "--out", a)
    assert res.exit_code == 0 and "wrote" in res.output, res.output
    assert a.is_file() and a.with_suffix(".safetensors").is_file()
    finder = CentreFinder(a)
    assert finder.card.arch == "light" and finder.card.training["steps"] == 3 and finder.threshold == 0.3
    folder = _crowded(tmp_path, 3, 2)
    res = cli("detector", "train", "--init", a, "--data", folder, "--crowded", "0", "--steps", "2",
              "--threshold", "0.5", "--out", b)
    assert res.exit_code == 0, res.output
    net_a, _ = load_centres(a)
    net_b, card_b = load_centres(b)
    assert card_b.arch == "light" and card_b.threshold == 0.5 and card_b.training["init"] == str(a)
    # the gate: the threshold chosen on marked frames kept out, written into both files' cards
    gated = tmp_path / "g.onnx"
    res = cli("detector", "train", "--init", a, "--data", folder, "--crowded", "0", "--steps", "1",
              "--gate", _crowded(tmp_path, 4, 1), "--um-per-px", "0.25", "--out", gated)
    assert res.exit_code == 0 and "gate on" in res.output, res.output
    rows = CentreFinder(gated).card.training["gate"]["rows"]
    assert len(rows) == 9 and all(r["cells"] == 5 for r in rows)
    chosen = load_centres(gated)[1].threshold
    assert chosen == CentreFinder(gated).threshold and chosen in [r["threshold"] for r in rows]
    if CentreFinder(gated).card.training["gate"]["met"]:  # the most cells found once within 0.10 extra
        ok = [r for r in rows if r["extra"] <= 0.10]
        assert next(r for r in rows if r["threshold"] == chosen)["found_once"] == max(r["found_once"] for r in ok)
    changed = [k for k, v in net_a.state_dict().items() if v.is_floating_point()
               and not np.allclose(v.numpy(), net_b.state_dict()[k].numpy())]
    assert changed  # the fine-tune moved the weights
    res = cli("field-eval", folder, "--um-per-px", "0.25", "--centres", b, "--json", tmp_path / "r.json")
    assert res.exit_code == 0 and "found once" in res.output, res.output


def test_centre_detector_refusals_are_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from alnett_edge.card import CentreCard
    from alnett_edge.daemon.config import build_config
    from alnett_edge.errors import AlnettError, CheckpointError, ConfigError, DataError
    from alnett_edge.vision.centres import CentreFinder

    folder = _crowded(tmp_path, 2, 1)
    res = cli("field-eval", folder, "--um-per-px", "0.25", "--centres", tmp_path / "nope.onnx")
    one_line_error(res, "nope.onnx", "not found")
    (tmp_path / "m.tflite").write_bytes(b"x" * 64)
    one_line_error(cli("field-eval", folder, "--um-per-px", "0.25", "--centres", tmp_path / "m.tflite"), ".onnx file")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model" * 20)
    one_line_error(cli("field-eval", folder, "--um-per-px", "0.25", "--centres", tmp_path / "junk.onnx"), "junk.onnx")
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "id.onnx"))
    one_line_error(cli("field-eval", folder, "--um-per-px", "0.25", "--centres", tmp_path / "id.onnx"),
                   "no centre card")
    out = tmp_path / "x.onnx"
    one_line_error(cli("detector", "train", "--crowded", "0", "--out", out), "nothing to train on")
    one_line_error(cli("detector", "train", "--data", folder, "--weight", "1", "--weight", "2", "--out", out),
                   "--weight")
    one_line_error(cli("detector", "train", "--crowded", "1", "--out", tmp_path / "x.txt"), ".onnx")
    one_line_error(cli("detector", "train", "--init", tmp_path / "id.onnx", "--out", out), "weights not found")
    one_line_error(cli("detector", "train", "--arch", "huge", "--crowded", "1", "--out", out), "--arch")
    for bad in ({"centres": 5}, {"centre_threshold": 1.5}, {"centres": str(tmp_path / "gone.onnx")}):
        with pytest.raises(ConfigError):
            build_config({"detector": bad}, {"source": {"spec": "x"}, "runtime": {"bundle": "x"}})
    with pytest.raises(CheckpointError, match="no centre card"):  # the daemon opens it at start, not after calibration
        build_config({"detector": {"centres": str(tmp_path / "id.onnx")}}, {"source": {"spec": "x"},
                                                                            "runtime": {"bundle": "x"}})
    with pytest.raises(CheckpointError):
        CentreCard.from_json('{"schema": 1, "threshold": 2}')
    with pytest.raises(CheckpointError):
        CentreCard.from_json('{"schema": 9}')
    finder = CentreFinder("builtin")
    with pytest.raises(DataError):
        finder.find(np.zeros((40, 40), np.uint8), 0.3)
    with pytest.raises(AlnettError):
        finder.find(np.zeros((40, 40, 3), np.uint8), 0.0)
    assert finder.find(np.full((2, 2, 3), 200, np.uint8), 0.3) == []  # smaller than a pixel of the network


def test_the_daemon_runs_with_learned_centres(x86_bundle, tmp_path):
    """``[detector] centres = "builtin"`` in the daemon: a crowded video's cells found, classified and counted."""
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon
    from alnett_edge.data.synth import CrowdSpec, write_smear_video

    video = tmp_path / "crowded.avi"
    write_smear_video(video, 6, seed=3, crowded=CrowdSpec())
    cfg = build_config({}, {"source": {"spec": f"video:{video}", "queue": 64}, "runtime": {"bundle": x86_bundle["bundle"]},
                            "optics": {"um_per_px": CrowdSpec().um_per_px}, "detector": {"centres": "builtin"},
                            "sinks": {"db": str(tmp_path / "c.db")}, "http": {"port": 0}})
    summary = Daemon(cfg).run()
    assert summary["frames_processed"] == 6 and summary["session"]["cells"] > 0, summary


class _GivenCentres:
    """Stands in for the network's output only: the centres it would give (the detector is what is tested)."""

    def __init__(self, centres):
        self.centres = centres

    def find(self, rgb, um_per_px):
        return self.centres


def test_a_learned_centre_on_a_smudge_cell_is_left_to_the_smudge_look():
    """On the hand-counted all-fields fields, centres given at every marked cell and smudge cell: a centre
    on a pale, spread-out patch (less of the nucleus threshold's stain than the smallest nucleus) is not
    made a white cell where the smudge look finds a smudge cell under it, and each marked white cell
    still gives one cell. Measured with the fine-tuned detectors on the unseen halves: smudge cells
    boxed as white cells 14 -> 8 of 28, found as smudge cells 8 -> 15 (docs/engineering/crowded.md)."""
    from pathlib import Path

    from alnett_edge.vision.annotations import read_truth
    from alnett_edge.vision.centres import Centre
    from alnett_edge.vision.detector import SMUDGE, CellDetector, DetectorConfig, mask_holds
    from alnett_edge.vision.fieldeval import folder_scale, load_image
    from alnett_edge.vision.optics import OpticsConfig

    counts = Path(__file__).parent / "data" / "all-fields-dense-counts.csv"
    _, truths = read_truth(counts, require_shared(SHARED / "all-fields"))
    scale = {}
    handed = kept = 0
    for t in truths:
        if t.image.parent not in scale:
            scale[t.image.parent] = folder_scale([u.image for u in truths if u.image.parent == t.image.parent],
                                                 OpticsConfig())[0]
        um, rgb = scale[t.image.parent], load_image(t.image, what="frame")
        rule = CellDetector(DetectorConfig(), um).detect(rgb)
        det = CellDetector(DetectorConfig(), um)
        det.finder = _GivenCentres([Centre(x, y, 10.0, 10.0, 0.9) for x, y in [*t.centres, *t.smudges]])
        found = det.detect(rgb)
        cells = [d for d in found if d.kind != SMUDGE]
        for sx, sy in t.smudges:
            if any(d.kind == SMUDGE and mask_holds(d, sx, sy) for d in rule):  # the smudge look finds it alone
                handed += 1
                kept += any(d.kind == SMUDGE and mask_holds(d, sx, sy) for d in found) and \
                    not any(abs(d.centre[0] - sx) < 1 and abs(d.centre[1] - sy) < 1 for d in cells)
        for x, y in t.centres:  # every marked white cell's centre still gives its one cell
            assert sum(abs(d.centre[0] - x) < 1 and abs(d.centre[1] - y) < 1 for d in cells) <= 1
    assert handed >= 8 and kept / handed >= 0.75, (kept, handed)


def test_the_centre_detector_in_int8_from_the_command_line(tmp_path):
    """``detector quantize``: the shipped detector in int8 (QDQ), calibrated on frames prepared as the
    runtime prepares them, exact on AVX2 CPUs without VNNI (no int16 pair can saturate), scored beside
    fp32 with ``--check``, and opened by the daemon's detector like any other centre model."""
    import onnx

    from alnett_edge.calibrate.int8_safety import check_saturation, saturation_summary
    from alnett_edge.vision.centres import CentreFinder
    from alnett_edge.vision.detector import DetectorConfig
    from alnett_edge.vision.fieldeval import field_eval
    from alnett_edge.vision.optics import OpticsConfig

    calib, check, q = _crowded(tmp_path, 3, 3), _crowded(tmp_path, 5, 3), tmp_path / "c8.onnx"
    res = cli("detector", "quantize", "builtin", "--calib", calib, "--um-per-px", "0.25", "--check", check, "--out", q)
    assert res.exit_code == 0 and "calibrated on 3 frames" in res.output, res.output
    assert "fp32 on" in res.output and "int8 on" in res.output
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(q)).graph.node}
    assert saturation_summary(check_saturation(str(q)))["exact_on_x86_without_vnni"]
    card = CentreFinder(q).card
    int8 = card.training["int8"]
    assert int8["frames"] == 3 and int8["fit_avx2"] and int8["check"]["int8"]["found_once"] >= 0.9, int8
    assert card.um_per_px == CentreFinder("builtin").card.um_per_px  # the contract is the fp32 model's
    rep, _ = field_eval(None, check, DetectorConfig(centres=str(q)), optics=OpticsConfig(um_per_px=0.25))
    assert rep["by_cluster"]["5"]["found_once"] >= 0.9, rep["by_cluster"]
    one_line_error(cli("detector", "quantize", str(q), "--calib", calib, "--out", q), "would overwrite")
    one_line_error(cli("detector", "quantize", "builtin", "--calib", tmp_path / "none", "--out", tmp_path / "x.onnx"),
                   "none")
    one_line_error(cli("detector", "quantize", "builtin", "--calib", calib, "--out", tmp_path / "x.txt"), ".onnx")
