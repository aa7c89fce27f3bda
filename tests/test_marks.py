"""Marking cell centres by hand (``alnett-edge mark``): the mark book's CSV round trip through field-eval
and the centre detector's trainer, the detector's proposals, resuming, every refusal, the HTTP surface
under hostile requests, and the page driven by mouse and keyboard in a real browser (Chromium)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import chromium_browser, cli, http_request, one_line_error

from alnett_edge.errors import ConfigError, DataError


@pytest.fixture
def fields(tmp_path):
    from alnett_edge.data.synth import CrowdSpec, generate_crowded

    generate_crowded(tmp_path / "gen", 3, CrowdSpec(um_per_px=0.25, clusters=1, cluster_size=(3, 3), singles=1,
                                                    smudges=0), seed=7)
    return tmp_path / "gen" / "JPEGImages"


def _book(fields, tmp_path, detector=True):
    from alnett_edge.vision.detector import CellDetector
    from alnett_edge.vision.marks import MarkBook

    return MarkBook(fields, tmp_path / "marks.csv", CellDetector(um_per_px=0.25) if detector else None)


def test_marks_round_trip_through_field_eval_and_resume(fields, tmp_path):
    from alnett_edge.vision.annotations import read_truth
    from alnett_edge.vision.fieldeval import field_eval
    from alnett_edge.vision.optics import OpticsConfig

    book = _book(fields, tmp_path)
    s = book.state(0)
    assert not s["saved"] and s["proposed"] and s["points"]  # the detector's cells offered, nothing saved yet
    assert not (tmp_path / "marks.csv").exists()
    mine = s["points"][:2] + [{"x": 10.5, "y": 20.25, "kind": "smudge"}]
    s = book.save(0, mine)
    assert s["saved"] and s["marked_frames"] == 1 and s["cells"] == 2 and s["smudges"] == 1
    assert book.save(2, [])["marked_frames"] == 2  # a frame with no cell is a mark too
    _, truths = read_truth(tmp_path / "marks.csv", fields)
    by = {t.image.name: t for t in truths}
    assert [round(c, 1) for c in by[book.images[0].name].centres[1]] == [round(mine[1]["x"], 1), round(mine[1]["y"], 1)]
    assert by[book.images[0].name].smudges == [(10.5, 20.2)] or by[book.images[0].name].smudges == [(10.5, 20.3)]
    assert by[book.images[2].name].centres == []
    again = _book(fields, tmp_path, detector=False)  # resumed: the marks read back, the next frame unmarked
    assert again.first_unmarked() == 1 and again.state(0)["points"] == book.state(0)["points"]
    assert again.state(1)["points"] == [] and not again.state(1)["proposed"]
    rep, _ = field_eval(None, tmp_path / "marks.csv", optics=OpticsConfig(um_per_px=0.25), images=fields)
    assert rep["frames"] == 2 and rep["found_once"] is not None and rep["smudges"]["true"] == 1


def test_mark_book_refusals(fields, tmp_path):
    from alnett_edge.vision.marks import MAX_POINTS, MarkBook

    book = _book(fields, tmp_path, detector=False)
    for index in (-1, 3, "0", True, None, 1.0):
        with pytest.raises(DataError, match="frame index"):
            book.save(index, [])
    bad = [None, {"points": []}, [{"x": 1}], [{"x": 1, "y": 2, "kind": "rbc"}], [{"x": -1, "y": 2}],
           [{"x": 1, "y": 1e9}], [{"x": math.nan, "y": 2}], [{"x": "1", "y": 2}], [{"x": True, "y": 2}],
           [{"x": 1, "y": 1}] * (MAX_POINTS + 1), ["1,2"]]
    for points in bad:
        with pytest.raises(DataError):
            book.save(0, points)
    assert not (tmp_path / "marks.csv").exists()  # nothing above wrote anything
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        MarkBook(tmp_path / "empty", tmp_path / "m.csv")
    with pytest.raises(DataError, match="not found"):
        MarkBook(tmp_path / "nope", tmp_path / "m.csv")
    with pytest.raises(DataError, match="not a file"):
        MarkBook(fields, tmp_path / "empty")
    (tmp_path / "broken.csv").write_text("image,x,y\nnot-there.jpg,1,2\n")
    with pytest.raises(DataError, match="not-there.jpg"):
        MarkBook(fields, tmp_path / "broken.csv")
    one_line_error(cli("mark", tmp_path / "empty", "--out", tmp_path / "m.csv"), "no images")
    one_line_error(cli("mark", fields, "--out", tmp_path / "broken.csv", "--propose", "none"), "not-there.jpg")
    one_line_error(cli("mark", fields, "--out", tmp_path / "m.csv", "--propose", tmp_path / "x.onnx",
                       "--um-per-px", "0.25"), "x.onnx")


@pytest.fixture
def server(fields, tmp_path):
    from alnett_edge.daemon.markpage import serve_marks

    book = _book(fields, tmp_path)
    srv = serve_marks(book, "127.0.0.1", 0)
    try:
        yield book, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_mark_view_refuses_hostile_requests(server, tmp_path):
    from alnett_edge.daemon.markpage import serve_marks

    book, port = server
    js = {"Content-Type": "application/json"}
    assert http_request(port, "GET", "/mark")[0] == 200
    status, jpg = http_request(port, "GET", "/frames/1.jpg")
    assert status == 200 and jpg[:2] == b"\xff\xd8"
    status, body = http_request(port, "GET", "/api/mark/state")
    assert status == 200 and json.loads(body)["index"] == 0 and json.loads(body)["proposed"]
    for path in ("/frames/9.jpg", "/frames/../../etc/passwd", "/frames/%2e%2e.jpg", "/api/mark/state?i=-1",
                 "/api/mark/state?i=abc", "/api/mark/state?i=99"):
        assert http_request(port, "GET", path)[0] == 404, path
    assert http_request(port, "GET", "/mark", headers={"Host": "evil.example:80"})[0] == 421
    assert http_request(port, "POST", "/api/mark", b"index=0", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert http_request(port, "POST", "/api/mark", b"[1]", js)[0] == 400
    for body in ({"index": 0, "points": [{"x": 1e6, "y": 1}]}, {"index": "../x", "points": []},
                 {"index": 0, "points": "1,2"}):
        assert http_request(port, "POST", "/api/mark", json.dumps(body).encode(), js)[0] == 400, body
    assert not (tmp_path / "marks.csv").exists()
    status, body = http_request(port, "POST", "/api/mark", json.dumps({"index": 1, "points": [{"x": 5, "y": 6}]}).encode(), js)
    assert status == 200 and json.loads(body)["marked_frames"] == 1 and (tmp_path / "marks.csv").is_file()
    with pytest.raises(ConfigError, match="set a token"):
        serve_marks(book, "0.0.0.0", 0)


def test_the_mark_page_in_a_browser(server, tmp_path):
    """Mouse marking in Debian's Chromium (Playwright): the proposals shown, a click removes one, a click
    adds one, a shift-click a smudge cell, n saves and moves on, undo."""
    book, port = server
    proposed = book.state(0)["points"]
    with chromium_browser() as (sync_api, browser):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://localhost:{port}/mark")
        info = page.locator("#info")
        sync_api.expect(info).to_contain_text(f"{len(proposed)} cells, 0 smudge")
        sync_api.expect(info).to_contain_text("proposed by the detector")
        canvas = page.locator("#marks")
        scale = canvas.evaluate("c => c.width") / book.state(0)["width"]
        first = proposed[0]
        canvas.click(position={"x": first["x"] * scale, "y": first["y"] * scale})  # on a mark: removed
        sync_api.expect(info).to_contain_text(f"{len(proposed) - 1} cells, 0 smudge")
        canvas.click(position={"x": 12 * scale, "y": 14 * scale})  # an empty place: a cell added
        canvas.click(position={"x": 40 * scale, "y": 30 * scale}, modifiers=["Shift"])  # a smudge cell
        sync_api.expect(info).to_contain_text(f"{len(proposed)} cells, 1 smudge")
        page.keyboard.press("u")  # undo the smudge
        sync_api.expect(info).to_contain_text(f"{len(proposed)} cells, 0 smudge")
        canvas.click(position={"x": 40 * scale, "y": 30 * scale}, modifiers=["Shift"])
        page.screenshot(path=str(tmp_path / "mark.png"))
        page.keyboard.press("n")
        sync_api.expect(page.locator("#count")).to_have_text("1 / 3 frames marked")
        sync_api.expect(info).to_contain_text(book.names[1])
        assert (tmp_path / "mark.png").stat().st_size > 10_000 and not errors, errors
    saved = book.marks[book.names[0]]
    assert sum(k == "cell" for *_, k in saved) == len(proposed) and sum(k == "smudge" for *_, k in saved) == 1
    assert all(abs(x - first["x"]) + abs(y - first["y"]) > 2 for x, y, _ in saved)  # the removed one is gone
    assert any(abs(x - 12) < 1 and abs(y - 14) < 1 for x, y, k in saved if k == "cell")
