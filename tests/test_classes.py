"""Any number of classes (issue 32, item 4): a harvest of all-fields' four folders as four classes, the
three B-ALL subtypes named as the blast classes; trained, fine-tuned onto them from a two-class card,
labelled, and read by the field path and the daemon's counts as blast or not."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import cli, one_line_error
from test_harvest import _fields, assert_stem_kept, fine_tune

from alnett_edge.card import ClassSet, ModelCard
from alnett_edge.errors import CheckpointError
from alnett_edge.model.checkpoint import load_checkpoint

FOUR = ("--classes", "benign=Benign", "--classes", "early=Early", "--classes", "pre=Pre", "--classes", "pro=Pro",
        "--blast", "early,pre,pro")
NAMES, BLAST = ("benign", "early", "pre", "pro"), ("early", "pre", "pro")


def _card() -> ModelCard:
    return ModelCard("alnett-tiny", {}, class_names=NAMES, blast_classes=BLAST)


@pytest.fixture(scope="module")
def four_class_harvest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("four")
    src, ds = _fields(tmp, {"Benign": 6, "Early": 6, "Pre": 6, "Pro": 6}), tmp / "ds"
    res = cli("harvest", src, "--out", ds, "--labels-from-folders", *FOUR)
    assert res.exit_code == 0, res.output
    return src, ds


def test_a_harvest_of_four_class_folders_keeps_four_classes(four_class_harvest, tmp_path):
    src, ds = four_class_harvest
    meta = json.loads((ds / "harvest.json").read_text())
    assert meta["class_names"] == list(NAMES) and meta["blast_classes"] == list(BLAST)
    with open(ds / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["weak_label"] for r in rows} == set(NAMES)
    assert all(r["weak_label"] == r["field_class"].lower() for r in rows)
    # the same folder harvested again as two classes is refused: its cells are of four
    one_line_error(cli("harvest", src, "--out", ds, "--labels-from-folders", "--classes", "hem=Benign",
                       "--classes", "all=Early,Pre,Pro"), "benign, early, pre, pro", "new folder")
    # the label view offers the four classes (keys 1-4) and orders by P(blast) over the three
    from alnett_edge.vision.labels import LabelBook

    book = LabelBook(ds, "ana")
    assert book.classes == NAMES and book.choices[-1] == "reject"


def test_training_on_four_classes_reports_blast_or_not_and_the_classes(four_class_harvest, tmp_path):
    from alnett_edge.runtime.loader import open_runtime

    _, ds = four_class_harvest
    out = tmp_path / "run"
    res = cli("train", "--data", ds, "--out", out, "-m", "alnett-tiny", "--input-size", 64, "--epochs", 2,
              "--workers", 0, "--val-fraction", 0.3)
    assert res.exit_code == 0, res.output
    model, card = load_checkpoint(out / "best.safetensors")
    assert card.class_names == NAMES and card.blast_names == BLAST and card.blast_columns == [1, 2, 3]
    assert model.head.out_features == 4
    val = card.metrics["val"]
    assert 0.0 <= val["class_accuracy"] <= 1.0 and 0.0 <= val["accuracy"] <= 1.0  # four classes, and blast or not
    assert card.field_decision["score"] == "mean_log_odds"
    # a runtime's P(blast) is the three subtypes' probabilities summed; predict's label is one of the four
    cells = sorted((ds / "cells").rglob("*.png"))[:6]
    with open_runtime(out / "best.safetensors") as rt:
        from alnett_edge.runtime.predict import classify_arrays, predict_files
        from alnett_edge.data.preprocess import load_image

        probs, _ = classify_arrays(rt, [load_image(p) for p in cells])
        preds = predict_files(rt, cells, any_size=True)
    assert probs.shape == (6, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for p, pred in zip(probs, preds):
        assert pred.label in NAMES and pred.prob_all == pytest.approx(float(p[1:].sum()), abs=1e-5)
    # field-eval scores ALL against benign fields (the folders mapped onto all / hem) with this model
    src = four_class_harvest[0]
    rep = tmp_path / "f.json"
    res = cli("field-eval", out / "best.safetensors", src, "--fields", "--classes", "hem=Benign",
              "--classes", "all=Early,Pre,Pro", "--json", rep)
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["fields"] == 24 and r["all_fields"] + r["benign_fields"] == r["decided"]
    one_line_error(cli("field-eval", out / "best.safetensors", src, "--fields", *FOUR[:8]), "all and hem")


def test_a_two_class_card_fine_tuned_onto_four_classes_gets_a_new_head(trained, four_class_harvest, tmp_path):
    _, ds = four_class_harvest
    _, before, model, card = fine_tune(trained, ds, tmp_path / "ft", epochs=1)
    assert before.class_names == ("hem", "all") and card.class_names == NAMES and card.blast_names == BLAST
    assert model.head.out_features == 4 and card.input.size == before.input.size  # preprocessing kept
    assert_stem_kept(load_checkpoint(trained[1].best)[0], model)  # the frozen stem is the two-class card's


def test_a_cell_of_several_blast_classes_is_called_and_counted_as_a_blast():
    from alnett_edge.vision.differential import Aggregator
    from alnett_edge.vision.path import verdict

    card = _card()
    # no single class above one half, but the three subtypes together are: a blast, labelled by its top subtype
    label, reason, (p_not, p_blast) = verdict(np.array([0.31, 0.10, 0.35, 0.24]), card, 0.6)
    assert (label, reason) == ("pre", None) and p_blast == pytest.approx(0.69) and p_not == pytest.approx(0.31)
    label, reason, _ = verdict(np.array([0.55, 0.15, 0.15, 0.15]), card, 0.6)  # 0.55 / 0.45: not sure enough
    assert (label, reason) == (None, "low confidence")
    assert verdict(np.array([0.9, 0.04, 0.03, 0.03]), card, 0.6)[0] == "benign"
    agg = Aggregator.for_card(card)
    for lab in ("pre", "early", "benign", "benign", "pro"):
        agg.add(lab, None, lab)
    snap = agg.snapshot()
    assert snap["blast_ratio"] == 0.6 and snap["blast_classes"] == list(BLAST) and snap["positive_class"] == "early+pre+pro"
    assert snap["blast_ratio_estimate"]["value"] == 0.6


def test_a_class_set_names_some_not_all_of_its_classes_as_blasts():
    assert ClassSet().binary and not ClassSet(NAMES, BLAST).binary
    for names, blast in ((NAMES, ()), (NAMES, NAMES), (NAMES, ("late",)), (("a",), ("a",))):
        with pytest.raises(CheckpointError):
            ClassSet(names, blast)
    with pytest.raises(CheckpointError, match="blast_classes"):
        ModelCard("alnett-tiny", {}, class_names=NAMES, blast_classes=("late",))
    card = ModelCard.from_json(_card().to_json())  # the blast classes travel with the card
    assert card.blast_names == BLAST and ModelCard("x", {}).blast_names == ("all",)  # a card from before: all


def test_a_four_class_harvest_edited_into_nonsense_is_one_line(four_class_harvest, tmp_path):
    import shutil

    _, ds = four_class_harvest
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(ds / "manifest.csv", bad / "manifest.csv")
    meta = json.loads((ds / "harvest.json").read_text())
    for edit, needle in (({"class_names": "benign"}, "must be lists"), ({"blast_classes": ["late"]}, "late"),
                         ({"blast_classes": list(NAMES)}, "not all")):
        (bad / "harvest.json").write_text(json.dumps({**meta, **edit}))
        one_line_error(cli("train", "--data", bad, "--out", tmp_path / "x", "--epochs", 1), "harvest.json", needle)
    (bad / "harvest.json").write_text(json.dumps(meta))
    rows = (bad / "manifest.csv").read_text().splitlines()
    head, first = rows[0].split(","), rows[1].split(",")
    first[head.index("label")] = "blue"
    (bad / "manifest.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    one_line_error(cli("train", "--data", bad, "--out", tmp_path / "x", "--epochs", 1), "unknown label 'blue'",
                   "benign, early, pre, pro")


def test_class_folders_map_onto_two_classes_by_alias_or_onto_named_classes():
    from alnett_edge.errors import ConfigError
    from alnett_edge.vision.harvest import class_mapping

    assert class_mapping(["1=Pre,Pro", "0=Benign"]) == ({"pre": "all", "pro": "all", "benign": "hem"}, ClassSet())
    assert class_mapping(["Malignant=Pre", "normal=Benign"])[1].binary  # aliases, any case
    mapping, classes = class_mapping(["benign=Benign", "pre=Pre", "pro=Pro"], ["pre,pro"])
    assert classes == ClassSet(("benign", "pre", "pro"), ("pre", "pro")) and mapping["pro"] == "pro"
    for specs, blast, needle in ((["9x=Pre", "b=Benign"], ["9x"], "class name"), (["b=Benign"], ["b"], "two or more"), (["a=Pre", "b=Benign"], ["a,b"], "not all"),
                                 (["a=Pre", "b=Benign", "c=Pro,Pre"], ["a"], "given twice")):
        with pytest.raises(ConfigError, match=needle):
            class_mapping(specs, blast)
