"""Labelling a harvest (issue 32, item 2): the label book on real all-fields cells, the label view's HTTP
surface under hostile requests, the page driven by keyboard in a real browser (Chromium), Cohen's kappa
between two labellers, and training that reads the labels (a rejected cell left out)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED, chromium_browser, cli, http_request, one_line_error, require_shared

from alnett_edge.errors import ConfigError, DataError

def _rows(ds: Path) -> list[dict[str, str]]:
    with open(ds / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def harvest(tmp_path_factory) -> Path:
    """A harvest of 4 Benign and 4 Pre real all-fields fields (class folders of links to ../shared)."""
    root = require_shared(SHARED / "all-fields")
    tmp = tmp_path_factory.mktemp("label")
    for cls in ("Benign", "Pre"):
        (tmp / "src" / cls).mkdir(parents=True)
        for f in sorted((root / cls).iterdir())[:4]:
            (tmp / "src" / cls / f.name).symlink_to(f)
    res = cli("harvest", tmp / "src", "--out", tmp / "ds", "--labels-from-folders", "--classes", "hem=Benign",
              "--classes", "all=Pre")
    assert res.exit_code == 0, res.output
    return tmp / "ds"


@pytest.fixture
def ds(harvest, tmp_path) -> Path:
    """A fresh copy of the harvest (labels start empty); the crops' frames stay where they were."""
    out = tmp_path / "ds"
    shutil.copytree(harvest, out)
    return out


def test_cohen_kappa_matches_a_worked_example():
    from alnett_edge.vision.labels import cohen_kappa

    # 50 items: both yes 20, a yes / b no 5, a no / b yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["y", "y"], ["y", "y"]) is None  # chance agreement is total: undefined
    assert cohen_kappa([], []) is None


def test_label_undo_skip_and_two_labellers(ds):
    from alnett_edge.vision.labels import LabelBook, agreement

    ana = LabelBook(ds, "ana", "harvest")
    n = len(ana.cells)
    assert n >= 10 and ana.choices == ("hem", "all", "reject")
    first, second = [c.cell_id for c in ana.next_cells(2)]
    ana.label(first, "all")
    rows = {r["cell_id"]: r for r in _rows(ds)}
    assert rows[first]["label"] == "all" and rows[first]["labelled_by"] == "ana"
    assert ana.next_cells(1)[0].cell_id == second and ana.progress()["labelled"] == 1
    ana.skip(second)  # skipped: the next one comes first, the skipped cell only at the end
    assert ana.next_cells(1)[0].cell_id not in (first, second)
    assert ana.undo() == first and ana.next_cells(1)[0].cell_id == first
    assert {r["cell_id"]: r for r in _rows(ds)}[first]["label"] == ""  # undone in the manifest too
    assert ana.undo() is None

    ids = list(ana.cells)
    for i, cid in enumerate(ids[:10]):
        ana.label(cid, "all" if i < 6 else "hem")
    bo = LabelBook(ds, "bo", "labellers")
    for i, cid in enumerate(ids[:10]):  # bo disagrees on two cells (0 and 9)
        bo.label(cid, "all" if 0 < i < 6 or i == 9 else "hem")
    rep = agreement(ds)
    (pair,) = rep["pairs"]
    assert pair["cells"] == 10 and pair["observed"] == 0.8
    # po 0.8; ana all 6 / hem 4, bo all 6 / hem 4 -> pe 0.6² + 0.4² = 0.52, kappa (0.8 - 0.52) / 0.48
    assert pair["kappa"] == pytest.approx(0.28 / 0.48, abs=1e-4)
    assert pair["disagreements"] == {"all/hem": 1, "hem/all": 1}
    rows = {r["cell_id"]: r for r in _rows(ds)}
    assert rows[ids[0]]["label"] == "hem" and rows[ids[0]]["labelled_by"] == "bo"  # the latest label
    bo.undo()  # bo's last label taken back: the manifest falls back to ana's
    rows = {r["cell_id"]: r for r in _rows(ds)}
    assert rows[ids[9]]["label"] == "hem" and rows[ids[9]]["labelled_by"] == "ana"
    # a third labeller, ordered by disagreement, sees the two disputed cells first
    cy = LabelBook(ds, "cy", "labellers")
    assert cy.next_cells(1)[0].cell_id == ids[0]

    res = cli("label", ds, "--agreement", "--json", ds.parent / "agree.json")
    assert res.exit_code == 0, res.output
    assert "ana & bo" in res.output and "kappa" in res.output
    assert json.loads((ds.parent / "agree.json").read_text())["pairs"][0]["cells"] == 9  # bo took one back


def test_uncertain_and_disagree_orders(ds):
    from alnett_edge.vision.harvest import read_manifest, write_manifest
    from alnett_edge.vision.labels import LabelBook

    rows, columns = read_manifest(ds)
    probs = [0.97, 0.52, 0.05, 0.30, 0.71] + [0.99] * (len(rows) - 5)
    for r, p in zip(rows, probs):
        r["prob_hem"], r["prob_all"] = f"{1 - p:.2f}", f"{p:.2f}"
    write_manifest(ds, rows, [*columns, "prob_hem", "prob_all"])
    ids = [r["cell_id"] for r in rows]
    unsure = LabelBook(ds, "ana", "uncertain").next_cells(3)
    assert [c.cell_id for c in unsure] == [ids[1], ids[3], ids[4]]  # |p - 0.5|: 0.02, 0.20, 0.21
    weak = {r["cell_id"]: r["weak_label"] for r in rows}
    first = LabelBook(ds, "ana", "disagree").next_cells(1)[0]
    p = probs[ids.index(first.cell_id)]
    assert (p >= 0.5) != (weak[first.cell_id] == "all"), (p, weak[first.cell_id])  # the model contradicts the field


def test_training_reads_labels_and_leaves_rejected_cells_out(ds):
    from alnett_edge.data.sources import load_samples
    from alnett_edge.vision.labels import LabelBook

    book = LabelBook(ds, "ana", "harvest")
    ids = list(book.cells)
    book.label(ids[0], "reject")
    book.label(ids[1], "hem" if book.cells[ids[1]].weak_label == "all" else "all")  # a person overrules the field
    samples = load_samples(ds)
    assert len(samples) == len(ids) - 1
    by_name = {s.path.name: s for s in samples}
    overruled = by_name[Path(book.cells[ids[1]].filename).name]
    assert not overruled.weak and overruled.label_name != book.cells[ids[1]].weak_label
    assert sum(s.weak for s in samples) == len(ids) - 2


def test_a_harvest_rerun_keeps_labels_set_while_it_ran(ds, harvest):
    from alnett_edge.vision.harvest import Harvester, HarvestOptions
    from alnett_edge.vision.labels import LabelBook

    h = Harvester(ds, HarvestOptions(True, ("hem=Benign", "all=Pre")))  # reads the manifest now
    book = LabelBook(ds, "ana", "harvest")
    cid = next(iter(book.cells))
    book.label(cid, "all")  # a labeller saves while the harvest runs
    h.run(harvest.parent / "src")
    rows = {r["cell_id"]: r for r in _rows(ds)}
    assert rows[cid]["label"] == "all" and rows[cid]["labelled_by"] == "ana"


def test_label_book_refusals(ds, tmp_path):
    from alnett_edge.vision.labels import LabelBook

    for bad in ("../x", "", "a b", "x" * 41):
        with pytest.raises(ConfigError, match="labeller name"):
            LabelBook(ds, bad)
    with pytest.raises(ConfigError, match="--order"):
        LabelBook(ds, "ana", "random")
    with pytest.raises(ConfigError, match="not a harvest"):
        LabelBook(tmp_path / "empty", "ana")
    book = LabelBook(ds, "ana")
    cid = next(iter(book.cells))
    with pytest.raises(DataError, match="not one of"):
        book.label(cid, "maybe")
    with pytest.raises(DataError, match="no cell"):
        book.label("0123456789abcdef", "all")
    # a label file edited into nonsense, and a manifest pointing a crop outside the dataset
    book.label(cid, "all")
    (ds / "labels" / "ana.csv").write_text("cell_id,label,time\nnot-an-id,all,x\n")
    one_line_error(cli("label", ds, "--agreement"), "ana.csv:2")
    (ds / "labels" / "ana.csv").write_bytes(b"\xff\xfe\x00garbage")
    one_line_error(cli("label", ds, "--labeller", "ana"), "not a text CSV")
    (ds / "labels" / "ana.csv").unlink()
    rows = _rows(ds)
    rows[0]["filename"] = "../../../../etc/passwd"
    with open(ds / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="outside"):
        LabelBook(ds, "ana").crop_path(rows[0]["cell_id"])
    one_line_error(cli("label", tmp_path / "nothing-here"), "not a harvest")


@pytest.fixture
def server(ds):
    from alnett_edge.daemon.labelpage import serve_labels
    from alnett_edge.vision.labels import LabelBook

    book = LabelBook(ds, "ana", "harvest")
    srv = serve_labels(book, "127.0.0.1", 0)
    yield book, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_the_label_view_refuses_hostile_requests(server, tmp_path):
    from alnett_edge.daemon.labelpage import serve_labels

    book, port = server
    cid = next(iter(book.cells))
    js = {"Content-Type": "application/json"}
    ok = json.dumps({"cell_id": cid, "label": "all"}).encode()
    assert http_request(port, "GET", "/label")[0] == 200
    assert http_request(port, "GET", f"/cells/{cid}.png")[1][:8] == b"\x89PNG\r\n\x1a\n"
    status, jpg = http_request(port, "GET", f"/cells/{cid}/context.jpg")
    assert status == 200 and jpg[:2] == b"\xff\xd8"
    # a DNS-rebinding page: its own name in Host
    assert http_request(port, "GET", "/api/label/next", headers={"Host": "evil.example:80"})[0] == 421
    # a cross-site form (no JSON), an oversized body, a body that is not an object, bad fields
    assert http_request(port, "POST", "/api/label", f"cell_id={cid}&label=all".encode(),
                    {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
    assert http_request(port, "POST", "/api/label", b"x" * 5000, js)[0] == 413
    assert http_request(port, "POST", "/api/label", b"[1, 2]", js)[0] == 400
    assert http_request(port, "POST", "/api/label", json.dumps({"cell_id": cid, "label": "<b>"}).encode(), js)[0] == 400
    assert http_request(port, "POST", "/api/label", json.dumps({"cell_id": ["x"], "label": "all"}).encode(), js)[0] == 400
    # paths: only cell ids, never files
    for path in ("/cells/../../etc/passwd.png", "/cells/%2e%2e%2fmanifest.png", "/cells/zz.png", "/etc/passwd"):
        assert http_request(port, "GET", path)[0] == 404, path
    assert book.progress()["labelled"] == 0  # nothing above changed anything
    status, body = http_request(port, "POST", "/api/label", ok, js)
    assert status == 200 and json.loads(body)["progress"]["labelled"] == 1
    # beyond localhost a token is needed; with one, a request without it is refused
    with pytest.raises(ConfigError, match="set a token"):
        serve_labels(book, "0.0.0.0", 0)
    srv = serve_labels(book, "0.0.0.0", 0, token="s3cret")
    try:
        p = srv.server_address[1]
        assert http_request(p, "GET", "/api/label/next")[0] == 401
        assert http_request(p, "GET", "/api/label/next?token=s3cret")[0] == 401  # never from a URL
        assert http_request(p, "GET", "/api/label/next", headers={"Authorization": "s3cret"})[0] == 401  # bare: no
        assert http_request(p, "GET", "/api/label/next", headers={"Authorization": "Bearer s3cret"})[0] == 200
        status, body = http_request(p, "GET", "/label")
        assert status == 401 and b"needs its token" in body  # a person gets the login form
        assert http_request(p, "POST", "/api/label/undo", b"{}", {**js, "Authorization": "Bearer s3cret"})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_label_page_in_a_browser(server, tmp_path):
    """Keyboard labelling in Debian's Chromium (Playwright): a key per class, skip, undo, progress."""
    book, port = server
    order = [c.cell_id for c in book.next_cells(4)]
    with chromium_browser() as (sync_api, browser):
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://localhost:{port}/label")
        count = page.locator("#count")
        sync_api.expect(count).to_have_text(f"0 / {len(book.cells)} labelled")
        src = page.locator("#cell").get_attribute("src")
        assert src.startswith(f"/cells/{order[0]}.png")
        # the cell at true scale: the canvas in µm at 8 screen px per µm, whatever the session's px size
        assert page.locator("#cell").evaluate("e => e.width") == round(book.canvas_um * 8)
        page.keyboard.press("2")  # all
        sync_api.expect(count).to_have_text(f"1 / {len(book.cells)} labelled")
        page.keyboard.press("1")  # hem
        sync_api.expect(count).to_have_text(f"2 / {len(book.cells)} labelled")
        page.keyboard.press("s")  # skip the third
        sync_api.expect(page.locator("#cell")).to_have_attribute("src", f"/cells/{order[3]}.png")
        page.keyboard.press("x")  # reject the fourth
        sync_api.expect(count).to_have_text(f"3 / {len(book.cells)} labelled")
        page.keyboard.press("u")  # undo: the rejected cell comes back
        sync_api.expect(count).to_have_text(f"2 / {len(book.cells)} labelled")
        sync_api.expect(page.locator("#cell")).to_have_attribute("src", f"/cells/{order[3]}.png")
        sync_api.expect(page.locator("#sessions")).to_contain_text("Benign")
        page.screenshot(path=str(tmp_path / "label.png"))
        assert (tmp_path / "label.png").stat().st_size > 10_000 and not errors, errors
    rows = {r["cell_id"]: r for r in _rows(book.dataset)}
    assert rows[order[0]]["label"] == "all" and rows[order[1]]["label"] == "hem"
    assert rows[order[2]]["label"] == "" and rows[order[3]]["label"] == ""
