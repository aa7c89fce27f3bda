import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from alnett_edge.model import load_checkpoint, read_card
from alnett_edge.train.evaluate import evaluate_checkpoint
from alnett_edge.train.loop import TrainConfig, train


def test_short_training_learns_easy_synthetic_cells(trained):
    cfg, result = trained
    accs = [row["accuracy"] for row in result.history]
    assert len(result.history) == 12
    assert result.best_metrics["accuracy"] >= 0.85
    assert accs[-1] >= 0.85  # the final model, not only a lucky epoch
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    card = read_card(result.best)
    assert card.metrics["val"]["f1"] == pytest.approx(result.best_metrics["f1"])
    assert card.training["split"]["method"] == "fold:fold_2"
    assert card.training["classes_train"]["all"] > card.training["classes_train"]["hem"]
    cal = card.calibration  # temperature scaling fitted on the validation split of the best epoch
    assert cal["method"] == "temperature scaling" and cal["n"] == sum(card.training["classes_val"].values())
    assert 0.05 <= card.temperature == cal["temperature"] <= 20 and cal["nll_after"] <= cal["nll_before"] + 1e-6
    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert summary["best_epoch"] == result.best_epoch and summary["images"]["skipped"] == 0


def test_evaluate_reproduces_validation_metrics(trained, tmp_path):
    cfg, result = trained
    report = evaluate_checkpoint(result.best, cfg.data, tmp_path, split="val")
    assert report["metrics"]["accuracy"] == pytest.approx(result.best_metrics["accuracy"])
    assert report["metrics"]["confusion"] == result.best_metrics["confusion"]
    assert report["metrics"]["per_patient"]["patients"] == report["metrics"]["per_patient"]["n"] > 0
    for png in ("confusion.png", "roc.png", "reliability.png"):
        img = cv2.imread(str(tmp_path / png))
        assert img is not None and img.shape[0] > 100
    c = report["metrics"]["calibration"]  # the probabilities every runtime reports: at the card's temperature
    assert c["temperature"] == read_card(result.best).temperature and 0 <= c["ece"] <= 0.5
    assert sum(r["n"] for r in c["reliability"]) == report["metrics"]["n"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["predictions"]) == report["metrics"]["n"]


def test_resume_matches_an_uninterrupted_run(easy_cells, tmp_path):
    base = dict(data=str(easy_cells), variant="alnett-tiny", batch_size=32, workers=0, lr=5e-3, epochs=4)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **base), progress=False)
    first = train(TrainConfig(out=str(tmp_path / "split"), stop_after=2, **base), progress=False)
    assert [r["epoch"] for r in first.history] == [1, 2]
    resumed = train(TrainConfig(out=str(tmp_path / "split"), resume=True, **base), progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa: E731
    # Same batches, augmentations, dropout masks and schedule: identical losses, lr and metrics.
    assert strip(resumed.history) == strip(whole.history)
    a, _ = load_checkpoint(whole.last)
    b, _ = load_checkpoint(resumed.last)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_corrupt_image_is_counted_in_the_run_summary(tmp_path):
    from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset

    generate_cnmc_dataset(tmp_path / "d", SynthSpec(n_cells=40, size=48, fmt="png", cells_per_patient=5))
    victim = next((tmp_path / "d" / "fold_1" / "hem").glob("*.png"))
    victim.write_bytes(b"\x89PNG broken")
    result = train(TrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "o"), variant="alnett-tiny", epochs=1,
                               workers=0), progress=False)
    assert result.load_report["skipped"] == 1 and str(victim) in result.load_report["skipped_files"]
    assert read_card(result.best).training["skipped_images"] == 1


def test_workers_and_sampler_balance(easy_cells, tmp_path):
    result = train(TrainConfig(data=str(easy_cells), out=str(tmp_path), variant="alnett-tiny", epochs=1, workers=2,
                               balance="sampler"), progress=False)
    model, card = load_checkpoint(result.last)
    assert card.training["config"]["balance"] == "sampler" and result.history[0]["images_per_s"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_training_two_processes_gloo(easy_cells, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "alnett_edge", "train", "--data", str(easy_cells), "--out",
           str(tmp_path), "--model", "alnett-tiny", "--epochs", "2", "--workers", "0", "--device", "cpu",
           "--batch-size", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = read_card(tmp_path / "best.safetensors")
    assert card.training["world_size"] == 2
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    model, _ = load_checkpoint(tmp_path / "last.safetensors")
    assert np.isfinite(history[-1]["loss"])


def test_a_lucky_validation_spike_does_not_choose_the_epoch():
    """Issue 16: on a small validation split one epoch's F1 jumps (epoch 2 here) and early stopping on
    F1 keeps it; the smoothed validation loss keeps a later, steadily better epoch."""
    from alnett_edge.train.loop import selection_score

    f1 = [0.50, 0.93, 0.60, 0.70, 0.80, 0.85, 0.88, 0.90]
    nll = [0.69, 0.40, 0.66, 0.50, 0.44, 0.39, 0.37, 0.36]
    history = [{"epoch": i + 1, "f1": f, "val_nll": n} for i, (f, n) in enumerate(zip(f1, nll))]

    def kept(select):
        best, epoch = float("inf"), 0
        for i in range(len(history)):
            score = selection_score(select, history[: i + 1])
            if score < best:
                best, epoch = score, i + 1
        return epoch

    assert kept("f1") == 2 and kept("loss") == 8 and kept("last") == 8


def test_ema_weights_are_validated_and_kept_and_tta_is_recorded(easy_cells, tmp_path):
    """The kept model is the moving average (not the last raw weights), the whole schedule runs with
    ``select = "last"``, and the card's test-time augmentation is what validation applied: the
    runtime (a separate code path) reproduces the recorded validation figures from the checkpoint."""
    from alnett_edge.metrics import binary_metrics
    from alnett_edge.runtime import open_runtime
    from alnett_edge.train.dataset import load_split_datasets

    base = dict(data=str(easy_cells), variant="alnett-tiny", batch_size=32, workers=0, lr=5e-3, epochs=2,
                select="last", patience=1)
    runs = {e: train(TrainConfig(out=str(tmp_path / f"ema{e}"), ema_epochs=e, tta="flips", **base), progress=False)
            for e in (0.0, 1.0)}
    for e, r in runs.items():
        assert r.best_epoch == 2 and len(r.history) == 2  # "last": every epoch is kept in turn
        best, card = load_checkpoint(r.best)
        last, _ = load_checkpoint(r.last)
        same = [torch.equal(a, b) for (k, a), b in zip(best.state_dict().items(), last.state_dict().values())
                if k.endswith("weight")]
        assert all(same) if e == 0 else not any(same), e
        assert card.input.tta == "flips"
    r = runs[1.0]
    card = read_card(r.best)
    val = load_split_datasets(easy_cells, card.input, seed=0).val
    with open_runtime(r.best) as rt:
        prob = card.blast_probability(rt.infer(np.stack([val[i][0].numpy() for i in range(len(val))])))
    m = binary_metrics(val.labels, prob)
    assert m["roc_auc"] == pytest.approx(r.history[-1]["roc_auc"], abs=1e-6)
    assert m["accuracy"] == pytest.approx(r.history[-1]["accuracy"])


def test_colour_jitter_is_recorded_and_reaches_the_augmentation(trained, tmp_path):
    """``train --colour-jitter HUE,SAT`` (issue 32): off by default (the card records 0, 0), and a card
    that records it gives QAT's fine-tune the same augmentation (JSON lists back to a tuple)."""
    import dataclasses

    from alnett_edge.train.loop import TrainConfig, augment_config, finetune_config

    cfg, result = trained
    card = read_card(result.best)
    assert tuple(card.training["config"]["colour_jitter"]) == (0.0, 0.0)
    assert augment_config(cfg).hue == 0.0 and augment_config(dataclasses.replace(cfg, augment=False)) is None
    card.training = {**card.training, "config": {**card.training["config"], "colour_jitter": [12.0, 0.35]}}
    tuned = finetune_config(card, cfg.data, tmp_path, 1, 1e-3)
    assert tuned.colour_jitter == (12.0, 0.35)
    aug = augment_config(tuned)
    assert (aug.hue, aug.saturation) == (12.0, 0.35)
    with pytest.raises(Exception, match="colour-jitter"):
        TrainConfig(data=cfg.data, colour_jitter=(120.0, 0.2)).validate()
