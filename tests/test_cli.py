import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from alnett_edge.cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_model_info_and_list():
    res = run("model", "info", "alnett-s")
    assert res.exit_code == 0, res.output
    assert "clusters.4.pool" in res.output and "MACs" in res.output
    macs = float(res.output.split("MACs:")[1].split("M")[0])
    assert 30 < macs <= 250  # alnett-s: 42 M since it sums its branches
    res = run("model", "list")
    assert res.exit_code == 0 and "alnett-tiny" in res.output


def test_data_synth_inspect_train_evaluate(tmp_path):
    data = tmp_path / "cells"
    res = run("data", "synth", "--out", data, "--n", 60, "--size", 64, "--format", "png", "--cells-per-patient", 6,
              "--smears", 2)
    assert res.exit_code == 0, res.output
    assert "wrote 60 cells (40 all, 20 hem" in res.output and (data / "smears" / "Annotations").is_dir()
    res = run("data", "inspect", data)
    assert res.exit_code == 0 and "fold:fold_2" in res.output
    res = run("train", "--data", data, "--out", tmp_path / "run", "--model", "alnett-tiny", "--epochs", 2,
              "--workers", 0, "--dilations", "1,2", "--fusion", "sum")
    assert res.exit_code == 0, res.output
    assert "best epoch" in res.output
    res = run("evaluate", tmp_path / "run" / "best.safetensors", "--data", data, "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["metrics"]["n"] == 60 and f"{report['metrics']['accuracy']:.4f}" in res.output
    res = run("model", "info", tmp_path / "run" / "best.safetensors")
    assert res.exit_code == 0 and "alnett-tiny" in res.output


def test_demo_runs_its_stages(tmp_path):
    res = run("demo", "--out", tmp_path, "--n-cells", 80, "--epochs", 2)
    assert res.exit_code == 0, res.output
    for stage in ("synth", "train", "evaluate", "export", "daemon", "crowded"):
        assert f"done {stage}" in res.output
    assert (tmp_path / "train" / "best.safetensors").is_file()
    assert "frame_to_decision" in res.output and (tmp_path / "daemon" / "cells.db").is_file()
    assert "blast_ratio=estimated" in res.output  # predicted vs true blast ratio, printed by the demo
    assert (tmp_path / "eval" / "report.json").is_file()
    # the slide report of the daemon's run, printed, with its cell gallery filled (the crops are kept)
    html = tmp_path / "daemon" / "report" / "report.html"
    assert f"slide report (open it in a browser): {html.resolve()}" in res.output
    assert html.is_file() and (tmp_path / "daemon" / "report" / "cells.png").is_file()
    assert any((tmp_path / "daemon" / "crops").glob("*.jpg"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["model", "info", "vgg19"], "unknown model 'vgg19'"),
        (["train", "--data", "{tmp}/missing"], "dataset not found"),
        (["train", "--data", "{tmp}", "--model", "alnett-tiny"], "no known dataset layout"),
        (["train", "--data", "{tmp}", "--balance", "magic"], "balance must be one of"),
        (["train", "--data", "{tmp}", "--dilations", "1,x"], "--dilations must be comma-separated"),
        (["train", "--data", "{tmp}", "--colour-jitter", "12"], "--colour-jitter must be HUE,SAT"),
        (["train", "--data", "{tmp}", "--colour-jitter", "12,1.5"], "needs 0 <= HUE <= 90 degrees and 0 <= SAT < 1"),
        (["train", "--data", "{tmp}", "--stain", "lab"], "--stain must be auto or one of none, cell, opponent"),
        (["evaluate", "{tmp}/none.safetensors", "--data", "{tmp}"], "checkpoint not found"),
        (["data", "synth", "--out", "{tmp}/s", "--difficulty", "2"], "difficulty must be in [0, 1]"),
        (["demo", "--out", "{tmp}/d", "--stages", "synth,fly"], "unknown stage"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, args, message):
    res = run(*[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert "Traceback" not in res.output


def test_error_exit_and_debug_traceback_in_a_real_process(tmp_path):
    cmd = [sys.executable, "-m", "alnett_edge", "evaluate", str(tmp_path / "x.safetensors"), "--data", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "ALNETT_EDGE_DEBUG": ""})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "checkpoint not found" in proc.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "ALNETT_EDGE_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_compression_commands(trained, tmp_path):
    cfg, result = trained
    res = run("prune", result.best, "--data", cfg.data, "--out", tmp_path / "p0", "--ratio", 0.9,
              "--finetune-epochs", 0, "--round-to", 1, "--budget", 0)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "no pruned checkpoint: stage 1 (" in res.output and "more than the 0-point budget" in res.output
    assert not (tmp_path / "p0" / "pruned.safetensors").exists()
    res = run("prune", result.best, "--data", cfg.data, "--out", tmp_path / "p", "--ratio", 0.4,
              "--finetune-epochs", 0, "--importance", "l2", "--round-to", 1, "--budget", 100)
    assert res.exit_code == 0, res.output
    assert "pruning: MACs x0.6" in res.output and (tmp_path / "p" / "pruned.safetensors").is_file()
    from alnett_edge.model.to_onnx import export_onnx
    from alnett_edge.model import load_checkpoint

    model, card = load_checkpoint(tmp_path / "p" / "pruned.safetensors")
    onnx_path = export_onnx(model, card, tmp_path / "pruned.onnx")
    res = run("calibrate", "--model", onnx_path, "--images", f"{cfg.data}/fold_0", "--num", 40,
              "--eval-data", f"{cfg.data}/fold_2", "--method", "percentile")
    assert res.exit_code == 0, res.output
    assert "PTQ int8" in res.output and "percentile (ORT)" in res.output and "only 40 calibration images" in res.output
    assert (tmp_path / "pruned.int8-symmetric-percentile.onnx").is_file()
    res = run("qat", result.best, "--data", cfg.data, "--out", tmp_path / "q", "--epochs", 0, "--scheme", "asymmetric")
    assert res.exit_code == 0, res.output
    verdict = json.loads((tmp_path / "q" / "qat-asymmetric_report.json").read_text())["gate_on_val"]
    assert ("export gate on the validation split: " + ("passes" if verdict["passed"] else "FAILS")) in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "{best}", "--data", "{data}", "--ratio", "1.2"], "--ratio must be in (0, 1)"),
        (["prune", "{foreign}", "--data", "{data}"], "no alnett-edge model card"),
        (["qat", "{best}", "--data", "{data}", "--scheme", "int4"], "unknown quantization scheme"),
        (["calibrate", "--model", "{tmp}/none.onnx", "--images", "{data}"], "ONNX model not found"),
    ],
)
def test_compression_bad_inputs(trained, tmp_path, args, message):
    from safetensors.torch import save_file
    import torch

    cfg, result = trained
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    res = run(*[a.format(best=result.best, data=cfg.data, tmp=tmp_path, foreign=tmp_path / "foreign.safetensors")
                for a in args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output


def test_devices_and_trt_lint_commands(tmp_path):
    res = run("devices")
    assert res.exit_code == 0 and "jetson-orin-nano" in res.output and "jetson -> jetson-orin-nano" in res.output
    res = run("devices", "jetson")
    assert res.exit_code == 0 and "--target jetson means jetson-orin-nano" in res.output
    res = run("devices", "tpu")
    assert res.exit_code == 2 and "unknown target 'tpu'" in res.output
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    res = run("trt-lint", tmp_path / "junk.onnx")
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output


def test_export_command_and_its_errors(trained, tmp_path):
    cfg, result = trained
    res = run("export", result.best, "--target", "x86", "--out", tmp_path / "b", "--precision", "fp32")
    assert res.exit_code == 0, res.output
    assert "model.fp32.onnx" in res.output and "pass" in res.output and (tmp_path / "b" / "manifest.json").is_file()
    (tmp_path / "b" / "card.json").write_text("{}")
    res = run("build-engine", tmp_path / "b")
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: bundle file card.json does not match its sha256 in the manifest (tampered or truncated)"]
    res = run("export", result.best, "--target", "jetson-nano", "--precision", "int8", "--out", tmp_path / "n")
    assert res.exit_code == 2 and "jetson-nano cannot run int8" in res.output and len(res.output.strip().splitlines()) == 1
    res = run("export", result.best, "--target", "pi-zero")
    assert res.exit_code == 2 and "unknown target 'pi-zero'" in res.output
    res = run("export", result.best, "--target", "jetson", "--precision", "fp16", "--out", tmp_path / "j")
    assert res.exit_code == 0, res.output
    assert "--target jetson means jetson-orin-nano" in res.output
    res = run("build-engine", tmp_path / "j")
    assert res.exit_code == 2 and "TensorRT is not installed" in res.output
