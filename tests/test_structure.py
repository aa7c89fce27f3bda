"""Issue 15's promise: a new runtime backend, export format and capture source are one file plus one
table entry each (``tests/plugins/``, loaded through ``$ALNETT_EDGE_PLUGINS``), and export with its
gate, verify, predict, bench and the daemon all run through them with nothing else edited."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import cli

PLUGINS = Path(__file__).parent / "plugins"


def test_a_new_backend_format_and_source_run_everywhere(trained, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", f"{PLUGINS}:{__import__('os').environ.get('PYTHONPATH', '')}")  # bench workers
    monkeypatch.setenv("ALNETT_EDGE_PLUGINS", "fake_backend,fake_format,fake_source")
    from alnett_edge.plugins import load_plugins

    load_plugins()
    import fake_backend

    _, result = trained
    out = tmp_path / "fake"
    res = cli("export", result.best, "--target", PLUGINS / "fake-device.toml", "--out", out)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a["format"] == "fakeonnx"]
    assert art["runtime"] == "fakert" and art["gate"]["passed"] and manifest["selected"] == "model.fake"
    assert manifest["target"]["runtimes"] == ["fakert"]

    before = fake_backend.FakeRuntime.calls
    res = cli("verify", out)
    assert res.exit_code == 0 and "fakert" in res.output, res.output
    cells = tmp_path / "cells"
    cells.mkdir()
    size = manifest.get("card", {}).get("training", {}).get("source_size")
    side = int(size.split("x")[0]) if size else 64
    cv2.imwrite(str(cells / "a.png"), np.full((side, side, 3), 120, np.uint8))
    res = cli("predict", out, cells, "--any-size")
    assert res.exit_code == 0 and "on fakert" in res.stderr, res.output
    assert fake_backend.FakeRuntime.calls > before  # the fake ran, in this process

    report = tmp_path / "b.json"
    res = cli("bench", out, "--runs", "3", "--warmup", "1", "--batch", "1", "--json", report, "--profile-ops")
    assert res.exit_code == 0, res.output
    (row,) = json.loads(report.read_text())["rows"]
    assert row["backend"] == "fakert" and "batches" in row, row  # in a worker process: the plugin loaded there too
    assert "the fake's own profiler" in res.output

    db = tmp_path / "d.db"
    res = cli("daemon", "--bundle", out, "--source", "fakecam:3", "--max-frames", "4", "--port", "0", "--db", db)
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(db)
    assert con.execute("SELECT source, frames FROM sessions").fetchone() == ("fakecam:3", 4)
    res = cli("daemon", "--bundle", out, "--source", "nonsense:1", "--port", "0", "--db", db)
    assert res.exit_code == 2 and "fakecam:SEED" in res.stderr  # the registry, plugins included, is the list


def test_owners_close_idempotently_and_a_bad_source_opens_nothing(x86_bundle, tmp_path, monkeypatch):
    import alnett_edge.daemon.service as service
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.http import HttpServer
    from alnett_edge.daemon.service import Daemon
    from alnett_edge.daemon.sinks import Recorder, SqliteSink
    from alnett_edge.errors import ConfigError

    opened = []
    real = service.open_runtime
    monkeypatch.setattr(service, "open_runtime", lambda *a, **k: opened.append(a) or real(*a, **k))  # a spy
    cfg = {"source": {"spec": "nosuchkind:1"}, "runtime": {"bundle": str(x86_bundle["bundle"])},
           "sinks": {"db": str(tmp_path / "a.db")}, "http": {"port": 0}}
    with pytest.raises(ConfigError, match="cannot tell what source"):
        Daemon(build_config(cfg))
    assert opened == []  # the runtime is opened last: a bad source leaks nothing
    cfg["source"] = {"spec": "synthetic:1", "width": 320, "height": 240}
    with Daemon(build_config(cfg)) as d:
        assert len(opened) == 1
    d.close()  # closed by the with-block already: a second close is a no-op
    assert d.runtime._closed
    rec = Recorder(SqliteSink(tmp_path / "b.db"), [], 10)
    rec.open({"started": 0.0, "source": "s", "bundle": "b", "model_sha256": "x"})
    assert rec.close({}) is None and rec.close({}) is None
    server = HttpServer(None, "127.0.0.1", 0)
    server.stop()  # never started: returns at once (shutdown() would wait forever)
    server.stop()


def test_class_folders_by_alias_are_found_and_export_takes_a_layout(tmp_path):
    from alnett_edge.data.sources import detect_layout, load_samples

    for name in ("blast", "normal"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), np.full((32, 32, 3), 100, np.uint8))
    assert detect_layout(tmp_path) == "folders"
    assert sorted(s.label for s in load_samples(tmp_path)) == [0, 1]
    res = cli("export", "--help")
    assert "--layout" in res.output


def test_the_models_own_training_images_calibrate_whatever_their_size(tmp_path):
    """A few training cells of another size trained fine; int8 calibration from the training split must
    take them too (it once said "pass --any-size", an option export does not have). A user's own
    calibration folder is checked by the one size rule: sides within the training images' widened by
    half (a 60x64 cell next to 64x64 ones is a cell; a 640x480 frame is the wrong folder)."""
    from alnett_edge.calibrate.reader import load_calibration_set, training_calibration_set
    from alnett_edge.card import InputSpec, ModelCard
    from alnett_edge.errors import DataError

    rng = np.random.default_rng(0)
    for cls in ("all", "hem"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            h = 60 if i % 4 == 0 else 64  # one in four is 60x64 instead of 64x64
            cv2.imwrite(str(tmp_path / "data" / cls / f"{i}.png"), rng.integers(0, 255, (h, 64, 3), dtype=np.uint8))
    card = ModelCard("alnett-tiny", {}, InputSpec(size=(32, 32)),
                     training={"data": str(tmp_path / "data"), "source_size": "64x64",
                               "config": {"layout": "folders", "val_fraction": 0.25, "seed": 0}})
    calib = training_calibration_set(card, limit=50)
    assert len(calib.inputs) == 18 and calib.inputs.shape[1:] == (3, 32, 32)  # the training side: 3/4 of 24
    assert len(load_calibration_set(tmp_path / "data", card).inputs) == 24
    cv2.imwrite(str(tmp_path / "data" / "all" / "frame.png"), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"is 480x640, outside the sides .* \(64 px; 43-96 accepted"):
        load_calibration_set(tmp_path / "data", card)


def test_bench_anchor_rows_give_ratios_from_the_same_run(x86_bundle, trained, tmp_path):
    """Issue 14: a plain ONNX classifier (no card) is timed with the same options; ratios come out."""
    import onnx
    from onnx import TensorProto, helper

    # a tiny card-less classifier with the anchors' interface: input N x 3 x 64 x 64 -> logits N x 2
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3 * 64 * 64], np.full(2 * 3 * 64 * 64, 1e-4, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)],
        "anchor", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [w])
    anchor = tmp_path / "tiny_anchor.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(anchor))
    report = tmp_path / "b.json"
    res = cli("bench", x86_bundle["bundle"], "--anchor", anchor, "--runs", "5", "--warmup", "1", "--json", report)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    rows = {r["artifact"]: r for r in data["rows"]}
    assert rows["tiny_anchor.onnx"]["anchor"] and "accuracy" not in rows["tiny_anchor.onnx"]
    assert "agreement" not in rows["tiny_anchor.onnx"] and rows["model.fp32.onnx"]["agreement"] == 1.0
    (ratio,) = [a for a in data["anchor_ratios"] if a["artifact"] == "model.fp32.onnx"]
    expected = rows["model.fp32.onnx"]["batches"]["1"]["p50_ms"] / rows["tiny_anchor.onnx"]["batches"]["1"]["p50_ms"]
    assert ratio["p50_ratio"]["1"] == pytest.approx(expected, rel=1e-2)
    assert "vs tiny_anchor.onnx on onnxruntime" in res.output and "memory (onnxruntime)" in res.output
    # --rounds: every row again in turn; percentiles pool the rounds, ratios are taken round by round
    res = cli("bench", x86_bundle["bundle"], "--anchor", anchor, "--batch", "1", "--runs", "5", "--warmup", "1",
              "--rounds", "3", "--reference", trained[1].best, "--json", report)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    rows = {r["artifact"]: r["batches"]["1"] for r in data["rows"] if "batches" in r}
    assert all(len(b["round_p50_ms"]) == 3 and b["runs"] == len(b["samples_ms"]) == 15 for b in rows.values())
    (ratio,) = [a for a in data["anchor_ratios"] if a["artifact"] == "model.fp32.onnx"]
    per_round = np.array(rows["model.fp32.onnx"]["round_p50_ms"]) / np.array(rows["tiny_anchor.onnx"]["round_p50_ms"])
    assert ratio["p50_ratio"]["1"] == pytest.approx(np.median(per_round), rel=1e-2)
    assert ratio["p50_ratio_range"]["1"] == pytest.approx([per_round.min(), per_round.max()], rel=1e-2)
    assert "median of 3 rounds (range)" in res.output
    # and every deployed row against PyTorch eager on its checkpoint, round by round too
    eager = {e["artifact"]: e for e in data["eager_ratios"]}
    per_round = np.array(rows["model.fp32.onnx"]["round_p50_ms"]) / np.array(rows["best.safetensors"]["round_p50_ms"])
    assert eager["model.fp32.onnx"]["p50_ratio"]["1"] == pytest.approx(np.median(per_round), rel=1e-2)
    assert "tiny_anchor.onnx" not in eager and "best.safetensors" not in eager
    assert "/ PyTorch eager on the checkpoint it came from, same run; median of 3 rounds" in res.output
    assert "  model.fp32.onnx on onnxruntime vs best.safetensors: b1 " in res.output
    assert cli("bench", x86_bundle["bundle"], "--rounds", "0").exit_code == 2
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    res = cli("bench", x86_bundle["bundle"], "--anchor", bad, "--runs", "2")
    assert res.exit_code == 2 and "is not a loadable model (ONNX Runtime cannot load" in res.stderr
    res = cli("bench", x86_bundle["bundle"], "--anchor", tmp_path / "b.json", "--runs", "2")
    assert res.exit_code == 2 and "--anchor takes a model file (.onnx, .tflite)" in res.stderr


def test_bench_takes_a_tflite_anchor_and_times_it_on_litert(rpi_bundle, tmp_path):
    """Issue 14: a card-less .tflite (here the bundle's own int8 model, copied out) is an anchor on
    LiteRT, the backend whose table entry opens .tflite files; timed beside the same model from its
    bundle, the ratio comes out near 1."""
    import shutil

    (art,) = [a for a in rpi_bundle["artifacts"] if a["format"] == "tflite" and a["precision"] == "int8"]
    anchor = tmp_path / "same_model.tflite"
    shutil.copy(Path(rpi_bundle["bundle"]) / art["file"], anchor)
    report = tmp_path / "b.json"
    res = cli("bench", rpi_bundle["bundle"], "--anchor", anchor, "--backend", "litert", "--batch", "1,2",
              "--runs", "30", "--warmup", "3", "--json", report)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    rows = {r["artifact"]: r for r in data["rows"] if "batches" in r}
    assert rows["same_model.tflite"]["anchor"] and rows["same_model.tflite"]["backend"] == "litert"
    assert rows["same_model.tflite"]["precision"] == "int8"  # read from the file's tensors: no card says it
    (ratio,) = [a for a in data["anchor_ratios"] if a["artifact"] == art["file"]]
    assert 0.5 < ratio["p50_ratio"]["1"] < 2.0, ratio  # the same model, the same interpreter options
    assert "vs same_model.tflite on litert" in res.output
    # LiteRT timed batch 2 both ways in its first calls and says which it kept, on which times
    assert f"batching, {art['file']} (litert): b2 as " in res.output and rows[art["file"]]["batching"].startswith("b2 as ")
