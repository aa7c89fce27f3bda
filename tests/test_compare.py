"""``alnett-edge compare`` (issue 35): two tiny runs give the table in its three forms; a second call
reuses the runs; a run made with other settings is refused; bad --models are one line."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import cli, one_line_error

from alnett_edge.compare.compare import CompareConfig, compare
from alnett_edge.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_cells(tmp_path_factory):
    from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset

    root = tmp_path_factory.mktemp("cmp") / "cells"
    generate_cnmc_dataset(root, SynthSpec(n_cells=80, size=64, difficulty=0.1, fmt="png", cells_per_patient=8, seed=5))
    return root


def test_compare_two_tiny_runs_and_resume(tiny_cells, tmp_path, caplog):
    cfg = CompareConfig(data=str(tiny_cells), models=("mobilenet_v3_small", "alnett-tiny"), out=str(tmp_path),
                        folds=2, epochs=1, input_size=64, workers=0, batches=(1, 2), runs=5, rounds=1)
    rep = compare(cfg, progress=False)
    assert rep["reference"] == "alnett-tiny"  # the first ALNett asked, wherever it stands
    rows = {e["model"]: e for e in rep["models"]}
    assert list(rows) == ["mobilenet_v3_small", "alnett-tiny"]
    ref, mnv3 = rows["alnett-tiny"], rows["mobilenet_v3_small"]
    assert ref["vs_ref"]["params"] == 1.0 and mnv3["vs_ref"]["params"] > 100  # 1.5 M against 8.6 k
    assert mnv3["vs_ref"]["macs"] == round(mnv3["macs"] / ref["macs"], 3)
    for e in rows.values():
        assert 0 <= e["cv"]["accuracy"]["mean"] <= 1 and e["fp32_bytes"] > 0 and e["export"]["status"] == "ok"
        lat = e["latency"]["onnxruntime"]
        assert lat["p50_ms"]["1"] > 0 and lat["p50_ms"]["2"] > 0 and lat["vs_eager"]["1"] > 0
    assert ref["latency"]["onnxruntime"]["vs_ref"]["1"] == 1.0
    assert (tmp_path / "alnett-tiny" / "fold_1" / "best.safetensors").is_file()
    assert not list(tmp_path.glob("*/fold_*/last.*"))  # resume state of finished runs removed
    md = (tmp_path / "compare.md").read_text()
    assert "| `mobilenet_v3_small` |" in md and "| `alnett-tiny` |" in md and rep["machine"]["isa"] in md
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "compare.json").read_text())["reference"] == "alnett-tiny"
    # a second call reuses both runs and both bundles; only the timing runs again
    stamps = {m: (tmp_path / m / "cv_report.json").stat().st_mtime_ns for m in rows}
    with caplog.at_level(logging.INFO, logger="alnett_edge.compare.compare"):
        again = compare(cfg, progress=False)
    assert {m: (tmp_path / m / "cv_report.json").stat().st_mtime_ns for m in rows} == stamps
    assert sum("already run" in r.getMessage() for r in caplog.records) == 2
    assert [e["cv"] for e in again["models"]] == [e["cv"] for e in rep["models"]]
    with pytest.raises(ConfigError, match=r"was run with other settings \(epochs 1 -> 2\)"):
        compare(CompareConfig(**{**cfg.__dict__, "epochs": 2}), progress=False)


@pytest.mark.parametrize("models, message", [("alnett-tiny", "at least two models"),
                                             ("alnett-tiny,resnet18", "unknown model 'resnet18'"),
                                             ("alnett-tiny,alnett-tiny", "names a model twice")])
def test_compare_bad_models_are_one_line(tmp_path, models, message):
    one_line_error(cli("compare", "--data", tmp_path, "--models", models, "--out", tmp_path / "c"), message)


@pytest.mark.parametrize("args, message", [(["--colour-jitter", "12"], "--colour-jitter must be HUE,SAT"),
                                           (["--colour-jitter", "12,1.5"], "needs 0 <= HUE <= 90 degrees"),
                                           (["--stain", "lab"], "--stain must be auto or one of")])
def test_compare_bad_recipe_is_one_line_before_training(tmp_path, args, message):
    one_line_error(cli("compare", "--data", tmp_path, "--models", "alnett-tiny,mobilenet_v3_small", *args,
                       "--out", tmp_path / "c"), message)
    assert not (tmp_path / "c" / "alnett-tiny").exists()  # refused before the first model's run
