"""A new model without a restart (issue 32): ``POST /bundle`` and SIGHUP swap the running daemon's bundle
between two frames; rows carry the hash of the model that classified them; a bundle that failed its
gate or was half-copied is refused in one line and the running model stays."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import cli, one_line_error

from alnett_edge.daemon.config import build_config
from alnett_edge.daemon.service import Daemon
from alnett_edge.data.synth import SMEAR_UM_PER_PX, write_smear_video
from alnett_edge.errors import AlnettError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, bundle: str, port: int = 0, **run) -> dict:
    video = tmp_path / "v.avi"
    if not video.exists():
        write_smear_video(video, 30, seed=4)
    return build_config({}, {"source": {"spec": f"video:{video}", "fps": 30, "loop": True},
                             "runtime": {"bundle": bundle}, "optics": {"um_per_px": SMEAR_UM_PER_PX},
                             "sinks": {"db": str(tmp_path / "cells.db")}, "http": {"port": port, "token": "s3cret"},
                             "quality": {"out_of_distribution": "record"}, "run": run})


def _rows(db: Path) -> list[tuple[str, int, int]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT model_sha256, frame_index, classified FROM cells").fetchall()
    finally:
        con.close()


def test_ten_swaps_during_a_30_fps_replay_lose_no_row(x86_bundle, rpi_bundle, tmp_path):
    a, b = x86_bundle["bundle"], rpi_bundle["bundle"]
    d = Daemon(_config(tmp_path, str(a), max_frames=240))
    shas = []

    def swapper() -> None:
        for i in range(10):
            time.sleep(0.55)
            shas.append(d.request_swap(b if i % 2 == 0 else a))

    t = threading.Thread(target=swapper)
    t.start()
    summary = d.run()
    t.join()
    rows = _rows(tmp_path / "cells.db")
    assert len(shas) == 10 and len(set(shas)) == 2 and summary["frames_processed"] > 150
    models = summary["models"]
    assert len(models) >= 10 and [m["model_sha256"] for m in models[1:]] == shas[: len(models) - 1]
    # stored rows = processed cells, every one counted once, under the model that classified it
    assert len(rows) == summary["cells_processed"] == summary["session"]["cells"] > 0
    assert sum(m["session"]["cells"] for m in {m["model_sha256"]: m for m in models}.values()) == len(rows)
    # a row the model classified was decided by the model active in its last frame (tracks holding crops
    # at a swap are decided by the model that watched them); a track abstained without a good observation
    # carries the hash of the model active when it ended
    starts = [m["from_frame"] for m in models]
    for sha, frame, classified in rows:
        if classified and frame >= 0:
            active = max(i for i, s in enumerate(starts) if s <= frame)
            assert sha == models[active]["model_sha256"], (sha, frame, starts)
    assert {sha for sha, _, c in rows if c} == set(shas)


def test_a_bundle_that_failed_its_gate_or_was_half_copied_is_refused(x86_bundle, tmp_path):
    failed, half = tmp_path / "failed", tmp_path / "half"
    shutil.copytree(x86_bundle["bundle"], failed)
    manifest = json.loads((failed / "manifest.json").read_text())
    (failed / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    shutil.copytree(x86_bundle["bundle"], half)
    onnx = next(half.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    d = Daemon(_config(tmp_path, str(x86_bundle["bundle"]), _free_port(), max_frames=45))
    d.start()
    try:
        base = f"http://127.0.0.1:{d.http.port}/bundle"

        def post(body: bytes, headers: dict) -> tuple[int, dict]:
            req = urllib.request.Request(base, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"{}")

        ok = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        for bundle, needle in ((failed, "failed its accuracy gate"), (half, "does not match its sha256"),
                               (tmp_path / "nowhere", "bundle not found")):
            code, answer = post(json.dumps({"bundle": str(bundle)}).encode(), ok)
            assert code == 409 and needle in answer["error"] and "\n" not in answer["error"], answer
        assert post(json.dumps({"bundle": str(failed)}).encode(), {**ok, "Authorization": "Bearer nope"})[0] == 401
        assert post(json.dumps({"bundle": str(failed)}).encode(), {"Content-Type": "application/json"})[0] == 401
        assert post(b"bundle=x", {**ok, "Content-Type": "application/x-www-form-urlencoded"})[0] == 415  # cross-site form
        assert post(b"[1, 2]", ok)[0] == 400 and post(b"{not json", ok)[0] == 400
        code, answer = post(json.dumps({"bundle": str(x86_bundle["bundle"])}).encode(), ok)
        assert code == 202 and len(answer["model_sha256"]) == 64
        with pytest.raises(AlnettError, match="failed its accuracy gate"):
            d.request_swap(failed)
        assert d._pending is not None and d._pending[0] == Path(x86_bundle["bundle"])  # only the good one waits
    finally:
        d.close()


def test_changes_need_a_configured_token(x86_bundle, tmp_path):
    cfg = _config(tmp_path, str(x86_bundle["bundle"]), _free_port(), max_frames=30)
    cfg.http.token = ""
    d = Daemon(cfg)
    d.start()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{d.http.port}/bundle", data=b'{"bundle": "x"}',
                                     headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 403 and "token" in json.loads(err.value.read())["error"]
    finally:
        d.close()


def test_sighup_swaps_to_the_bundle_the_config_names_now(x86_bundle, rpi_bundle, tmp_path):
    config = tmp_path / "daemon.toml"
    config.write_text(f'[source]\nspec = "synthetic:0"\n[runtime]\nbundle = "{rpi_bundle["bundle"]}"\n')
    d = Daemon(_config(tmp_path, str(x86_bundle["bundle"]), max_frames=30))
    try:
        d.reload(config).join(timeout=60)
        assert d._pending is not None and d._pending[0] == Path(rpi_bundle["bundle"])
        config.write_text('[source]\nspec = "synthetic:0"\n[runtime]\nbundle = "/nowhere"\n')
        d.reload(config).join(timeout=60)  # one logged line; the pending swap stays
        assert d._pending[0] == Path(rpi_bundle["bundle"])
    finally:
        d.close()


def test_the_service_entry_swaps_on_sighup(x86_bundle, rpi_bundle, tmp_path):
    """``systemctl reload`` (SIGHUP) on the unit's own command: the config now names another bundle."""
    import signal
    import subprocess
    import sys

    video = tmp_path / "v.avi"
    write_smear_video(video, 30, seed=5)
    config = tmp_path / "daemon.toml"

    def write(bundle: str) -> None:
        config.write_text(f'[source]\nspec = "video:{video}"\nfps = 30\nloop = true\n[runtime]\nbundle = "{bundle}"\n'
                          f'[optics]\num_per_px = {SMEAR_UM_PER_PX}\n[sinks]\ndb = "{tmp_path / "c.db"}"\n'
                          '[http]\nport = 0\n[run]\nduration = 12\n[quality]\nout_of_distribution = "record"\n')

    write(str(x86_bundle["bundle"]))
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "alnett_edge.daemon", str(config), "--summary-json", str(summary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "c.db").exists() and time.time() < deadline:  # running: the database is open
            time.sleep(0.2)
        time.sleep(2)
        write(str(rpi_bundle["bundle"]))
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert [m["bundle"] for m in s["models"]] == [str(x86_bundle["bundle"]), str(rpi_bundle["bundle"])]
    assert s["models"][1]["from_frame"] > 0 and "Traceback" not in err
    assert len({sha for sha, _, _ in _rows(tmp_path / "c.db")}) == 2


def _post(port: int, path: str, body: bytes, token: str = "s3cret") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _gate_failed_copy(dest: Path) -> Path:
    """The shipped centre detector with a card saying its gate on marked frames was not met."""
    import onnx

    from alnett_edge.card import CENTRE_CARD_KEY, CentreCard
    from alnett_edge.vision.centres import BUILTIN_FILE

    proto = onnx.load(str(BUILTIN_FILE))
    entry = next(p for p in proto.metadata_props if p.key == CENTRE_CARD_KEY)
    card = CentreCard.from_json(entry.value)
    gate = {"frames": "kept/", "max_extra": 0.1, "rows": [], "met": False}
    entry.value = CentreCard(**{**card.__dict__, "training": {**card.training, "gate": gate}}).to_json()
    onnx.save(proto, str(dest))
    return dest


def test_the_centre_detector_is_swapped_without_a_restart(x86_bundle, tmp_path):
    """The lab loop's last step for the detector: ``POST /detector`` puts a centre detector to work from
    the next frame (the bundle, the pixel size and the session stay); a model that cannot be read or
    failed its gate is refused in one line and the running detector stays."""
    from alnett_edge.data.synth import CrowdSpec
    from alnett_edge.files import sha256_file
    from alnett_edge.vision.centres import BUILTIN_FILE

    video = tmp_path / "crowded.avi"
    write_smear_video(video, 24, seed=3, crowded=CrowdSpec())
    cfg = build_config({}, {"source": {"spec": f"video:{video}", "fps": 8, "loop": False, "queue": 64},
                            "runtime": {"bundle": x86_bundle["bundle"]}, "optics": {"um_per_px": CrowdSpec().um_per_px},
                            "sinks": {"db": str(tmp_path / "c.db")}, "http": {"port": _free_port(), "token": "s3cret"}})
    d = Daemon(cfg)
    answers: dict[str, tuple[int, dict]] = {}
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")

    def operator() -> None:
        while d.http is None or d.frames_processed < 4:
            time.sleep(0.05)
        port = d.http.port
        answers["gate"] = _post(port, "/detector", json.dumps({"centres": str(_gate_failed_copy(tmp_path / "g.onnx"))}).encode())
        answers["missing"] = _post(port, "/detector", json.dumps({"centres": str(tmp_path / "nowhere.onnx")}).encode())
        answers["garbage"] = _post(port, "/detector", json.dumps({"centres": str(garbage)}).encode())
        answers["shape"] = _post(port, "/detector", b'{"centres": 3}')
        answers["token"] = _post(port, "/detector", b'{"centres": "builtin"}', token="nope")
        answers["ok"] = _post(port, "/detector", b'{"centres": "builtin"}')

    t = threading.Thread(target=operator)
    t.start()
    summary = d.run()
    t.join()
    for key, needle in (("gate", "did not meet its gate"), ("missing", "not found"), ("garbage", "garbage.onnx")):
        code, answer = answers[key]
        assert code == 409 and needle in answer["error"] and "\n" not in answer["error"], (key, answer)
    assert answers["shape"][0] == 400 and answers["token"][0] == 401
    code, answer = answers["ok"]
    assert code == 202 and answer["accepted"]["sha256"] == sha256_file(BUILTIN_FILE), answer
    rule, learned = summary["detectors"]
    assert rule["centres"] == "rule-based" and rule["from_frame"] == 0 and learned["centres"] == "builtin"
    assert 4 <= learned["from_frame"] < 24 and summary["frames_processed"] == 24
    assert summary["detector"]["centres"] == "builtin" and d.detector.finder.path == BUILTIN_FILE
    assert d.detector.um_per_px == CrowdSpec().um_per_px and summary["session"]["cells"] > 0
    # nor does the daemon start with it in its config (field-eval may still measure it)
    toml = tmp_path / "gate.toml"
    toml.write_text(f'[detector]\ncentres = "{tmp_path / "g.onnx"}"\n')
    one_line_error(cli("daemon", "--config", toml, "--bundle", x86_bundle["bundle"], "--source", f"video:{video}",
                       "--port", 0, "--db", tmp_path / "g.db"), "did not meet its gate", "[detector] centres")
    fields = tmp_path / "fields"
    assert cli("data", "synth", "--out", fields, "--n", "20", "--crowded", "2", "--crowded-um", "0.25").exit_code == 0
    res = cli("field-eval", fields / "crowded", "--um-per-px", "0.25", "--centres", tmp_path / "g.onnx")
    assert res.exit_code == 0 and "found once" in res.output, res.output


def test_sighup_swaps_the_centre_detector_the_config_names_now(x86_bundle, tmp_path):
    config = tmp_path / "daemon.toml"
    bundle = x86_bundle["bundle"]
    d = Daemon(_config(tmp_path, str(bundle), max_frames=30))
    try:
        config.write_text(f'[source]\nspec = "synthetic:0"\n[runtime]\nbundle = "{bundle}"\n[detector]\ncentres = "builtin"\n')
        d.reload(config).join(timeout=60)
        assert d._pending is None and d._pending_detector is not None and d._pending_detector[0].centres == "builtin"
        d._apply_detector(7)
        assert d.detectors[-1]["centres"] == "builtin" and d.detectors[-1]["from_frame"] == 7
        assert d.detector.finder is not None  # the pixel size was configured: the detector exists already
        config.write_text(f'[source]\nspec = "synthetic:0"\n[runtime]\nbundle = "{bundle}"\n[detector]\ncentres = ""\n')
        d.reload(config).join(timeout=60)
        d._apply_detector(9)
        assert d.detector.finder is None and d.status()["detector"]["centres"] == "rule-based"
    finally:
        d.close()
