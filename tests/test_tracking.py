"""Tracking (issue 12): one track per physical cell across a still and a panned field, one database
row per track, fused probabilities, and far fewer model calls on a still field."""

import json
import sqlite3

import cv2
import numpy as np
import pytest

from alnett_edge.data.synth import SMEAR_UM_PER_PX, synth_smear
from alnett_edge.vision.detector import CellDetector, DetectorConfig
from alnett_edge.vision.tracking import TrackBook, TrackingConfig

W, H = 640, 480


def panned_field(seed=5, still=12, step=9, moves=70, width=1500):
    """A wide synthetic smear seen through a 640x480 window: still for ``still`` frames, then the stage
    pans ``step`` px a frame for ``moves`` frames. Returns the frames and, per frame, the WBC boxes
    (frame coordinates) with their cell index."""
    smear = synth_smear(np.random.default_rng(seed), width=width, height=H, n_wbc=(9, 9))
    wbcs = [o for o in smear.objects if o.name == "WBC"]
    offsets = [0] * still + [step * (i + 1) for i in range(moves)]
    frames, truth = [], []
    for off in offsets:
        frames.append(np.ascontiguousarray(smear.image[:, off : off + W]))
        truth.append([(k, (o.box[0] - off, o.box[1], o.box[2] - off, o.box[3])) for k, o in enumerate(wbcs)
                      if o.box[2] - off > 0 and o.box[0] - off < W])
    return frames, truth


def inside(box):
    return box[0] >= 0 and box[2] <= W


def _track_ids(frames, truth, config):
    """Detect and track ``frames``; the track ids of each true cell, and the true cells of each id (a
    detection belongs to the one true cell whose box holds its centre)."""
    detector = CellDetector(DetectorConfig(), SMEAR_UM_PER_PX)
    book = TrackBook(config, SMEAR_UM_PER_PX)
    tracks_of_cell: dict[int, set[int]] = {}
    cell_of_track: dict[int, set[int]] = {}
    for i, (frame, cells) in enumerate(zip(frames, truth)):
        dets = detector.detect(frame)
        for det, track in zip(dets, book.assign(frame, dets, i)):
            cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
            hit = [k for k, b in cells if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
            if len(hit) == 1:
                cell_of_track.setdefault(track.id, set()).add(hit[0])
                tracks_of_cell.setdefault(hit[0], set()).add(track.id)
    return tracks_of_cell, cell_of_track


def test_a_panned_field_keeps_one_id_per_cell():
    frames, truth = panned_field()
    tracks_of_cell, cell_of_track = _track_ids(frames, truth, TrackingConfig())
    # every cell that was ever wholly in view was tracked; the pan moved the field 630 px
    seen_whole = {k for cells in truth for k, b in cells if inside(b)}
    assert len(seen_whole) >= 6 and set(tracks_of_cell) >= seen_whole
    switches = sum(len(t) - 1 for t in tracks_of_cell.values())  # a cell that changed id
    assert switches <= max(1, round(0.02 * len(tracks_of_cell))), tracks_of_cell
    assert all(len(c) == 1 for c in cell_of_track.values()), cell_of_track  # no id given to two cells


def test_without_tracking_every_detection_is_its_own_track():
    frames, _ = panned_field(still=3, moves=0)
    detector = CellDetector(DetectorConfig(), SMEAR_UM_PER_PX)
    book = TrackBook(TrackingConfig(enabled=False), SMEAR_UM_PER_PX)
    ids = [t.id for i, f in enumerate(frames) for t in book.assign(f, detector.detect(f), i)]
    assert len(ids) == len(set(ids)) >= 3 and len(book.ended()) == len(ids)


@pytest.mark.parametrize("bad", [{"observations": 0}, {"watch_frames": 0}, {"max_jump_um": 0.0}, {"lost_frames": -1}])
def test_tracking_config_is_checked(bad):
    from alnett_edge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[tracking\]"):
        TrackBook(TrackingConfig(**bad), SMEAR_UM_PER_PX)


def _still_video(path, fields=4, hold=30, seed=3):
    """``fields`` synthetic smear fields, each held ``hold`` frames (a still stage), with camera noise
    so no two frames are identical; returns the number of white cells in all fields."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    cells, rng = 0, np.random.default_rng(seed)
    for f in range(fields):
        smear = synth_smear(np.random.default_rng([seed, f]), n_wbc=(2, 3))
        cells += sum(o.name == "WBC" for o in smear.objects)
        for _ in range(hold):
            noisy = np.clip(smear.image.astype(np.int16) + rng.integers(-3, 4, smear.image.shape), 0, 255).astype(np.uint8)
            writer.write(cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
    writer.release()
    return cells


#: the fixture's model saw cells drawn darker than the smear's (tests/test_ood.py), so by default every
#: one is abstained as out of distribution; these tests of tracking classify them anyway
CLASSIFY_ALL = {"out_of_distribution": "record"}


def _daemon(bundle, video, tmp_path, name, tracking):
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon

    cfg = build_config({}, {
        "source": {"spec": f"video:{video}", "fps": 0.0, "loop": False},
        "runtime": {"bundle": str(bundle)}, "optics": {"um_per_px": SMEAR_UM_PER_PX}, "tracking": tracking,
        "quality": CLASSIFY_ALL,
        "sinks": {"db": str(tmp_path / f"{name}.db"), "jsonl": str(tmp_path / f"{name}.jsonl")}, "http": {"port": 0}})
    return Daemon(cfg).run()


def test_a_still_field_is_decided_once_per_cell_with_ten_times_fewer_model_calls(x86_bundle, tmp_path):
    video = tmp_path / "still.avi"
    n_cells = _still_video(video)
    tracked = _daemon(x86_bundle["bundle"], video, tmp_path, "tracked", {})
    per_frame = _daemon(x86_bundle["bundle"], video, tmp_path, "frames", {"enabled": False})
    assert tracked["frames_processed"] == per_frame["frames_processed"] == 120
    # one decided row per distinct cell (a cell cut by the frame edge is a row too, abstained)
    rows = sqlite3.connect(tmp_path / "tracked.db").execute(
        "SELECT track_id, first_frame, frame_index, observations, classified, label, abstain_reason FROM cells").fetchall()
    assert abs(len(rows) - n_cells) <= max(1, round(0.02 * n_cells)), (len(rows), n_cells)
    assert len({r[0] for r in rows}) == len(rows) == tracked["session"]["cells"] == tracked["cells_processed"]
    assert all(r[3] >= r[4] and r[2] >= r[1] for r in rows)  # seen >= classified frames; decided after first seen
    assert all(r[4] <= 3 for r in rows) and any(r[4] == 3 for r in rows)
    # the model ran at most 3 times per cell, against once per cell per frame without tracking
    assert tracked["inferences"] * 10 <= per_frame["inferences"], (tracked["inferences"], per_frame["inferences"])
    assert per_frame["session"]["cells"] >= 25 * n_cells
    assert tracked["tracks"]["fields"] == 4 and tracked["tracks"]["open"] == 0  # 4 fields, each noticed
    # the fused probability is the mean of the observations' probabilities
    lines = [json.loads(x) for x in (tmp_path / "tracked.jsonl").read_text().splitlines()]
    decided = [r for r in lines if r.get("classified") == 3]
    assert decided and all(len(r["observed_prob_all"]) == 3 for r in decided)
    for r in decided:
        assert r["prob_all"] == pytest.approx(float(np.mean(r["observed_prob_all"])), abs=2e-6)


def test_a_track_is_classified_on_its_sharpest_observations(x86_bundle, tmp_path):
    """Focus coming in: a still field out of focus for 3 frames (blurred, still past the quality gate),
    then sharp. The track is watched for 6 good observations and classified on its 3 sharpest, the
    sharp frames, not on the first 3 it saw."""
    smear = synth_smear(np.random.default_rng([3, 0]), n_wbc=(3, 3))
    video = tmp_path / "focus.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    rng = np.random.default_rng(1)
    for i in range(10):
        img = cv2.GaussianBlur(smear.image, (0, 0), 1.5) if i < 3 else smear.image
        noisy = np.clip(img.astype(np.int16) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR))
    writer.release()
    summary = _daemon(x86_bundle["bundle"], video, tmp_path, "focus", {"observations": 3, "watch_frames": 6})
    lines = [json.loads(x) for x in (tmp_path / "focus.jsonl").read_text().splitlines()]
    rows = [r for r in lines if "track_id" in r]
    assert len(rows) == 3 == summary["session"]["cells"]
    for r in rows:  # decided in the 6th frame it passed the gate in, on the three sharp frames it had then
        assert r["frame_index"] == 5 and sorted(r["observed_frames"]) == [3, 4, 5], r
        assert r["prob_all"] == pytest.approx(float(np.mean(r["observed_prob_all"])), abs=2e-6)
    assert summary["inferences"] == 9


def test_without_tracking_a_detection_is_one_row_however_few_observations_are_asked(x86_bundle, tmp_path):
    """With tracking off every detection is a track that ends in its frame; watched for 1 observation
    it is also ready in that frame, and must still be decided once (one row, one model call)."""
    video = tmp_path / "still.avi"
    _still_video(video, fields=2, hold=3)
    summary = _daemon(x86_bundle["bundle"], video, tmp_path, "one", {"enabled": False, "observations": 1,
                                                                    "watch_frames": 1})
    rows = sqlite3.connect(tmp_path / "one.db").execute("SELECT track_id, classified FROM cells").fetchall()
    assert len(rows) == len({r[0] for r in rows}) == summary["observations"] == summary["session"]["cells"] > 0
    assert summary["inferences"] == sum(c for _, c in rows)


def test_a_stop_mid_track_decides_the_tracks_in_flight(x86_bundle, tmp_path):
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon

    video = tmp_path / "still.avi"
    _still_video(video, fields=1, hold=2)
    cfg = build_config({}, {
        "source": {"spec": f"video:{video}", "fps": 0.0, "loop": False}, "runtime": {"bundle": str(x86_bundle["bundle"])},
        "optics": {"um_per_px": SMEAR_UM_PER_PX}, "quality": CLASSIFY_ALL, "sinks": {"db": str(tmp_path / "s.db")},
        "http": {"port": 0}})
    summary = Daemon(cfg).run()  # the video ends after 2 frames: every track is still open (3 observations)
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT classified, label, abstain_reason FROM cells").fetchall()
    assert rows and len(rows) == summary["session"]["cells"]
    assert all(c <= 2 for c, _, _ in rows) and any(lab for _, lab, _ in rows)


@pytest.mark.parametrize("stage_motion", [True, False])
def test_a_stage_jerk_keeps_ids_only_with_stage_motion_compensation(stage_motion):
    # 110 px a frame (9.5 µm, past max_jump_um) from a standstill: the Kalman filter cannot predict it
    frames, truth = panned_field(still=4, step=110, moves=5, width=640 + 110 * 5 + 10)
    tracks_of_cell, _ = _track_ids(frames, truth, TrackingConfig(stage_motion=stage_motion))
    switches = sum(len(t) - 1 for t in tracks_of_cell.values())
    assert len(tracks_of_cell) >= 6
    assert (switches == 0) if stage_motion else (switches >= len(tracks_of_cell) // 2), tracks_of_cell


def test_a_new_field_of_view_ends_every_track():
    """Independent fields one after another (the stage moved to another part of the slide): no cell of
    one field may lend its id to a cell of the next, however close their positions."""
    detector = CellDetector(DetectorConfig(), SMEAR_UM_PER_PX)
    book = TrackBook(TrackingConfig(), SMEAR_UM_PER_PX)
    ids_per_field = []
    for f in range(5):
        smear = synth_smear(np.random.default_rng([21, f]), n_wbc=(3, 3))
        ids = set()
        for k in range(4):  # each field held 4 frames
            noisy = np.clip(smear.image.astype(np.int16) + np.random.default_rng([f, k]).integers(-3, 4, smear.image.shape),
                            0, 255).astype(np.uint8)
            dets = detector.detect(noisy)
            ids |= {t.id for t in book.assign(noisy, dets, 4 * f + k)}
        ids_per_field.append(ids)
    assert book.fields == 5
    assert all(len(ids) == 3 for ids in ids_per_field), ids_per_field  # 3 cells, one id each, in each field
    assert len(set().union(*ids_per_field)) == 15


def test_a_detection_that_flickers_for_a_frame_is_not_a_cell():
    import dataclasses

    smear = synth_smear(np.random.default_rng([8, 1]), n_wbc=(2, 2))
    detector = CellDetector(DetectorConfig(), SMEAR_UM_PER_PX)
    real = detector.detect(smear.image)
    h, w = real[0].mask.shape
    ghost = dataclasses.replace(real[0], box=(20, 20, 20 + w, 20 + h), centre=(20 + w / 2, 20 + h / 2))
    book = TrackBook(TrackingConfig(lost_frames=2), SMEAR_UM_PER_PX)
    ended = []
    for i in range(12):  # a still field; a false detection far from the cells in frame 4 only
        dets = real + ([ghost] if i == 4 else [])
        book.assign(smear.image, dets, i)
        ended += book.ended()
    assert book.flickers == 1 and ended == []  # dropped, not a row; the real cells are still open
    assert len(book.close()) == len(real) == 2  # a stop ends the real tracks, kept however short


def test_a_cell_missed_for_a_few_frames_keeps_its_id_and_one_gone_longer_gets_a_new_one():
    """Focus hunting: a cell not detected for up to ``lost_frames`` frames is the same cell when it comes
    back; after longer, its track has ended and the cell starts a new one."""
    smear = synth_smear(np.random.default_rng([8, 1]), n_wbc=(2, 2))
    real = CellDetector(DetectorConfig(), SMEAR_UM_PER_PX).detect(smear.image)
    book = TrackBook(TrackingConfig(lost_frames=8), SMEAR_UM_PER_PX)
    ids = []
    for i in range(40):  # a still field; cell 0 is missed in frames 5-12 (8 frames), then 20-29 (10 frames)
        dets = real[1:] if 5 <= i <= 12 or 20 <= i <= 29 else real
        tracks = book.assign(smear.image, dets, i)
        for track, det in zip(tracks, dets):
            track.observe(i, det, "not classified here")
        ids.append(tracks[0].id if dets is real else None)
    before, between, after = ids[4], ids[13], ids[30]
    assert len(real) == 2 and before == between != after, ids
    ended = book.ended()  # it ended once, when lost, after the 12 frames it was seen in (0-4, 13-19)
    assert [t.id for t in ended] == [before] and ended[0].lost and ended[0].seen == 12


def test_a_database_from_before_tracking_gets_the_new_columns(tmp_path):
    from alnett_edge.daemon.sinks import SqliteSink
    from alnett_edge.vision.record import CellRecord

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL, ended REAL, source TEXT,
            bundle TEXT, model_sha256 TEXT, frames INTEGER DEFAULT 0, cells INTEGER DEFAULT 0, summary TEXT);
        CREATE TABLE cells (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id INTEGER NOT NULL, time REAL NOT NULL,
            frame_index INTEGER NOT NULL, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER, prob_hem REAL, prob_all REAL,
            label TEXT, abstain_reason TEXT, model_sha256 TEXT NOT NULL);
        INSERT INTO sessions (started) VALUES (1.0);
        INSERT INTO cells (session_id, time, frame_index, model_sha256) VALUES (1, 1.0, 0, 'old');""")
    con.commit()
    con.close()
    sink = SqliteSink(db)
    sink.open({"started": 2.0, "source": "s", "bundle": "b", "model_sha256": "new"})
    sink.write(np.zeros((4, 4, 3), np.uint8), 7, [CellRecord(2.0, 7, (0, 0, 4, 4), 0.2, 0.8, "all", None, "new", 1.0,
                                                             track_id=5, first_frame=3, observations=5, classified=3)])
    sink.close({})
    rows = sqlite3.connect(db).execute("SELECT model_sha256, track_id, first_frame, observations, classified FROM cells").fetchall()
    assert rows == [("old", None, None, None, None), ("new", 5, 3, 5, 3)]


def test_report_of_a_session_with_crops_is_self_contained(x86_bundle, tmp_path):
    import re

    from typer.testing import CliRunner

    from alnett_edge.cli.app import app
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon

    video = tmp_path / "still.avi"
    _still_video(video, fields=3, hold=5)
    cfg = build_config({}, {
        "source": {"spec": f"video:{video}", "fps": 0.0}, "runtime": {"bundle": str(x86_bundle["bundle"])},
        "optics": {"um_per_px": SMEAR_UM_PER_PX}, "quality": CLASSIFY_ALL,
        "sinks": {"db": str(tmp_path / "s.db"), "crops": str(tmp_path / "crops")},
        "http": {"port": 0}})
    summary = Daemon(cfg).run()
    crops = sorted((tmp_path / "crops").glob("*.jpg"))
    decided = [r for r in sqlite3.connect(tmp_path / "s.db").execute("SELECT label, classified FROM cells") if r[1]]
    assert len(crops) == len(decided) > 0  # one crop per cell the model decided on
    res = CliRunner().invoke(app, ["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    s = summary["session"]
    assert f"{s['cells']} distinct cells" in res.output and f"{s['labels'].get('all', 0)} blasts" in res.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<html" in html and html.count("data:image/png;base64,") == 2  # crops and latency, inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from anywhere
    for png in ("cells.png", "latency.png"):
        im = cv2.imread(str(tmp_path / "rep" / png))
        assert im is not None and im.shape[0] > 50 and im.shape[1] > 200
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["cells"] == s["cells"] and rep["blasts"] == s["labels"].get("all", 0)


@pytest.mark.parametrize("what,needle", [("missing", "database not found"), ("text", "is not an SQLite database"),
                                         ("other", "not an alnett-edge daemon database")])
def test_report_errors_are_one_line(tmp_path, what, needle):
    from typer.testing import CliRunner

    from alnett_edge.cli.app import app

    db = tmp_path / "x.db"
    if what == "text":
        db.write_text("not a database at all, just text " * 40)
    elif what == "other":
        sqlite3.connect(db).execute("CREATE TABLE t (a)").connection.commit()
    res = CliRunner().invoke(app, ["report", str(db), "--out", str(tmp_path / "r")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


def test_a_differential_target_is_announced_and_can_end_the_session(x86_bundle, tmp_path):
    import sys
    import time

    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon

    video = tmp_path / "still.avi"
    _still_video(video, fields=8, hold=5)
    flag = tmp_path / "reached"
    cfg = build_config({}, {
        "source": {"spec": f"video:{video}", "fps": 20.0}, "runtime": {"bundle": str(x86_bundle["bundle"])},
        "optics": {"um_per_px": SMEAR_UM_PER_PX}, "quality": CLASSIFY_ALL, "sinks": {"db": str(tmp_path / "t.db")},
        "http": {"port": 0},
        "run": {"target_cells": 4, "stop_at_target": True,
                "on_target": f"{sys.executable} -c \"open('{flag}', 'w').write('ok')\""}})
    summary = Daemon(cfg).run()
    assert summary["stop_reason"] == "target reached" and summary["target"]["reached_at"]
    assert summary["session"]["classified"] >= 4 and summary["frames_processed"] < 40
    t0 = time.time()
    while not flag.exists() and time.time() - t0 < 20:
        time.sleep(0.1)
    assert flag.read_text() == "ok"  # the hook ran
