"""``alnett-edge harvest`` (issue 32): training cells from a microscope's own frames, through the daemon's
vision path, on real all-fields fields and synthetic smears."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED, cli, one_line_error, require_shared

from alnett_edge.data.sources import load_samples
from alnett_edge.data.splits import make_split
from alnett_edge.data.synth import SMEAR_UM_PER_PX, synth_smear

ALL_FIELDS = SHARED / "all-fields"
CLASSES = ("--classes", "hem=Benign", "--classes", "all=Early,Pre,Pro")


def _fields(tmp_path: Path, per_class: dict[str, int]) -> Path:
    """Class folders of links to the first real fields of each class (the images stay in ../shared)."""
    root = require_shared(ALL_FIELDS)
    src = tmp_path / "fields"
    for cls, n in per_class.items():
        (src / cls).mkdir(parents=True)
        for f in sorted((root / cls).iterdir())[:n] if n else ():
            (src / cls / f.name).symlink_to(f)
    return src


def _manifest(dataset: Path) -> list[dict[str, str]]:
    with open(dataset / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_harvest_of_real_fields_by_class_folder(tmp_path):
    src, out = _fields(tmp_path, {"Benign": 12, "Pre": 12}), tmp_path / "ds"
    res = cli("harvest", src, "--out", out, "--labels-from-folders", *CLASSES, "--json", tmp_path / "h.json",
              "--sheet", tmp_path / "sheet.png")
    assert res.exit_code == 0, res.output
    rep, meta, rows = json.loads((tmp_path / "h.json").read_text()), json.loads((out / "harvest.json").read_text()), \
        _manifest(out)
    sessions = {s["session"]: s for s in rep["sessions"]}
    assert set(sessions) == {"Benign", "Pre"} and all(s["frames"] == 12 for s in sessions.values())
    # every detection is written or abstained, and each written cell is one manifest row
    for s in sessions.values():
        assert s["written"] + sum(s["abstained"].values()) == s["detections"] and s["written"] > 12
    assert len(rows) == rep["written"] == sum(s["written"] for s in sessions.values())
    # the pixel size is estimated per session (folder), and the two differ on this set
    assert meta["sessions"]["Benign"]["um_per_px"] == sessions["Benign"]["um_per_px"]
    assert abs(sessions["Benign"]["um_per_px"] - sessions["Pre"]["um_per_px"]) > 0.01
    canvas = meta["canvas_um"]
    assert 15 <= canvas <= 45, canvas
    for r in rows:
        img = cv2.imread(str(out / r["filename"]))
        side = canvas / float(r["um_per_px"])  # scale-true: the canvas in µm at the session's pixel size
        assert img is not None and img.shape[0] == img.shape[1] and abs(img.shape[0] - side) <= 1, (img.shape, side)
        assert r["weak_label"] == {"Benign": "hem", "Pre": "all"}[r["field_class"]] and r["label"] == ""
        # a class folder holding its fields directly is no slide: the split group is the field
        assert r["patient_id"] == f"{r['session']}/{Path(r['source']).name}"
    assert len({r["cell_id"] for r in rows}) == len(rows)
    assert cv2.imread(str(tmp_path / "sheet.png")).shape[1] > 500

    # a person labels one cell; a re-run writes nothing again and keeps the label
    rows[0]["label"] = "all"
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = cli("harvest", src, "--out", out, "--labels-from-folders", *CLASSES, "--json", tmp_path / "h2.json")
    assert again.exit_code == 0, again.output
    rep2, rows2 = json.loads((tmp_path / "h2.json").read_text()), _manifest(out)
    assert rep2["written"] == 0 and sum(s["already"] for s in rep2["sessions"]) == len(rows)
    assert rows2 == rows


def test_train_reads_a_harvest_with_groups_on_one_side_only(tmp_path):
    src, out = _fields(tmp_path, {"Benign": 8, "Early": 8}), tmp_path / "ds"
    assert cli("harvest", src, "--out", out, "--labels-from-folders", *CLASSES).exit_code == 0
    rows = _manifest(out)
    rows[0]["label"] = "hem" if rows[0]["weak_label"] == "all" else "all"  # a person's label beats the weak one
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    samples = load_samples(out)
    assert len(samples) == len(rows)
    by_path = {s.path.name: s for s in samples}
    assert by_path[Path(rows[0]["filename"]).name].label_name == rows[0]["label"]
    assert sum(s.label_name == "all" for s in samples) == sum(r["weak_label"] == "all" for r in rows[1:]) + \
        (rows[0]["label"] == "all")
    split = make_split(samples, 0.25, seed=0)
    train_groups, val_groups = {s.patient_id for s in split.train}, {s.patient_id for s in split.val}
    assert train_groups and val_groups and not train_groups & val_groups


def test_class_folders_that_match_no_class_are_named(tmp_path):
    src = _fields(tmp_path, {"Benign": 2, "Pre": 2, "Weird": 0})
    (src / "Weird" / "x.jpg").write_bytes((src / "Pre" / next((src / "Pre").iterdir()).name).read_bytes())
    res = cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", *CLASSES)
    one_line_error(res, "Weird")
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders"), "Pre", "Weird", "--classes")
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", "--classes", "all"),
                   "CLASS=FOLDER")
    # a class that is not all/hem: a model of other classes, which needs its blast classes named
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", "--classes", "blue=Pre"),
                   "blue", "--blast")
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", "--classes", "blue=Pre",
                       "--classes", "red=Benign", "--blast", "green"), "--blast green", "blue, red")
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", "--classes", "blue=Pre",
                       "--classes", "red=Benign", "--blast", "blue,red"), "not all")
    one_line_error(cli("harvest", src, "--out", tmp_path / "ds", "--labels-from-folders", "--classes", "Blue Cells=Pre"),
                   "class name")
    assert not (tmp_path / "ds").exists()  # nothing written before the sources are understood


def test_harvest_refuses_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(cli("harvest", tmp_path / "empty", "--out", tmp_path / "ds"), "no frames")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "f.png"), cv2.cvtColor(synth_smear(np.random.default_rng(0)).image, cv2.COLOR_RGB2BGR))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("mine")
    one_line_error(cli("harvest", frames, "--out", other, "--um-per-px", SMEAR_UM_PER_PX), "not a harvest dataset")
    assert (other / "thesis.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    one_line_error(cli("harvest", "v4l2:0", "--out", tmp_path / "ds"), "--max-frames or --duration")
    one_line_error(cli("harvest", frames, "--out", tmp_path / "ds", "--group-by", "slide"), "--group-by")
    one_line_error(cli("harvest", frames, "--out", tmp_path / "ds", "--labels-from-folders"), "class is a folder")

    ds = tmp_path / "ds"
    assert cli("harvest", frames, "--out", ds, "--um-per-px", SMEAR_UM_PER_PX).exit_code == 0
    good = (ds / "manifest.csv").read_text()
    for nonsense, needle in (("just,two\n1,2\n", "not a harvest manifest"),
                             (good + "a,b\n", "manifest.csv:"),
                             (good.replace(good.splitlines()[1].split(",")[0], "", 1).rsplit("\n", 2)[0] + "\n"
                              + ",,,,,,,,,,,,,,,,,\n", "without cell_id")):
        (ds / "manifest.csv").write_text(nonsense)
        one_line_error(cli("harvest", frames, "--out", ds, "--um-per-px", SMEAR_UM_PER_PX), needle)
    (ds / "manifest.csv").write_bytes(b"\xff\xfe\x00garbage")
    one_line_error(cli("harvest", frames, "--out", ds, "--um-per-px", SMEAR_UM_PER_PX), "manifest.csv")
    (ds / "harvest.json").write_text("{not json")
    one_line_error(cli("harvest", frames, "--out", ds, "--um-per-px", SMEAR_UM_PER_PX), "harvest.json")
    (ds / "harvest.json").write_text('{"canvas_um": -3}')
    one_line_error(cli("harvest", frames, "--out", ds, "--um-per-px", SMEAR_UM_PER_PX), "canvas_um")


def test_a_video_gives_each_cell_once(tmp_path):
    """A camera held on one field for 10 frames (a small stage drift): each white cell is one row."""
    smear = synth_smear(np.random.default_rng(7), n_wbc=(3, 3))
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (600, 440))
    for i in range(10):
        writer.write(cv2.cvtColor(smear.image[2 + i % 3 : 442 + i % 3, 4 + i : 604 + i], cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "ds"
    res = cli("harvest", f"video:{video}", "--out", out, "--um-per-px", SMEAR_UM_PER_PX, "--json", tmp_path / "h.json")
    assert res.exit_code == 0, res.output
    rep, rows = json.loads((tmp_path / "h.json").read_text()), _manifest(out)
    whole = [o for o in smear.objects if o.name == "WBC" and o.box[0] > 12 and o.box[1] > 6 and o.box[2] < 600
             and o.box[3] < 440]
    assert rep["sessions"][0]["frames"] == 10 and rep["sessions"][0]["detections"] >= 10 * len(whole)
    assert len(rows) == len(whole) and len({r["track"] for r in rows}) == len(rows), rows
    again = cli("harvest", f"video:{video}", "--out", out, "--um-per-px", SMEAR_UM_PER_PX)
    assert again.exit_code == 0 and len(_manifest(out)) == len(rows)


def test_a_bundle_records_its_probabilities(x86_bundle, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        img = synth_smear(np.random.default_rng(10 + i), n_wbc=(2, 3)).image
        cv2.imwrite(str(frames / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "ds"
    res = cli("harvest", frames, "--out", out, "--um-per-px", SMEAR_UM_PER_PX, "--bundle", x86_bundle["bundle"])
    assert res.exit_code == 0, res.output
    rows = _manifest(out)
    assert rows
    manifest = json.loads((Path(x86_bundle["bundle"]) / "manifest.json").read_text())
    for r in rows:  # every cell classified at the bundle's scale, its distance from the training cells recorded
        assert r["model_sha256"] in manifest["files"].values()
        assert abs(float(r["prob_all"]) + float(r["prob_hem"]) - 1) < 1e-4 and float(r["appearance_distance"]) >= 0


@pytest.mark.parametrize("bad", ["0", "500"])
def test_canvas_bounds(tmp_path, bad):
    one_line_error(cli("harvest", tmp_path, "--out", tmp_path / "ds", "--canvas-um", bad), "--canvas-um")


# -- fine-tuning on a harvest, and fields decided from their cells -------------------------------------

def test_field_threshold_and_decision():
    from alnett_edge.metrics import cell_score, decide_field, field_rule, field_scores, fit_field_threshold

    labels, fractions = np.array([0, 0, 0, 1, 1, 1]), np.array([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
    t = fit_field_threshold(labels, fractions)
    assert 0.3 < t < 0.5 and field_rule(labels, fractions, "x")["accuracy"] == 1.0
    assert fit_field_threshold(np.array([0, 1, 0, 1]), np.array([0.2, 0.2, 0.2, 0.9])) == pytest.approx(0.55)
    assert decide_field({}, 3, 4) is None and decide_field({"threshold": t}, 0, 0) is None
    assert decide_field({"threshold": t}, 3, 4)["all"] and not decide_field({"threshold": t}, 1, 4)["all"]
    keys, lab, fr, n = field_scores([1, 1, 0, 0, 0], [0.9, 0.2, 0.1, 0.6, 0.7], ["a", "a", "b", "b", "b"],
                                    "blast_fraction")
    assert keys == ["a", "b"] and lab.tolist() == [1, 0] and fr.tolist() == [0.5, pytest.approx(2 / 3)]
    assert n.tolist() == [2, 3]
    # the mean log-odds keeps what the fraction throws away: two fields of one fraction, told apart
    _, _, lo, _ = field_scores([1, 1, 1, 1], [0.51, 0.49, 0.99, 0.01], ["a", "a", "b", "b"])
    _, _, fr2, _ = field_scores([1, 1, 1, 1], [0.51, 0.49, 0.99, 0.01], ["a", "a", "b", "b"], "blast_fraction")
    assert fr2[0] == fr2[1] == 0.5 and lo[0] == pytest.approx(0.0, abs=1e-9) and lo[1] == pytest.approx(0.0, abs=1e-9)
    _, _, lo, _ = field_scores([1, 1, 1, 1], [0.9, 0.6, 0.9, 0.4], ["a", "a", "b", "b"])
    assert lo[0] > lo[1] > 0
    assert cell_score(1.0) == pytest.approx(np.log(1e4), rel=1e-3)  # clipped: one saturated cell cannot outvote all
    assert fit_field_threshold(np.array([0, 0, 1, 1]), np.array([-3.0, -1.0, 0.5, 2.0])) == pytest.approx(-0.25)
    with pytest.raises(ValueError):
        cell_score(0.5, "vote")


@pytest.fixture(scope="module")
def smear_fields(tmp_path_factory):
    """Class folders of synthetic smear fields: all/ (every white cell a blast) and hem/ (none)."""
    root = tmp_path_factory.mktemp("fields")
    for cls, fraction in (("all", 1.0), ("hem", 0.0)):
        (root / cls).mkdir()
        for i in range(14):
            smear = synth_smear(np.random.default_rng([int(fraction), i]), 480, 360, n_wbc=(2, 3), blast_fraction=fraction)
            cv2.imwrite(str(root / cls / f"{cls}{i:02d}.png"), cv2.cvtColor(smear.image, cv2.COLOR_RGB2BGR))
    return root


def fine_tune(trained, dataset: Path, out: Path, epochs: int):
    """``train --init`` the shared trained checkpoint on ``dataset`` (first cluster frozen): the models and
    cards before and after."""
    from alnett_edge.model.checkpoint import load_checkpoint

    _, result = trained
    before_model, before = load_checkpoint(result.best)
    res = cli("train", "--init", result.best, "--data", dataset, "--out", out, "--epochs", epochs, "--freeze", 1,
              "--workers", 0, "--val-fraction", 0.3)
    assert res.exit_code == 0, res.output
    return (before_model, before, *load_checkpoint(out / "best.safetensors"))


def assert_stem_kept(before, after) -> None:
    """The frozen stem's convolution weights are the checkpoint's, bit for bit."""
    for name, p in before.stem.state_dict().items():
        if name.endswith("weight") and p.dim() > 1:
            assert np.array_equal(p.numpy(), after.stem.state_dict()[name].numpy()), name


def test_fine_tune_from_a_checkpoint_keeps_its_preprocessing(trained, smear_fields, tmp_path):
    from alnett_edge.model.checkpoint import read_card

    ds = tmp_path / "ds"
    assert cli("harvest", smear_fields, "--out", ds, "--labels-from-folders", "--um-per-px", SMEAR_UM_PER_PX).exit_code == 0
    before_model, before, after_model, after = fine_tune(trained, ds, tmp_path / "ft", epochs=2)
    _, result = trained
    canvas = json.loads((ds / "harvest.json").read_text())["canvas_um"]
    assert after.input.size == before.input.size and after.input.mean == before.input.mean  # preprocessing kept
    assert after.input.canvas_um == canvas != before.input.canvas_um  # the harvest's canvas
    assert after.appearance and after.appearance != before.appearance  # the new cells' look
    assert after.training["finetune"]["scale"]["method"].startswith("the harvest's canvas")
    assert_stem_kept(before_model, after_model)  # frozen weights unchanged; later ones moved
    head = before_model.head.weight.detach().numpy()
    assert not np.allclose(head, after_model.head.weight.detach().numpy())
    rule = after.field_decision  # fitted on the validation fields (grouped by field: auto)
    assert rule["score"] == "mean_log_odds" and rule["fields"] >= 2, rule
    one_line_error(cli("train", "--data", ds, "--out", tmp_path / "x", "--freeze", 1), "--freeze")
    one_line_error(cli("train", "--data", ds, "--out", tmp_path / "x", "--init", result.best, "--freeze", 9), "clusters")

    # the field path decides the same kind of fields with that rule, and field-eval scores it
    rep_path = tmp_path / "fields.json"
    res = cli("field-eval", tmp_path / "ft" / "best.safetensors", smear_fields, "--fields", "--um-per-px",
              SMEAR_UM_PER_PX, "--json", rep_path)
    assert res.exit_code == 0, res.output
    rep = json.loads(rep_path.read_text())
    assert rep["fields"] == 28 and rep["all_fields"] + rep["benign_fields"] == rep["decided"]
    assert rep["decided"] + rep["undecided"] == 28 and rep["threshold"] == read_card(tmp_path / "ft" / "best.safetensors").field_decision["threshold"]
    for f in rep["per_field"]:
        assert f["label"] == int(f["field"].startswith("all/"))
        if f["all"] is not None:
            assert f["all"] == (f["score"] > rep["threshold"])
    assert rep["accuracy"] is not None and "field decisions: 28 fields" in res.output
    one_line_error(cli("field-eval", result.best, smear_fields, "--fields", "--um-per-px", SMEAR_UM_PER_PX),
                   "no field decision")
    one_line_error(cli("field-eval", "--frames", smear_fields, "--fields"), "give the bundle")


def test_the_session_is_decided_by_the_cards_field_rule():
    from alnett_edge.card import ModelCard
    from alnett_edge.vision.differential import Aggregator

    card = ModelCard("alnett-tiny", {}, field_decision={"score": "blast_fraction", "threshold": 0.3})
    agg = Aggregator.for_card(card)
    for called in ("all", "hem", "hem", "hem"):
        agg.add(called, None, called)
    d = agg.snapshot()["decision"]
    assert d == {"all": False, "score": "blast_fraction", "value": 0.25, "threshold": 0.3, "cells": 4}
    agg.add(None, "low confidence", "all")  # classified, below the confidence to report: still a call
    assert agg.snapshot()["decision"]["all"] and agg.snapshot()["decision"]["cells"] == 5
    assert Aggregator.for_card(ModelCard("alnett-tiny", {})).snapshot()["decision"] is None
    # a card with the mean log-odds rule: the cells' probabilities decide, not their calls alone
    agg = Aggregator.for_card(ModelCard("alnett-tiny", {}, field_decision={"score": "mean_log_odds", "threshold": 0.0}))
    for p in (0.9, 0.45, 0.45):  # one confident blast, two cells just under 0.5: ALL on the mean log-odds
        agg.add("all" if p >= 0.5 else "hem", None, "all" if p >= 0.5 else "hem", 1.0, p)
    d = agg.snapshot()["decision"]
    assert d["all"] and d["score"] == "mean_log_odds" and d["value"] == pytest.approx(
        (np.log(9) + 2 * np.log(0.45 / 0.55)) / 3, abs=1e-4)


def test_an_unreadable_frame_is_skipped_and_named(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        img = synth_smear(np.random.default_rng(20 + i), n_wbc=(2, 2)).image
        cv2.imwrite(str(frames / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (frames / "broken.jpg").write_bytes(b"not a jpeg at all" * 10)
    res = cli("harvest", frames, "--out", tmp_path / "ds", "--um-per-px", SMEAR_UM_PER_PX, "--json", tmp_path / "h.json")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "h.json").read_text())["sessions"][0]
    assert rep["frames"] == 2 and rep["unreadable"] == [str(frames / "broken.jpg")] and rep["written"] >= 2
    assert "1 unreadable frame(s) skipped" in res.stderr and "Traceback" not in res.output


def test_mil_loss_pushes_only_an_all_fields_most_blast_like_cell():
    import torch

    from alnett_edge.train.loop import MILLoss

    # cells 0-2: an ALL field (bag 0); 3-4: a benign field (bag 1); 5: a cell a person labelled all
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, -3.0], [0.0, 1.0], [0.0, -2.0], [0.0, 0.5]],
                          requires_grad=True)
    target = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, -1]])
    loss = MILLoss(blast=[1], weight=None)(logits, target)
    loss.backward()
    g = logits.grad[:, 1]
    assert g[0] < 0 and g[1] == 0 and g[2] == 0  # only the most blast-like cell of the ALL field is pushed
    assert g[3] > 0 and g[4] > 0 and g[5] < 0  # every benign cell away from blast; a labelled cell as labelled
    lsm = torch.log_softmax(logits.detach(), 1)
    expected = -(3 * lsm[0, 1] + lsm[3, 0] + lsm[4, 0] + lsm[5, 1]) / 6  # the bag counted once per cell
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bag_batches_keep_a_field_together():
    import torch

    from alnett_edge.train.dataset import BagBatchSampler

    bags = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, -1, 3])
    batches = list(BagBatchSampler(bags, 5, torch.Generator().manual_seed(1)))
    assert sorted(i for b in batches for i in b) == list(range(len(bags)))  # every cell once
    for b in batches:
        assert len(b) <= 5
        for bag in set(bags[b].tolist()) - {-1}:
            assert set(np.flatnonzero(bags == bag)) <= set(b)  # a field is never split


def test_train_with_mil_on_weak_labels(smear_fields, tmp_path):
    from alnett_edge.model.checkpoint import read_card

    ds = tmp_path / "ds"
    assert cli("harvest", smear_fields, "--out", ds, "--labels-from-folders", "--um-per-px", SMEAR_UM_PER_PX).exit_code == 0
    res = cli("train", "--data", ds, "--out", tmp_path / "mil", "-m", "alnett-tiny", "--input-size", 48, "--epochs", 2,
              "--workers", 0, "--val-fraction", 0.3, "--weak-labels", "mil")
    assert res.exit_code == 0, res.output
    card = read_card(tmp_path / "mil" / "best.safetensors")
    assert card.training["config"]["weak_labels"] == "mil" and card.field_decision["score"] == "mean_log_odds"
    one_line_error(cli("train", "--data", ds, "--out", tmp_path / "x", "--weak-labels", "guess"), "--weak-labels")
    one_line_error(cli("train", "--data", ds, "--out", tmp_path / "x", "--weak-labels", "mil", "--balance", "sampler"),
                   "whole fields")
