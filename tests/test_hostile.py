"""Hostile inputs and faults (issue 13): each class is fixed at its root, and these probes keep it fixed.

The classes of the issue: 1 data loss (output guard), 2 a corrupt frame looping the daemon, 3 same-port
restart, 4 sink faults (disk full, a deleted output folder, unwritable paths), 5 bundle integrity (paths
outside the bundle, files without a hash), 6 ordinary mistakes, 7 unbounded resources (decoder, batch,
archive members, HTTP connections), 8 bad values, 9 secrets, native noise and a stop held by a hung camera.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from alnett_edge.bundle import BundleError, extract_archive, load_bundle, make_archive
from alnett_edge.capture.base import SourceSettings, make_source
from alnett_edge.capture.watchdog import CaptureThread, FrameQueue
from alnett_edge.errors import ConfigError

from conftest import cli, one_line_error


# -- 1. existing output is never destroyed without --force, and never a folder that is not a bundle --------

def test_export_never_replaces_an_unrelated_folder_and_a_bundle_only_with_force(trained, tmp_path):
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("do not delete")
    one_line_error(cli("export", result.best, "--target", "x86-cpu", "--precision", "fp32", "--out", mine),
                   "not an alnett-edge bundle", "refusing")
    assert (mine / "notes.txt").read_text() == "do not delete"
    with pytest.raises(BundleError, match="not an alnett-edge bundle"):
        export_bundle(result.best, "x86-cpu", mine, "fp32", force=True)  # not even with --force
    assert (mine / "notes.txt").is_file()

    out = tmp_path / "b"
    export_bundle(result.best, "x86-cpu", out, "fp32")
    first = load_bundle(out).manifest["created"]
    one_line_error(cli("export", result.best, "--target", "x86-cpu", "--precision", "fp32", "--out", out),
                   "already holds a bundle", "--force")
    res = cli("export", result.best, "--target", "x86-cpu", "--precision", "fp32", "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert load_bundle(out).manifest["status"] == "ok" and first  # replaced by a fresh, valid bundle

    # a stray "<out>.partial" that is not ours is refused too
    other = tmp_path / "c.partial"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(BundleError, match="not left by alnett-edge"):
        export_bundle(result.best, "x86-cpu", tmp_path / "c", "fp32")
    assert (other / "thesis.tex").is_file()


def test_archive_extraction_never_replaces_another_folder(x86_bundle, tmp_path):
    archive = tmp_path / "x86.tar.gz"
    shutil.copy(x86_bundle["archive"], archive)
    dest = tmp_path / "x86"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not this archive's bundle"):
        load_bundle(archive)
    assert (dest / "notes.txt").read_text() == "mine"
    shutil.rmtree(dest)
    assert load_bundle(archive).manifest["status"] == "ok"  # extracted
    assert extract_archive(archive, dest) == dest and load_bundle(archive).root == dest  # reused, re-verified


# -- 2. one corrupt frame is skipped and counted; the source never replays from the start -----------------

def test_a_corrupt_frame_is_skipped_not_looped(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        cv2.imwrite(str(frames / f"{i:02d}.png"), np.full((32, 48, 3), 20 * i, np.uint8))
    (frames / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    source = make_source(f"images:{frames}", SourceSettings(loop=False, fps=1000.0))
    queue = FrameQueue(64)
    cap = CaptureThread(source, queue, stall_timeout=0.5, backoff_min=0.05, backoff_max=0.1)
    cap.open_now()
    cap.start()
    cap.join(10)
    assert not cap.is_alive() and cap.stats.state == "ended"
    assert cap.stats.frames == 9 and cap.stats.skipped_frames == 1 and cap.stats.reconnects == 0
    assert "05.png" in cap.stats.last_error
    seen = []
    while len(queue):
        seen.append(int(queue.get(0.1).rgb[0, 0, 0]) // 20)
    assert seen == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # each frame once, in order


class IdleDaemon:
    """What the HTTP server asks of a daemon, and nothing else."""

    stopping = False
    preview_clients = 0
    latest_preview = b""

    def healthy(self):
        return True, ""

    def status(self):
        return {"ok": True}


# -- 3. a restart binds the same port at once (the old socket in TIME_WAIT); a second daemon cannot --------

def test_http_port_is_reusable_after_stop_but_not_while_in_use():
    from alnett_edge.daemon.http import HttpServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = HttpServer(IdleDaemon(), "127.0.0.1", port)
    first.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:  # leaves TIME_WAIT behind
        assert json.loads(r.read()) == {"ok": True}
    with pytest.raises(ConfigError, match="in use"):
        HttpServer(IdleDaemon(), "127.0.0.1", port)  # reuse-address does not let two servers share a port
    first.stop()
    t0 = time.perf_counter()
    second = HttpServer(IdleDaemon(), "127.0.0.1", port)
    assert time.perf_counter() - t0 < 2.0
    second.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    second.stop()


# -- 5. every file the loader opens is inside the bundle and listed with its sha256 --------------------------

def _tamper(bundle: Path, dest: Path, edit) -> Path:
    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_manifest_paths_outside_the_bundle_are_refused(x86_bundle, tmp_path, where):
    outside = tmp_path / "evil.onnx"
    shutil.copy(Path(x86_bundle["bundle"]) / "model.fp32.onnx", outside)
    rel = str(outside) if where == "absolute" else "../evil.onnx"

    def edit(m):
        m["artifacts"][0]["file"] = rel
        m["files"][rel] = m["files"]["model.fp32.onnx"]

    bad = _tamper(Path(x86_bundle["bundle"]), tmp_path / "b", edit)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bad)
    images = tmp_path / "cells"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((96, 96, 3), 120, np.uint8))
    one_line_error(cli("predict", bad, images), "outside the bundle")


def test_a_model_file_without_a_hash_is_refused(x86_bundle, tmp_path):
    def edit(m):
        del m["files"]["model.fp32.onnx"]  # then swap the model: it must not run unchecked

    bad = _tamper(Path(x86_bundle["bundle"]), tmp_path / "b", edit)
    (bad / "model.fp32.onnx").write_bytes((bad / "model.fp32.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="not listed with a sha256"):
        load_bundle(bad)
    empty = _tamper(Path(x86_bundle["bundle"]), tmp_path / "e", lambda m: m.__setitem__("files", {}))
    with pytest.raises(BundleError, match="lists no files"):
        load_bundle(empty)
    # a bundle that is fine still loads, and an archive of it round-trips
    good = tmp_path / "g"
    shutil.copytree(x86_bundle["bundle"], good)
    assert load_bundle(make_archive(good)).manifest["status"] == "ok"


# -- 9. secrets stay out of status, database, JSONL and logs ---------------------------------------------------

@pytest.mark.parametrize("url", ["rtsp://admin:hunter2@10.0.0.7:554/live?token=abc123",
                                 "http://cam.local/mjpg?key=abc123&user=x", "rtsp://[::1]:8554/s?password=abc123"])
def test_url_source_id_has_no_credentials(url):
    source = make_source(f"url:{url}")
    sid = source.source_id
    assert "hunter2" not in sid and "abc123" not in sid and "admin" not in sid and sid.startswith("url:")
    assert sid.split("://")[1].split("/")[0] in ("10.0.0.7:554", "cam.local", "[::1]:8554")


def test_http_token_is_not_logged_and_any_text_token_is_just_wrong(caplog):
    import logging

    from alnett_edge.daemon.http import HttpServer

    server = HttpServer(IdleDaemon(), "127.0.0.1", 0, token="s3cret")
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with caplog.at_level(logging.DEBUG, logger="alnett_edge.daemon.web"):
            with pytest.raises(urllib.error.HTTPError) as err:  # a token in a URL is refused (and not logged)
                urllib.request.urlopen(base + "/healthz?token=s3cret", timeout=5)
            assert err.value.code == 401
        assert caplog.records and not any("s3cret" in r.getMessage() for r in caplog.records)
        req = urllib.request.Request(base + "/status", headers={"Authorization": "Bearer t\u00f6ken"})
        with pytest.raises(urllib.error.HTTPError) as err:  # latin-1 header, non-ASCII token: 401, no traceback
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
    finally:
        server.stop()


# -- 8. bad values are one-line errors, never accepted with exit 0 ----------------------------------------------

@pytest.mark.parametrize("section,key,value", [("source", "fps", -5.0), ("run", "duration", -5.0),
                                               ("run", "max_frames", -1), ("runtime", "threads", -5),
                                               ("source", "stall_timeout", float("nan")),
                                               ("detector", "cell_scale", -1.4), ("source", "backoff_max", float("inf"))])
def test_daemon_numbers_must_be_finite_and_not_negative(section, key, value):
    from alnett_edge.daemon.config import build_config

    with pytest.raises(ConfigError, match=f"\\[{section}\\] {key} must be a finite number >= 0"):
        build_config({}, {"source": {"spec": "synthetic:1"}, "runtime": {"bundle": "b"}, section: {key: value}})


def test_daemon_cli_refuses_negative_fps(x86_bundle, tmp_path):
    for args in (["--fps", "-5"], ["--duration", "-5"], ["--max-frames", "-1"]):
        one_line_error(cli("daemon", "--bundle", x86_bundle["bundle"], "--source", "synthetic:1", "--port", "0",
                           "--db", tmp_path / "d.db", *args), "must be a finite number >= 0")


# -- 7. an image is refused from its header, before its pixels are decoded -----------------------------------

def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    import resource
    import zlib

    from alnett_edge.data.preprocess import MAX_IMAGE_PIXELS, load_image
    from alnett_edge.errors import DataError

    def png_header_only(w: int, h: int) -> bytes:  # a valid header, a few rows of pixels
        def chunk(kind: bytes, data: bytes) -> bytes:
            return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (w * 3 + 1) * 4))
                + chunk(b"IEND", b""))

    w = h = 20000  # 400 megapixels, 1.2 GB decoded; the file is a few kB
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(w, h))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for strict in (False, True):
        with pytest.raises(DataError, match="over 179 megapixels .* refused before decoding"):
            load_image(bomb, strict=strict)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing was decoded
    assert w * h > MAX_IMAGE_PIXELS
    small_bomb = tmp_path / "b2.png"  # under Pillow's own limit, over ours: our check speaks
    small_bomb.write_bytes(png_header_only(10000, 8000))
    with pytest.raises(DataError, match="10000x8000 pixels .* 50 megapixel limit"):
        load_image(small_bomb)
    (tmp_path / "frames").mkdir()
    bomb.rename(tmp_path / "frames" / "0.png")
    source = make_source(f"images:{tmp_path / 'frames'}", SourceSettings())
    source.open()
    from alnett_edge.capture.base import FrameSkipped

    with pytest.raises(FrameSkipped, match="refused before decoding"):
        source.read()


def test_bench_batch_size_is_capped(rpi_bundle):
    one_line_error(cli("bench", rpi_bundle["bundle"], "--batch", "1,100000", "--runs", "1"), "--batch sizes go up to 256")


# -- 4. sink faults: the database is the store of record; nothing unstored is counted; restart works -----

_LIMITED = """
import resource, signal, sys, threading, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
limit, lift_after = int(sys.argv[1]), float(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
if lift_after > 0:  # the disk is freed again after a while
    threading.Timer(lift_after, resource.setrlimit, (resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)).start()
sys.argv = ["alnett-edge", *sys.argv[3:]]
from alnett_edge.cli.app import main
main()
"""


def _daemon_under_file_limit(bundle, tmp_path, limit, lift_after, frames, max_pending=10000, tracking=True):
    import subprocess
    import sys

    db, summary = tmp_path / "cells.db", tmp_path / f"summary-{lift_after}.json"
    config = tmp_path / "small.toml"  # small synthetic frames: 0.15 s each to draw instead of 0.8 s
    config.write_text(f"[source]\nwidth = 320\nheight = 240\n[sinks]\nmax_pending_cells = {max_pending}\n"
                      f"[tracking]\nenabled = {str(tracking).lower()}\n")
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(limit), str(lift_after), "daemon", "--bundle", bundle,
                           "--source", "synthetic:7", "--fps", "20", "--max-frames", str(frames), "--port", "0",
                           "--db", db, "--summary-json", summary, "--config", config],
                          capture_output=True, text=True, timeout=300)
    return proc, db, json.loads(summary.read_text()) if summary.is_file() else None


def _rows(db: Path) -> tuple[int, list[tuple]]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        sessions = con.execute("SELECT id, frames, cells, ended IS NOT NULL FROM sessions ORDER BY id").fetchall()
        return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0], sessions
    finally:
        con.close()


def test_disk_full_stops_cleanly_counts_only_stored_cells_and_restart_works(x86_bundle, tmp_path):
    proc, db, summary = _daemon_under_file_limit(x86_bundle["bundle"], tmp_path, 60_000, 0, 400, max_pending=12)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "were not stored and not counted" in last and "Traceback" not in proc.stderr
    assert summary["stop_reason"] == "database failing" and summary["store"]["pending_cells"] > 12
    n, sessions = _rows(db)
    assert n == summary["session"]["cells"] == summary["store"]["stored_cells"] == sessions[0][2] > 0
    assert summary["cells_processed"] == n + summary["store"]["pending_cells"]  # classified, not all counted
    # the disk has room again: a restart just works, in the same database
    proc, db, summary = _daemon_under_file_limit(x86_bundle["bundle"], tmp_path, 1 << 40, 0, 3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n2, sessions = _rows(db)
    # the full disk may have refused the first session's end row; its counts were committed with its cells
    assert len(sessions) == 2 and sessions[1][3] and n2 == n + summary["session"]["cells"] == n + sessions[1][2]


def test_a_disk_that_fills_and_frees_loses_nothing(x86_bundle, tmp_path):
    # a row per detection (tracking off): enough rows to fill the 40 kB quickly
    proc, db, summary = _daemon_under_file_limit(x86_bundle["bundle"], tmp_path, 40_000, 3.0, 50, tracking=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cannot write the database" in proc.stderr and "writable again" in proc.stderr
    n, sessions = _rows(db)
    assert summary["store"]["errors"]["db"]["count"] > 0 and summary["store"]["pending_cells"] == 0
    assert n == summary["cells_processed"] == summary["session"]["cells"] == sessions[0][2] > 0  # every cell stored


def _run_daemon_in_thread(bundle, spec, sinks, **sections):
    cfg = {"source": {"spec": spec, "fps": 20.0, "stall_timeout": 2.0, "width": 320, "height": 240},
           "runtime": {"bundle": str(bundle)},
           "sinks": sinks, "http": {"port": 0}, **sections}
    from alnett_edge.daemon.config import build_config
    from alnett_edge.daemon.service import Daemon

    daemon = Daemon(build_config(cfg))
    box = {}
    thread = __import__("threading").Thread(target=lambda: box.setdefault("summary", daemon.run()), daemon=True)
    thread.start()
    return daemon, thread, box


def _until(cond, timeout=60.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def _remove_tree(path):
    """rm -rf while the daemon is writing into it: a snapshot written between the listing and the rmdir
    makes one pass fail, so pass again until the tree is gone."""
    for _ in range(100):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
    raise AssertionError(f"{path} could not be removed")


def test_output_folder_deleted_mid_run_is_restored_with_every_row(x86_bundle, tmp_path):
    out = tmp_path / "out"
    daemon, thread, box = _run_daemon_in_thread(
        x86_bundle["bundle"], "synthetic:8",
        {"db": str(out / "cells.db"), "jsonl": str(out / "cells.jsonl"), "snapshots": str(out / "snaps"),
         "snapshot_every": 1}, run={"max_frames": 10_000})
    try:
        _until(lambda: daemon.frames_processed >= 4)
        _remove_tree(out)  # everything: database, WAL, JSONL, snapshots
        after = daemon.frames_processed
        _until(lambda: daemon.frames_processed >= after + 3)  # frames after the loss, however loaded the machine
    finally:  # a failed step must not leave the daemon running past the test
        daemon.request_stop("test")
        thread.join(120)
    summary = box["summary"]
    n, sessions = _rows(out / "cells.db")
    assert summary["store"]["restored"] >= 1 and summary["store_error"] is None
    assert n == summary["cells_processed"] == summary["session"]["cells"] == sessions[0][2] > 0
    assert sessions[0][1] == summary["frames_processed"] >= after + 3
    assert any((out / "snaps").glob("*.jpg")) and (out / "cells.jsonl").is_file()  # copies start again


def _replace_with_file(path):
    """The folder becomes a file, while the daemon (which makes a lost folder again) writes into it:
    remove it and create the file exclusively, again if the daemon made the folder in between."""
    for _ in range(100):
        _remove_tree(path)
        try:
            with open(path, "x") as f:
                f.write("a file where the folder was")
            return
        except (FileExistsError, IsADirectoryError):
            continue
    raise AssertionError(f"{path} kept coming back as a folder")


def test_snapshot_folder_lost_mid_run_is_counted_not_fatal(x86_bundle, tmp_path):
    snaps = tmp_path / "snaps"
    daemon, thread, box = _run_daemon_in_thread(
        x86_bundle["bundle"], "synthetic:9", {"db": str(tmp_path / "c.db"), "snapshots": str(snaps), "snapshot_every": 1},
        run={"max_frames": 10_000})
    try:
        _until(lambda: daemon.frames_processed >= 3)
        _replace_with_file(snaps)  # cannot be made again: every snapshot fails
        after = daemon.frames_processed
        _until(lambda: daemon.frames_processed >= after + 3)  # frames after the loss, however loaded the machine
    finally:  # a failed step must not leave the daemon running past the test
        daemon.request_stop("test")
        thread.join(120)
    s = box["summary"]
    assert s["frames_processed"] >= after + 3 and s["store_error"] is None
    assert s["store"]["errors"]["SnapshotSink"]["count"] >= 1 and "snap" in s["store"]["errors"]["SnapshotSink"]["last"]
    assert _rows(tmp_path / "c.db")[0] == s["session"]["cells"]


@pytest.mark.parametrize("option,where,needle", [
    ("--db", "{tmp}/out", "is a folder"), ("--db", "{tmp}/file.txt/cells.db", "cannot write the database"),
    ("--jsonl", "{tmp}/out", "is a folder"), ("--snapshots", "{tmp}/file.txt/s", "cannot write snapshots"),
    ("--snapshots", "/proc/alnett-snaps", "cannot write snapshots"), ("--summary-json", "{tmp}/out", "is a folder")])
def test_unwritable_sink_paths_are_refused_before_capture(x86_bundle, tmp_path, option, where, needle):
    (tmp_path / "out").mkdir()
    (tmp_path / "file.txt").write_text("x")
    args = ["--db", tmp_path / "d.db"] if option != "--db" else []
    one_line_error(cli("daemon", "--bundle", x86_bundle["bundle"], "--source", "synthetic:1", "--port", "0",
                       "--max-frames", "1", *args, option, where.format(tmp=tmp_path)), needle)


# -- 6. ordinary mistakes are one-line errors ------------------------------------------------------------------

def _safetensors_with_header(src: Path, dest: Path, edit) -> Path:
    import struct

    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = edit(json.loads(raw[8 : 8 + n]))
    body = json.dumps(header).encode()
    dest.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return dest


def test_ordinary_mistakes_are_one_line_errors(x86_bundle, trained, tmp_path):
    bundle = Path(x86_bundle["bundle"])
    cells = tmp_path / "cells"
    cells.mkdir()
    cv2.imwrite(str(cells / "a.png"), np.full((64, 64, 3), 120, np.uint8))
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(cli("predict", bundle, cells, "--out", folder), "is a folder")
    one_line_error(cli("predict", bundle, cells, "--out", tmp_path / "p.txt"), ".csv or .jsonl")
    one_line_error(cli("verify", bundle, "--json", folder), "is a folder")
    one_line_error(cli("bench", bundle, "--json", folder, "--runs", "1"), "is a folder")
    binary = tmp_path / "c.toml"
    binary.write_bytes(bytes(range(256)) * 8)
    one_line_error(cli("daemon", "--config", binary, "--bundle", bundle, "--source", "synthetic:1"), "not a text file")
    one_line_error(cli("daemon", "--bundle", bundle, "--source", "synthetic:abc", "--port", "0", "--db", tmp_path / "d.db"),
                   "integer seed")
    # a bundle whose manifest is a JSON list, whose card has one class, whose golden .npy is a pickle
    for name, edit in (("list", lambda d: (d / "manifest.json").write_text("[1, 2]")),
                       ("nocard", lambda d: (d / "card.json").unlink())):
        bad = tmp_path / name
        shutil.copytree(bundle, bad)
        edit(bad)
        one_line_error(cli("predict", bad, cells), "bundle")

    def rehash(d: Path, rel: str) -> None:
        from alnett_edge.files import sha256_file

        m = json.loads((d / "manifest.json").read_text())
        m["files"][rel] = sha256_file(d / rel)
        (d / "manifest.json").write_text(json.dumps(m))

    one = tmp_path / "one"
    shutil.copytree(bundle, one)
    card = json.loads((one / "card.json").read_text())
    (one / "card.json").write_text(json.dumps({**card, "class_names": ["all"]}))
    rehash(one, "card.json")
    one_line_error(cli("predict", one, cells), "two or more distinct names")
    pickled = tmp_path / "pickled"
    shutil.copytree(bundle, pickled)
    np.save(pickled / "golden" / "inputs.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    rehash(pickled, "golden/inputs.npy")
    one_line_error(cli("verify", pickled), "not a plain numeric .npy")
    # safetensors whose header, or its __metadata__, is a JSON list
    _, result = trained
    for name, edit in (("list", lambda h: [1, 2]), ("meta", lambda h: {**h, "__metadata__": [1]})):
        bad = _safetensors_with_header(Path(result.best), tmp_path / f"{name}.safetensors", edit)
        one_line_error(cli("predict", bad, cells), "not a readable safetensors checkpoint")


def test_usage_mistakes_and_bad_numbers_are_one_line_errors(x86_bundle, tmp_path):
    bundle = x86_bundle["bundle"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(cli("nosuchcommand"), "No such command", "--help")
    one_line_error(cli("calibrate", "--images", tmp_path), "Missing option '--model'")
    one_line_error(cli("predict", bundle, tmp_path, "--threads", "-1"), "--threads")
    one_line_error(cli("bench", bundle, "--max-seconds", "nan", "--runs", "1"), "--max-seconds must be a finite number")
    one_line_error(cli("verify", bundle, "--tolerance", "nan"), "--tolerance must be a finite number")
    one_line_error(cli("model", "info", "alnett-s", "--input-size", "3"), "below the")
    for args in (["train", "--data", tmp_path], ["evaluate", tmp_path / "x.safetensors", "--data", tmp_path],
                 ["data", "synth", "--n", "10"]):  # refused before any work, not after training
        one_line_error(cli(*args, "--out", afile), "is a file; give a folder")
    assert afile.read_text() == "x"


# -- 7. archives are bounded and a truncated one is a one-line error, not "Aborted." ----------------------------

def test_archive_members_are_size_capped_and_truncation_is_reported(x86_bundle, tmp_path, monkeypatch):
    import alnett_edge.bundle as bundle_mod

    archive = tmp_path / "x86.tar.gz"
    shutil.copy(x86_bundle["archive"], archive)
    data = archive.read_bytes()
    truncated = tmp_path / "t.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    cells = tmp_path / "cells"
    cells.mkdir()
    cv2.imwrite(str(cells / "a.png"), np.full((64, 64, 3), 120, np.uint8))
    one_line_error(cli("predict", truncated, cells), "not a readable .tar.gz")
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.extracting").exists()  # nothing half-extracted
    biggest = max(Path(x86_bundle["bundle"]).rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    monkeypatch.setattr(bundle_mod, "MAX_MEMBER_BYTES", biggest.stat().st_size - 1)  # the cap, made small
    with pytest.raises(BundleError, match=f"refusing .*{biggest.name}.* over the"):
        load_bundle(archive)
    assert not (tmp_path / "x86").exists()


# -- 7. HTTP: idle connections time out, connections are bounded, a client that leaves is not a traceback --------

def test_http_is_bounded_and_quiet(capfd, monkeypatch):
    import alnett_edge.daemon.web as web_mod
    from alnett_edge.daemon.http import HttpServer

    monkeypatch.setattr(web_mod, "IO_TIMEOUT_S", 1.0)
    monkeypatch.setattr(web_mod, "MAX_CONNECTIONS", 4)
    server = HttpServer(IdleDaemon(), "127.0.0.1", 0)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]  # say nothing
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            extra.sendall(b"GET /status HTTP/1.0\r\n\r\n")
            assert extra.recv(100).startswith(b"HTTP/1.0 503")  # the pool is full: refused at once
        time.sleep(1.5)  # the idle ones time out and free their slots
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
        for _ in range(5):  # ask, then leave before the answer is read
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST on close
                s.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        time.sleep(0.3)
    finally:
        for s in idle:
            s.close()
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


# -- 8. video: pointed at a still image --------------------------------------------------------------------------

def test_video_source_refuses_a_still_image(x86_bundle, tmp_path):
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), np.full((48, 64, 3), 90, np.uint8))
    one_line_error(cli("daemon", "--bundle", x86_bundle["bundle"], "--source", f"video:{png}", "--port", "0",
                       "--db", tmp_path / "d.db"), "still image, not a video")


# -- 9. a hung camera cannot hold a stop; native decoder lines stay out of the output -----------------------------

def _hung_mjpeg_server(frames: int):
    """An HTTP MJPEG camera that sends ``frames`` frames, then keeps the connection open and silent."""
    import threading

    ok, jpg = cv2.imencode(".jpg", np.full((120, 160, 3), 200, np.uint8))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n")
            for _ in range(frames):
                c.sendall(b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg) + jpg.tobytes() + b"\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, held


def test_stop_is_bounded_with_a_hung_camera(x86_bundle, tmp_path):
    from alnett_edge.daemon.service import STOP_GRACE_S

    srv, held = _hung_mjpeg_server(3)
    try:
        daemon, thread, box = _run_daemon_in_thread(
            x86_bundle["bundle"], f"url:http://127.0.0.1:{srv.getsockname()[1]}/cam.mjpg", {"db": str(tmp_path / "c.db")},
            source={"spec": f"url:http://127.0.0.1:{srv.getsockname()[1]}/cam.mjpg", "stall_timeout": 30.0})
        _until(lambda: daemon.capture.stats.frames >= 1)
        time.sleep(0.5)  # the camera now hangs in the middle of a read
        t0 = time.time()
        daemon.request_stop("SIGTERM")
        thread.join(30)
        took = time.time() - t0
    finally:
        srv.close()
        for c in held:
            c.close()
    assert not thread.is_alive() and took <= STOP_GRACE_S + 3.0 <= 10.0, took
    assert box["summary"]["stop_reason"] == "SIGTERM" and box["summary"]["store_error"] is None


def test_native_decoder_lines_stay_out_of_the_output(x86_bundle, tmp_path):
    import subprocess
    import sys

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(20):
        writer.write(np.full((120, 160, 3), 10 * i, np.uint8))
    writer.release()
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(len(data) // 4, len(data), 200):  # corrupt the JPEG payloads
        data[pos] ^= 0xFF
    clip.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "alnett_edge", "daemon", "--bundle", str(x86_bundle["bundle"]),
                           "--source", f"video:{clip}", "--port", "0", "--db", str(tmp_path / "d.db"), "--fps", "100"],
                          capture_output=True, text=True, timeout=120)
    native = [line for line in proc.stderr.splitlines() if line.startswith(("[", "OpenCV", "[ WARN"))]
    assert not native, proc.stderr[-2000:]
    unreachable = subprocess.run([sys.executable, "-m", "alnett_edge", "daemon", "--bundle", str(x86_bundle["bundle"]),
                                  "--source", "url:http://127.0.0.1:9/cam.mjpg", "--port", "0", "--db", str(tmp_path / "e.db")],
                                 capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 2 and unreachable.stderr.strip().startswith("error: cannot open url:"), unreachable.stderr
    assert "\n" not in unreachable.stderr.strip()


# -- issue 36: the last probes of the earlier surfaces -------------------------------------------------------

def test_a_config_section_that_is_a_value_is_one_line():
    from alnett_edge.daemon.config import build_config

    for section in ("source", "quality", "http"):
        with pytest.raises(ConfigError, match=f"\\[{section}\\] must be a table"):
            build_config({section: 5}, {"source": {"spec": "synthetic:1"}, "runtime": {"bundle": "b"}})


@pytest.mark.parametrize("section,key,value,needle", [
    ("optics", "um_per_px", 1e-30, "not a microscope's"), ("optics", "um_per_px", 80.0, "not a microscope's"),
    ("source", "queue", 10**12, "queue must be 1..256")])
def test_impossible_pixel_sizes_and_queues_are_refused(section, key, value, needle):
    from alnett_edge.daemon.config import build_config

    over = {"source": {"spec": "synthetic:1"}, "runtime": {"bundle": "b"}}
    over.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=needle):
        build_config({}, over).optics.resolve()


def test_a_jsonl_copy_on_a_full_disk_is_one_line_and_leaves_no_empty_file(x86_bundle, tmp_path, caplog):
    import logging

    from alnett_edge.daemon.sinks import JsonlSink

    with pytest.raises(ConfigError, match="No space left on device"):  # /dev/full: every write fails with ENOSPC
        JsonlSink("/dev/full").open({"started": 0})
    one_line_error(cli("daemon", "--bundle", x86_bundle["bundle"], "--source", "synthetic:1", "--max-frames", 3,
                       "--port", 0, "--db", tmp_path / "d.db", "--jsonl", "/dev/full"), "No space left on device")
    # a JSONL file deleted mid-run is started again, and the warning says the lines before it are gone
    sink = JsonlSink(tmp_path / "c.jsonl")
    sink.open({"started": 0})
    (tmp_path / "c.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="alnett_edge.daemon.sinks"):
        sink.close({"cells": 0})
    assert (tmp_path / "c.jsonl").read_text().count("\n") == 1
    assert any("lines written before are not in the new file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("line,needle", [("0 nan 0.5 0.1 0.1", "not a finite number"),
                                         ("0 0.5 inf 0.1 0.1", "not a finite number"),
                                         ("0 1e308 0.5 0.1 0.1", "not a finite number"),  # x w: inf
                                         ("0 0.5 0.5 -0.1 0.1", "inverted or empty"),
                                         ("0 -0.5 0.5 0.2 0.2", "outside"),
                                         ("0 0.5 0.5 3.0 3.0", "outside")])
def test_impossible_truth_boxes_are_refused_not_scored(tmp_path, line, needle):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "f.jpg"), np.full((100, 120, 3), 200, np.uint8))
    (tmp_path / "labels" / "f.txt").write_text(line + "\n")
    one_line_error(cli("field-eval", "--frames", tmp_path, "--um-per-px", 0.1), needle)


def _report_db(tmp_path: Path, summary: str, label: str = "all", rename: str | None = None) -> Path:
    import sqlite3

    from alnett_edge.daemon.sinks import SCHEMA

    db = tmp_path / "r.db"
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    con.execute("INSERT INTO sessions (started, source, model_sha256, summary) VALUES (0, 's', 'x', ?)", (summary,))
    con.execute("INSERT INTO cells (session_id, time, frame_index, label, model_sha256) VALUES (1, 0, 0, ?, 'x')", (label,))
    if rename:
        con.execute(f"ALTER TABLE cells RENAME COLUMN {rename} TO {rename}_v2")
    con.commit()
    con.close()
    return db


def test_report_refuses_databases_it_cannot_read_truly(tmp_path):
    good = json.dumps({"session": {"positive_class": "all", "labels": {"hem": 0, "all": 1}}})
    assert cli("report", _report_db(tmp_path, good), "--out", tmp_path / "ok").exit_code == 0
    one_line_error(cli("report", _report_db(tmp_path, good, rename="label"), "--out", tmp_path / "a"), "no column label")
    one_line_error(cli("report", _report_db(tmp_path, "{not json"), "--out", tmp_path / "b"), "summary is not the JSON")
    one_line_error(cli("report", _report_db(tmp_path, good, label="blast?"), "--out", tmp_path / "c"),
                   "'blast?'", "does not have")


def test_truncated_images_print_only_our_line(x86_bundle, tmp_path):
    import subprocess
    import sys

    ok = tmp_path / "ok.bmp"
    cv2.imwrite(str(ok), np.full((64, 64, 3), 120, np.uint8))
    data = ok.read_bytes()
    (tmp_path / "trunc.bmp").write_bytes(data[: len(data) // 3])
    (tmp_path / "header.bmp").write_bytes(data[:54])
    for name in ("trunc.bmp", "header.bmp"):
        proc = subprocess.run([sys.executable, "-m", "alnett_edge", "predict", str(x86_bundle["bundle"]),
                               str(tmp_path / name)], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and proc.stderr.strip().startswith("error: cannot decode"), proc.stderr
        assert "\n" not in proc.stderr.strip() and "[ERROR" not in proc.stderr, proc.stderr


def test_export_checks_its_inputs_before_writing_anything(trained, tmp_path):
    _, result = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    for gate in (empty, tmp_path / "missing"):
        res = cli("export", result.best, "--target", "x86-cpu", "--precision", "fp32", "--out", tmp_path / "b",
                  "--gate-images", gate)
        one_line_error(res)
        assert not (tmp_path / "b.partial").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c.tar.gz").mkdir()
    one_line_error(cli("export", result.best, "--target", "x86-cpu", "--precision", "fp32", "--out", tmp_path / "c",
                       "--archive"), "c.tar.gz", "folder")
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_an_archive_member_the_manifest_does_not_list_is_never_extracted(x86_bundle, tmp_path):
    import io
    import tarfile

    archive = tmp_path / "x86.tar.gz"
    with tarfile.open(Path(x86_bundle["bundle"]).with_name("x86.tar.gz")) as src, tarfile.open(archive, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        extra = tarfile.TarInfo("x86/payload.bin")
        extra.size = 1 << 20
        dst.addfile(extra, io.BytesIO(b"\0" * extra.size))
    with pytest.raises(BundleError, match="'payload.bin' is not listed"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.extracting").exists()


def test_a_file_that_opens_but_gives_no_frame_is_one_line(x86_bundle, tmp_path):
    from alnett_edge.data.synth import write_smear_video

    write_smear_video(tmp_path / "v.avi", 5, seed=1)
    data = (tmp_path / "v.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:4096])  # the header and no whole frame
    one_line_error(cli("daemon", "--bundle", x86_bundle["bundle"], "--source", f"video:{tmp_path / 'cut.avi'}",
                       "--port", 0, "--db", tmp_path / "d.db"), "cut.avi")


def test_a_file_waits_for_the_pipeline_a_camera_stand_in_does_not(x86_bundle, tmp_path):
    from alnett_edge.data.synth import write_smear_video

    write_smear_video(tmp_path / "v.avi", 60, seed=2)
    out = tmp_path / "s.json"
    res = cli("daemon", "--bundle", x86_bundle["bundle"], "--source", f"video:{tmp_path / 'v.avi'}", "--no-loop",
              "--port", 0, "--db", tmp_path / "d.db", "--queue", 2, "--summary-json", out)
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    assert s["frames_processed"] == 60 and s["frames_dropped"] == 0 and "back-pressure" in s["capture"]["delivery"]
    q = FrameQueue(2)  # a camera stand-in (no wait): the oldest is dropped and counted
    for i in range(5):
        q.put(i)
    assert q.dropped == 3 and [q.get(0), q.get(0)] == [3, 4]


def test_healthz_is_answered_when_every_connection_is_held(monkeypatch):
    import alnett_edge.daemon.web as web_mod
    from alnett_edge.daemon.http import HttpServer

    monkeypatch.setattr(web_mod, "MAX_CONNECTIONS", 4)
    server = HttpServer(IdleDaemon(), "127.0.0.1", 0)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]  # half-open: say nothing
    try:
        time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body["ok"] and "busy" in body["reason"]
        with pytest.raises(urllib.error.HTTPError) as err:  # anything else: busy
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=5)
        assert err.value.code == 503
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_a_failing_database_stops_the_daemon_in_bounded_time_too(tmp_path):
    from alnett_edge.daemon.sinks import Recorder, SqliteSink

    rec = Recorder(SqliteSink(tmp_path / "d.db"), [], max_pending_cells=10_000, max_pending_s=0.2)
    assert not rec.over_limit
    rec.failing_since = time.time() - 0.5  # what a failed write sets (see test_disk_full_stops_cleanly...)
    assert rec.over_limit and rec.pending_cells == 0


def test_a_swap_during_a_disk_fault_loses_no_row(x86_bundle, rpi_bundle, tmp_path):
    """The output folder deleted (database and WAL gone) and a new bundle asked for at once: the database
    is written again from the open connection, the swap happens, and every processed cell is a row
    carrying the model that classified it."""
    import sqlite3

    out = tmp_path / "out"
    daemon, thread, box = _run_daemon_in_thread(x86_bundle["bundle"], "synthetic:9", {"db": str(out / "cells.db")},
                                                run={"max_frames": 10_000}, quality={"out_of_distribution": "record"})
    try:
        _until(lambda: daemon.frames_processed >= 4)
        _remove_tree(out)
        new_sha = daemon.request_swap(rpi_bundle["bundle"])
        after = daemon.frames_processed
        _until(lambda: daemon.frames_processed >= after + 4 and daemon.model_sha256 == new_sha)
    finally:
        daemon.request_stop("test")
        thread.join(120)
    summary = box["summary"]
    n, _ = _rows(out / "cells.db")
    assert summary["store"]["restored"] >= 1 and summary["store_error"] is None and n == summary["cells_processed"] > 0
    con = sqlite3.connect(out / "cells.db")
    shas = {s for (s,) in con.execute("SELECT DISTINCT model_sha256 FROM cells")}
    con.close()
    assert new_sha in shas and shas <= {m["model_sha256"] for m in summary["models"]}
