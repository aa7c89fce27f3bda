"""The device page (issue 33) against a daemon replaying synthetic smear frames: in Debian's Chromium driven
by Playwright (the page loads and paints, the live numbers change, the gallery fills, a label survives a
reload, a slide is started and stopped, the differential equals /status, the token is asked for and
never put in a URL), and its HTTP surface under hostile requests (Host, Origin, bare tokens, read-only,
the 21st viewer)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from conftest import free_port, http_request, wait_for

from alnett_edge.daemon.config import build_config
from alnett_edge.daemon.service import Daemon

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _daemon(bundle: str, tmp: Path, **http) -> tuple[Daemon, threading.Thread]:
    port = free_port()
    cfg = build_config({}, {"source": {"spec": "synthetic:7", "fps": 15.0},
                            "runtime": {"bundle": bundle}, "sinks": {"db": str(tmp / "cells.db")},
                            "quality": {"out_of_distribution": "record"},
                            "http": {"port": port, "host": "127.0.0.1", **http}, "run": {"session_name": "slide A"}})
    d = Daemon(cfg)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    wait_for(lambda: d.http is not None and d.frames_processed >= 2)
    return d, t


def _port(d: Daemon) -> int:
    return d.http.port


@pytest.fixture
def daemon_port(x86_bundle, tmp_path):
    d, t = _daemon(x86_bundle["bundle"], tmp_path, label_dataset=str(tmp_path / "labels"), labeller="ana")
    try:
        yield d, _port(d)
    finally:
        d.request_stop()
        t.join(20)


def _browser(sync_api):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (apt-get install chromium; .ci/run installs it)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    return sync_api.sync_playwright()


def test_the_device_page_in_a_browser(daemon_port, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    d, port = daemon_port
    base = f"http://127.0.0.1:{port}"
    expect = sync_api.expect
    with _browser(sync_api) as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
            page.goto(base + "/")
            expect(page.locator("#session")).to_contain_text("slide A")
            expect(page.locator("#detector")).to_have_text("cells: rule-based")  # which detector finds the cells
            # the live numbers change without a reload
            frames = page.locator("#frames")
            expect(frames).not_to_have_text("–")
            paint = page.evaluate("() => performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
            first = dict(paint).get("first-contentful-paint") or dict(paint).get("first-paint")
            assert first is not None and first <= 1000, paint  # first paint within 1 s
            before = int(frames.inner_text())
            expect(frames).not_to_have_text(str(before), timeout=5000)
            expect(page.locator("#live")).to_have_attribute("src", re.compile(r"/live\.jpg"))
            # the gallery fills; a cell is labelled from its dialog, and the label survives a reload
            expect(page.locator("#gallery .cell").first).to_be_visible(timeout=15000)
            page.locator("#gallery .cell").first.click()
            expect(page.locator("#dlg")).to_be_visible()
            page.locator("#dlgbtns button[data-label='hem']").click()
            expect(page.locator("#msg")).to_contain_text("saved as hem")
            page.locator("#dlgclose").click()
            page.screenshot(path=str(tmp_path / "device-page.png"), full_page=True)
            page.reload()
            expect(page.locator("#gallery")).to_contain_text("labelled hem", timeout=5000)
            rows = list(csv.DictReader(open(tmp_path / "labels" / "manifest.csv", newline="")))
            assert len(rows) == 1 and rows[0]["label"] == "hem" and rows[0]["labelled_by"] == "ana"
            assert (tmp_path / "labels" / rows[0]["filename"]).is_file()
            # stop the slide from the page: counts freeze, and the page's differential is /status's
            page.locator("#stop").click()
            expect(page.locator("#session")).to_contain_text("not recording", timeout=5000)
            page.wait_for_timeout(600)
            status = json.loads(http_request(port, "GET", "/status")[1])
            sess = status["session"]
            counts = page.locator("#counts").inner_text()
            for label, n in sess["labels"].items():
                assert f"{label}{' (blast)' if label == sess['positive_class'] else ''}\t{n}" in counts, (counts, sess)
            for reason, n in sess["abstained"].items():
                assert f"abstained: {reason}\t{n}" in counts, (counts, sess)
            ratio = sess["blast_ratio"]
            expect(page.locator("#ratio")).to_have_text("blasts " + ("–" if ratio is None else f"{100 * ratio:.1f} %"))
            # a new slide, named and with a target, from the page
            page.locator("#sname").fill("slide B")
            page.locator("#starget").fill("40")
            page.locator("#start").click()
            expect(page.locator("#session")).to_contain_text("slide B", timeout=5000)
            expect(page.locator("#progresstext")).to_contain_text("40", timeout=5000)
            expect(page.locator("#sessions")).to_contain_text("slide A", timeout=5000)
            page.screenshot(path=str(tmp_path / "device-page-2.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    s = json.loads(http_request(port, "GET", "/api/sessions")[1])["sessions"]
    assert [x["name"] for x in s[:2]] == ["slide B", "slide A"] and s[1]["ended"] is not None
    code, csv_body = http_request(port, "GET", f"/sessions/{s[1]['id']}/cells.csv")
    assert code == 200 and csv_body.count(b"\n") == s[1]["cells"] + 1
    code, html = http_request(port, "GET", f"/sessions/{s[1]['id']}/report.html")
    assert code == 200 and b"<html" in html.lower()
    shutil.copy(tmp_path / "device-page.png", tmp_path / "kept.png")  # the screenshots are real PNGs
    assert (tmp_path / "kept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_token_is_asked_for_and_never_in_a_url(x86_bundle, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    d, t = _daemon(x86_bundle["bundle"], tmp_path, token="s3cret-token")
    port = _port(d)
    try:
        assert http_request(port, "GET", "/api/live")[0] == 401
        assert http_request(port, "GET", "/status?token=s3cret-token")[0] == 401  # never from a URL
        assert http_request(port, "GET", "/status", headers={"Authorization": "s3cret-token"})[0] == 401  # no bare token
        assert http_request(port, "GET", "/status", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        with _browser(sync_api) as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page()
                urls: list[str] = []
                page.on("request", lambda r: urls.append(r.url))
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#t").fill("wrong")
                page.locator("#t").press("Enter")
                sync_api.expect(page.locator("#m")).to_have_text("wrong token")
                page.locator("#t").fill("s3cret-token")
                page.locator("#t").press("Enter")
                sync_api.expect(page.locator("#frames")).not_to_have_text("–", timeout=10000)
                cookie = next(c for c in page.context.cookies() if c["name"] == "alnett_session")
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "s3cret" not in cookie["value"]
            finally:
                browser.close()
        assert urls and not any("s3cret" in u for u in urls), urls
    finally:
        d.request_stop()
        t.join(20)


def test_hostile_requests_to_the_page(daemon_port):
    d, port = daemon_port
    js = {"Content-Type": "application/json"}
    assert http_request(port, "GET", "/", headers={"Host": "evil.example"})[0] == 421  # DNS rebinding
    code, _ = http_request(port, "POST", "/api/session/stop", b"{}", {**js, "Origin": "http://evil.example"})
    assert code == 403 and d.recording  # another site's page cannot stop the slide
    assert http_request(port, "POST", "/api/session/stop", b"name=x", {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    for body in (b'{"name": "<script>x</script>"}', b'{"target": -1}', b'{"target": "9"}', b'{"name": 5}',
                 b'{"target": true}'):
        assert http_request(port, "POST", "/api/session/start", body, js)[0] == 400, body
    assert http_request(port, "POST", "/api/gallery/999999/label", b'{"label": "hem"}', js)[0] == 404
    wait_for(lambda: d.gallery.latest())
    n = d.gallery.latest()[0].n
    assert http_request(port, "POST", f"/api/gallery/{n}/label", b'{"label": "../../x"}', js)[0] == 409
    for path in ("/gallery/abc.png", "/gallery/../../etc/passwd", "/sessions/1/../../x", "/sessions/1/report.htm"):
        assert http_request(port, "GET", path)[0] == 404, path
    # 20 pages watching: the 21st is told the device is busy, and one that watched before still gets in
    codes = [http_request(port, "GET", "/api/live", headers={"X-Viewer": f"v{i}"})[0] for i in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 503
    status, body = http_request(port, "GET", "/api/live", headers={"X-Viewer": "v21"})
    assert status == 503 and b"busy" in body
    assert http_request(port, "GET", "/api/live", headers={"X-Viewer": "v3"})[0] == 200


def test_a_read_only_page_changes_nothing(x86_bundle, tmp_path):
    d, t = _daemon(x86_bundle["bundle"], tmp_path, read_only=True)
    port = _port(d)
    try:
        js = {"Content-Type": "application/json"}
        assert http_request(port, "POST", "/api/session/stop", b"{}", js)[0] == 403
        assert http_request(port, "POST", "/bundle", b'{"bundle": "x"}', js)[0] == 403
        code, html = http_request(port, "GET", "/")
        assert code == 200 and b"read-only" in html and b'id="start"' not in html
        assert d.recording
    finally:
        d.request_stop()
        t.join(20)
