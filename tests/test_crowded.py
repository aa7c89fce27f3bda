"""Issue 34's yardsticks: crowded synthetic fields (clusters of touching white cells, smudge cells) with
exact annotations, cells counted by hand on real dense all-fields fields, and ``field-eval``'s
found-once scoring of both; the detector's split of touching cells and its smudge-cell kind, each held
to its present floor on the real fields."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BCCD, cli, one_line_error, require_shared

COUNTS = Path(__file__).parent / "data" / "all-fields-dense-counts.csv"
#: 10 more dense fields counted the same way, kept apart to choose a fine-tuned detector's threshold on
GATE_COUNTS = Path(__file__).parent / "data" / "all-fields-gate-counts.csv"


@pytest.mark.parametrize("um", [0.12, 0.25, 0.45])
def test_crowded_fields_have_exact_clusters_masks_and_centres(um):
    from alnett_edge.data.synth import CELL_UM_PER_PX, REF_SIZE, CrowdSpec, synth_crowded

    spec = CrowdSpec(um_per_px=um, width=640, height=480, clusters=1, cluster_size=(5, 5), singles=1, smudges=1)
    for seed in range(3):
        frame = synth_crowded(np.random.default_rng(seed), spec)
        wbc = [o for o in frame.objects if o.name == "WBC"]
        smudges = [o for o in frame.objects if o.name == "Smudge"]
        clustered = [o for o in wbc if o.cluster == 5]
        # the cluster is placed whole or not at all, and the single cell is alone
        assert len(clustered) in (0, 5) and len({o.group for o in clustered}) <= 1
        assert [o.cluster for o in wbc if o.cluster != 5] in ([1], [])
        assert all(o.label in ("all", "hem") for o in wbc) and len(smudges) <= 1
        owner = np.zeros(frame.image.shape[:2], np.int32)
        for k, o in enumerate(wbc + smudges, 1):
            x0, y0, x1, y1 = o.box
            assert o.mask is not None and o.mask.shape == (y1 - y0, x1 - x0)
            assert cv2.boundingRect(o.mask) == (0, 0, x1 - x0, y1 - y0)  # the box is the visible mask's
            cx, cy = o.centre
            assert o.mask[int(cy) - y0, int(cx) - x0]  # the centre is on the cell's visible part
            view = owner[y0:y1, x0:x1]
            assert not view[o.mask > 0].any()  # no pixel belongs to two cells (the upper one hides the lower)
            view[o.mask > 0] = k
        # touching: each clustered cell's visible part borders another clustered cell's
        if clustered:
            ids = {id(o): k for k, o in enumerate(wbc + smudges, 1)}
            for o in clustered:
                grown = cv2.dilate((owner == ids[id(o)]).astype(np.uint8), np.ones((5, 5), np.uint8))
                assert any((owner[grown > 0] == ids[id(p)]).any() for p in clustered if p is not o)
        # scale-true at every pixel size: a single cell is a synthetic C-NMC cell of its physical size
        single = [o for o in wbc if o.cluster == 1]
        if single:
            x0, y0, x1, y1 = single[0].box
            side_um = max(x1 - x0, y1 - y0) * um
            assert 0.3 * REF_SIZE * CELL_UM_PER_PX < side_um < REF_SIZE * CELL_UM_PER_PX


def test_a_clustered_cells_mask_stays_out_of_its_neighbours():
    """Each pixel goes to its nearest detected nucleus, so a cell's mask (what the classifier sees
    of it) does not run into the cell it touches. Scored on generated clusters of 2, 4 and 6 against the
    generator's exact masks (51 cells): measured 0.055 of a mask's pixels in other cells (0.189 before
    the partition), IoU with its own cell 0.858 (0.784)."""
    from alnett_edge.data.synth import CrowdSpec, synth_crowded
    from alnett_edge.vision.detector import CellDetector

    ious, spills = [], []
    for size in (2, 4, 6):
        spec = CrowdSpec(um_per_px=0.25, clusters=1, cluster_size=(size, size), singles=1, smudges=0)
        for seed in range(4):
            frame = synth_crowded(np.random.default_rng(seed), spec)
            owner = np.zeros(frame.image.shape[:2], np.int32)
            for k, o in enumerate((o for o in frame.objects if o.name == "WBC"), 1):
                x0, y0, x1, y1 = o.box
                owner[y0:y1, x0:x1][o.mask > 0] = k
            for det in CellDetector(um_per_px=0.25).detect(frame.image):
                x0, y0, x1, y1 = det.box
                mine = det.mask > 0
                ids, counts = np.unique(owner[y0:y1, x0:x1][mine], return_counts=True)
                if not (ids > 0).any():
                    continue
                best = ids[ids > 0][counts[ids > 0].argmax()]
                inter = int((owner[y0:y1, x0:x1][mine] == best).sum())
                ious.append(inter / (mine.sum() + (owner == best).sum() - inter))
                spills.append(((owner[y0:y1, x0:x1][mine] > 0) & (owner[y0:y1, x0:x1][mine] != best)).mean())
    assert len(ious) >= 30
    assert np.mean(spills) < 0.12 and np.mean(ious) > 0.82, (np.mean(spills), np.mean(ious))


def test_crowded_fields_round_trip_through_field_eval(tmp_path):
    """The generator's VOC (cluster sizes, centres, smudge cells) and masks read back exactly, and
    field-eval scores found-once per cluster size against them."""
    from alnett_edge.data.synth import CrowdSpec, generate_crowded
    from alnett_edge.vision.annotations import read_truth
    from alnett_edge.vision.fieldeval import field_eval
    from alnett_edge.vision.optics import OpticsConfig

    info = generate_crowded(tmp_path, 3, CrowdSpec(um_per_px=0.25, clusters=1, cluster_size=(3, 3), singles=2), seed=4)
    layout, truths = read_truth(tmp_path)
    assert layout == "voc" and len(truths) == 3
    assert sum(len(t.centres) for t in truths) == info["wbc"] and sum(len(t.smudges) for t in truths) == info["smudges"]
    assert {c for t in truths for c in t.clusters} <= {1, 3} and sum(c == 3 for t in truths for c in t.clusters) % 3 == 0
    for t in truths:
        masks = cv2.imread(str(tmp_path / "Masks" / t.image.name), cv2.IMREAD_UNCHANGED)
        assert masks.dtype == np.uint16 and masks.max() == len(t.centres) + len(t.smudges)
        for k, (cx, cy) in enumerate(t.centres, 1):  # white cells first, in the XML's order
            assert masks[int(cy), int(cx)] == k
    report, results = field_eval(None, tmp_path, optics=OpticsConfig(um_per_px=0.25))
    assert report["optics"]["um_per_px"] == 0.25 and set(report["by_cluster"]) == {"1", "3"}
    rows = report["by_cluster"]
    assert rows["1"]["cells"] + rows["3"]["cells"] == info["wbc"]
    found = sum(len(r.centre_pairs) for r in results)
    assert report["found_once"] == round(found / info["wbc"], 4)
    assert report["smudges"]["true"] == info["smudges"]


def test_crowded_fields_from_the_command_line(tmp_path, x86_bundle):
    res = cli("data", "synth", "--out", tmp_path / "syn", "--n", "20", "--crowded", "4", "--crowded-um", "0.3")
    assert res.exit_code == 0 and "crowded fields" in res.output, res.output
    res = cli("field-eval", tmp_path / "syn" / "crowded", "--um-per-px", "0.3")
    assert res.exit_code == 0 and "found once" in res.output and "by cluster size" in res.output, res.output
    assert "cells in a cluster" not in res.output  # no model, no calls
    # the test model has not seen such cells (every one is out of distribution): classified anyway, recorded
    (tmp_path / "d.toml").write_text('[quality]\nout_of_distribution = "record"\n')
    res = cli("field-eval", x86_bundle["bundle"], tmp_path / "syn" / "crowded", "--um-per-px", "0.3", "--json",
              tmp_path / "r.json", "-c", tmp_path / "d.toml")
    calls = json.loads((tmp_path / "r.json").read_text())["calls_by_cluster"]
    assert res.exit_code == 0 and calls["in a cluster"]["blasts"] > 0, res.output
    assert f"cells in a cluster: sensitivity {calls['in a cluster']['sensitivity']:.3f}" in res.output
    one_line_error(cli("field-eval", tmp_path / "syn" / "crowded", "--match-um", "0"), "--match-um")


def test_found_once_is_one_to_one_by_centre(tmp_path):
    """Two touching cells in one detection box: the box is centred on neither, so both are missed and
    the box is extra; a box on each cell finds each once; a second box on one cell is extra."""
    from alnett_edge.vision.annotations import Truth, match_points
    from alnett_edge.vision.fieldeval import FrameResult, found_once_report
    from alnett_edge.vision.record import CellRecord

    truth = Truth(Path("f.png"))
    truth.add((50.0, 50.0), cluster=2)
    truth.add((80.0, 50.0), cluster=2)

    def result(boxes):
        records = [CellRecord(0.0, 0, b, None, None, None, None, "") for b in boxes]
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        return FrameResult(truth, records, [], match_points(centres, truth.centres, 8.0), 8.0)

    merged = found_once_report([result([(35, 35, 95, 65)])])
    assert merged["found_once"] == 0.0 and merged["extra"] == 1.0
    split = found_once_report([result([(38, 38, 62, 62), (68, 38, 92, 62)])])
    assert split["found_once"] == 1.0 and split["extra"] == 0.0 and split["by_cluster"]["2"]["precision"] == 1.0
    twice = found_once_report([result([(38, 38, 62, 62), (40, 40, 64, 64), (68, 38, 92, 62)])])
    assert twice["found_once"] == 1.0 and twice["extra"] == round(1 / 3, 4)


def test_calls_are_scored_apart_for_cells_alone_and_in_a_cluster():
    """The model's sensitivity and specificity on the cells found once, by whether the cell lay in a
    cluster (where its crop is cut by its neighbours and the validation's rates need not hold)."""
    from alnett_edge.vision.annotations import Truth, match_points
    from alnett_edge.vision.fieldeval import FrameResult, calls_by_cluster, found_once_report
    from alnett_edge.vision.record import CellRecord

    truth = Truth(Path("f.png"))
    cells = [((20.0, 20.0), "all", 1, 0.9), ((60.0, 20.0), "hem", 1, 0.2), ((100.0, 20.0), "all", 3, 0.3),
             ((120.0, 20.0), "all", 3, 0.8), ((140.0, 20.0), "hem", 3, 0.7), ((20.0, 80.0), "all", 1, None)]
    for centre, label, cluster, _ in cells:
        truth.add(centre, label=label, cluster=cluster)
    records = [CellRecord(0.0, 0, (int(x) - 5, int(y) - 5, int(x) + 5, int(y) + 5), None if p is None else 1 - p, p,
                          None, None, "") for (x, y), _, _, p in cells]  # the last one not classified
    result = FrameResult(truth, records, [], match_points([(x, y) for (x, y), *_ in cells], truth.centres, 8.0), 8.0)
    calls = calls_by_cluster([result])
    assert calls == {"alone": {"blasts": 1, "sensitivity": 1.0, "normal": 1, "specificity": 1.0},
                     "in a cluster": {"blasts": 2, "sensitivity": 0.5, "normal": 1, "specificity": 0.0}}
    assert found_once_report([result])["calls_by_cluster"] == calls
    lone = Truth(Path("g.png"))
    lone.add((20.0, 20.0), label="all")
    assert calls_by_cluster([FrameResult(lone, records[:1], [], [(0, 0)], 8.0)]) == {}  # no cluster: not scored


def test_points_files_are_checked(tmp_path):
    from alnett_edge.vision.annotations import read_truth

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 60, 3), np.uint8))
    good = tmp_path / "p.csv"
    good.write_text("image,x,y,kind\na.png,10,20,\na.png,30,5,smudge\n")
    layout, truths = read_truth(good)
    assert layout == "points" and truths[0].centres == [(10.0, 20.0)] and truths[0].smudges == [(30.0, 5.0)]
    empty = tmp_path / "e.csv"
    empty.write_text("image,x,y\na.png,,\n")  # an image with no cell is scored too
    assert read_truth(empty)[1][0].centres == []
    for text, needle in (("name,x,y\na.png,1,2\n", "needs the columns image, x, y"),
                         ("image,x,y\n../a.png,1,2\n", "is not a file inside"),
                         ("image,x,y\nb.png,1,2\n", "is not in"),
                         ("image,x,y\na.png,one,2\n", "must be numbers"),
                         ("image,x,y\na.png,70,2\n", "lies outside the 60x40 image"),
                         ("image,x,y\na.png,nan,2\n", "lies outside"),
                         ("image,x,y\n", "no rows"),
                         (b"\x00\xff\xfe binary", "needs the columns image, x, y")):
        bad = tmp_path / "bad.csv"
        bad.write_bytes(text) if isinstance(text, bytes) else bad.write_text(text)
        one_line_error(cli("field-eval", bad), needle)


def _scored(counts: Path, fields: Path, tmp_path: Path) -> tuple[list[dict], dict, str]:
    """A hand-counted points file: its rows, each marked cell checked to lie on a violet object (not on
    the pale plasma), and the rule-based detector's field-eval report on it with the command's output."""
    rows = list(csv.DictReader(open(counts)))
    for name in sorted({r["image"] for r in rows}):
        bgr = cv2.imread(str(fields / name))
        violet = cv2.GaussianBlur(np.clip(bgr[..., 0].astype(np.int16) - bgr[..., 1], 0, 255).astype(np.uint8), (0, 0), 2)
        plasma = float(np.percentile(violet, 20))
        for r in (r for r in rows if r["image"] == name and r["kind"] == "cell"):
            x, y = int(float(r["x"])), int(float(r["y"]))
            assert violet[y, x] > plasma + 10, (name, x, y, int(violet[y, x]), plasma)
    out = tmp_path / f"{counts.stem}.json"
    res = cli("field-eval", counts, "--images", fields, "--json", out)
    assert res.exit_code == 0, res.output
    return rows, json.loads(out.read_text()), res.output


def test_the_hand_counted_all_fields_fields(tmp_path):
    """20 dense fields of ../shared/data/all-fields (10 Pre, 10 Pro), every white cell marked at the
    middle of its visible part (docs/engineering/crowded.md says how). Each point lies on a violet
    object, not on the pale plasma; field-eval scores the detector on them with each class folder's own
    pixel size. The detector finds far fewer than the issue's 0.90 (a crowded field raises its own
    threshold); the floor here (0.513 / 0.119 measured with the split, 0.418 / 0.152 before it) stops it
    from getting worse unnoticed."""
    rows, rep, output = _scored(COUNTS, require_shared(BCCD.parent / "all-fields"), tmp_path)
    images = sorted({r["image"] for r in rows})
    assert len(images) == 20 and {i.split("/")[0] for i in images} == {"Pre", "Pro"}
    assert sum(r["kind"] == "cell" for r in rows) == 347 and sum(r["kind"] == "smudge" for r in rows) == 28
    assert rep["layout"] == "points" and rep["frames"] == 20 and rep["recall"] is None
    assert set(rep["optics"]["folders"]) == {"Pre", "Pro"} and rep["optics"]["folders"]["Pro"] > rep["optics"]["folders"]["Pre"]
    assert rep["found_once"] >= 0.50 and rep["extra"] <= 0.13, (rep["found_once"], rep["extra"])
    assert rep["smudges"]["true"] == 28 and "found once" in output


def test_the_second_hand_counted_set_is_apart_from_the_first(tmp_path):
    """10 more dense fields (5 Pre, 5 Pro), none of the 20 above, counted the same way to choose a
    fine-tuned detector's threshold on (docs/engineering/crowded.md). The rule-based detector scores on
    them as on the 20 (measured 0.518 / 0.104 against 0.513 / 0.119): the two counts agree."""
    rows, rep, _ = _scored(GATE_COUNTS, require_shared(BCCD.parent / "all-fields"), tmp_path)
    images = {r["image"] for r in rows}
    assert len(images) == 10 and not images & {r["image"] for r in csv.DictReader(open(COUNTS))}
    assert sorted(i.split("/")[0] for i in images) == ["Pre"] * 5 + ["Pro"] * 5
    assert sum(r["kind"] == "cell" for r in rows) == 199 and sum(r["kind"] == "smudge" for r in rows) == 18
    assert rep["frames"] == 10 and rep["found_once"] >= 0.50 and rep["extra"] <= 0.12, (rep["found_once"], rep["extra"])


def test_smudge_cells_are_counted_apart_on_the_hand_counted_fields(tmp_path):
    """Issue 34 item 2 on the 28 smudge cells marked by hand: the detector (settings chosen on half of
    the 20 fields) finds 11 as smudge cells and 11 of its 13 smudge detections lie on one; the white
    cells' scores are those of the detector with the smudge look off, to the digit (a smudge never
    takes a cell). It looks in the 19 fields where a whole cell was found (a pale nucleus and a smudge
    cannot be told apart without one), and where the red cells are pink (BCCD) it does not look."""
    fields = require_shared(BCCD.parent / "all-fields")
    off_toml = tmp_path / "off.toml"
    off_toml.write_text("[detector]\nsmudge_contrast = 0\n")
    out = {}
    for name, extra in (("on", ()), ("off", ("-c", off_toml))):
        res = cli("field-eval", COUNTS, "--images", fields, "--json", tmp_path / f"{name}.json", *extra)
        assert res.exit_code == 0, res.output
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    on, off = out["on"], out["off"]
    assert off["smudges"]["detections"] == 0 and off["smudge_frames"] == 0 and on["smudge_frames"] == 19
    assert on["smudges"]["true"] == 28 and on["smudges"]["found"] >= 10, on["smudges"]
    assert on["smudges"]["on_no_smudge"] <= 3 and on["smudges"]["detections"] <= 17, on["smudges"]
    for key in ("found_once", "extra", "detections", "abstained"):
        assert on[key] == off[key], key  # smudges are counted apart: not detections, not abstentions
    res = cli("field-eval", BCCD, "--limit", 40, "--json", tmp_path / "bccd.json")
    assert res.exit_code == 0, res.output
    bccd = json.loads((tmp_path / "bccd.json").read_text())
    assert bccd["recall"] >= 0.9 and bccd["smudge_frames"] == 0 and "smudges" not in bccd
    assert "looked for in 0 of 40 frames" in res.output


def test_a_smudge_cell_is_never_classified_and_counts_apart():
    """The gate gives a smudge cell's detection its own reason, and the differential counts such a row
    apart: not a cell, not an abstention, not in the blast ratio."""
    from alnett_edge.vision.cells import QualityConfig, gate
    from alnett_edge.vision.detector import SMUDGE, Detection
    from alnett_edge.vision.differential import Aggregator
    from alnett_edge.vision.record import SMUDGE_REASON, CellRecord

    frame = np.full((64, 64, 3), 200, np.uint8)
    mask = np.full((20, 20), 255, np.uint8)
    assert gate(frame, Detection((10, 10, 30, 30), mask, kind=SMUDGE), QualityConfig())[0] == SMUDGE_REASON
    assert gate(frame, Detection((10, 10, 30, 30), mask), QualityConfig())[0] != SMUDGE_REASON
    agg = Aggregator(("all", "hem"))
    row = dict(time=0.0, frame_index=0, box=(0, 0, 9, 9), model_sha256="")
    agg.add_record(CellRecord(**row, prob_hem=0.1, prob_all=0.9, label="all", abstain_reason=None))
    agg.add_record(CellRecord(**row, prob_hem=0.8, prob_all=0.2, label="hem", abstain_reason=None))
    for _ in range(3):
        agg.add_record(CellRecord(**row, prob_hem=None, prob_all=None, label=None, abstain_reason=SMUDGE_REASON))
    s = agg.snapshot()
    assert s["smudges"] == 3 and s["cells"] == 2 and s["abstained"] == {} and s["blast_ratio"] == 0.5
    assert s["blast_ratio_estimate"]["cells"] == 2


def test_the_slide_report_counts_smudge_cells_apart(tmp_path):
    """A session's rows with the smudge reason are listed apart in the slide report, outside its cells."""
    import sqlite3

    from alnett_edge.daemon.report import build_report
    from alnett_edge.daemon.sinks import SCHEMA
    from alnett_edge.vision.record import SMUDGE_REASON

    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO sessions (started, source, model_sha256, summary) VALUES (0, 's', 'x', ?)",
                (json.dumps({"session": {"positive_class": "all", "labels": {"hem": 1, "all": 1}}}),))
    rows = [("all", None), ("hem", None), (None, "blurred"), (None, SMUDGE_REASON), (None, SMUDGE_REASON)]
    con.executemany("INSERT INTO cells (session_id, time, frame_index, label, abstain_reason, model_sha256) "
                    "VALUES (1, 0, 0, ?, ?, 'x')", rows)
    con.commit()
    con.close()
    rep = build_report(db, tmp_path / "report")
    assert rep["cells"] == 3 and rep["classified"] == 2 and rep["blasts"] == 1
    assert dict(rep["outcomes"])["smudge cells (counted apart)"] == 2
    assert "smudge cells (counted apart)" in (tmp_path / "report" / "report.html").read_text()
