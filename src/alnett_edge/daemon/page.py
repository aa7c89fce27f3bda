"""The device page (``GET /`` on the daemon's HTTP port): the live view, the differential, the gallery
of decided cells, the sessions, and a link to the label view (``[http] label_dataset``).

The page is one Jinja2 template with a small script that polls ``/api/live`` (status, latency over the
last minute) every :data:`POLL_MS` ms and the annotated frame ``/live.jpg``; no framework, no build
step, no asset from the internet (a Pi at the microscope has none). The daemon renders the annotated
frame only while a page is watching, at most :data:`LIVE_FPS` times a second.

Routes (with the checks of :mod:`alnett_edge.daemon.web`): ``GET /``, ``/api/live``, ``/live.jpg``,
``/api/gallery?show=all|CLASS|abstained|REASON``, ``/gallery/<n>.png``, ``/gallery/<n>/context.jpg``,
``/api/sessions``, ``/sessions/<id>/report.html``, ``/sessions/<id>/cells.csv``; ``POST
/api/gallery/<n>/label`` ``{"label"}`` (the cell, with a person's label, goes into the label dataset:
the own-microscope loop's training cells), ``POST /api/session/start`` ``{"name", "target"}`` and
``POST /api/session/stop``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from jinja2 import Environment

from alnett_edge.daemon.web import Reply, Request
from alnett_edge.errors import AlnettError
from alnett_edge.vision.cells import context_jpeg
from alnett_edge.vision.record import CellRecord

if TYPE_CHECKING:  # the service imports this module
    from alnett_edge.daemon.service import Daemon

log = logging.getLogger(__name__)

#: the page asks for news this often (ms): more than 2 updates a second
POLL_MS = 400
#: the annotated frame is rendered at most this often while a page watches
LIVE_FPS = 5.0
#: a page that has not polled for this long no longer counts as watching (s)
WATCH_S = 3.0
#: the live answer is shared by every page asking within this long (20 pages cost what one does)
LIVE_CACHE_S = 0.25
#: pages watching at once; the next is told the device is busy
MAX_VIEWERS = 20
#: decided cells kept for the gallery
GALLERY_SIZE = 240
#: the gallery draws every cell at this many screen pixels per µm (as the label view)
PX_PER_UM = 4.0
_GALLERY_URL = re.compile(r"^/gallery/(\d{1,9})(\.png|/context\.jpg)$")
_SESSION_URL = re.compile(r"^/sessions/(\d{1,9})/(report\.html|cells\.csv)$")
_LABEL_URL = re.compile(r"^/api/gallery/(\d{1,9})/label$")
_NAME = re.compile(r"^[\w .,:()+-]{0,80}$")


@dataclass
class GalleryCell:
    n: int
    record: CellRecord
    crop_png: bytes
    context_jpg: bytes | None  # the frame around the cell when it was decided in view; None after it left
    session: str
    um_per_px: float | None
    labelled: str = ""  # what a person said of it on the page

    def to_dict(self, blast: tuple[str, ...]) -> dict[str, Any]:
        r = self.record
        conf = max(r.prob_all or 0.0, r.prob_hem or 0.0) if r.prob_all is not None else None
        return {"n": self.n, "time": r.time, "track": r.track_id, "label": r.label, "reason": r.abstain_reason,
                "prob_all": r.prob_all, "confidence": None if conf is None else round(conf, 3),
                "observations": r.observations, "classified": r.classified, "frame": r.frame_index,
                "blast": r.label in blast, "context": self.context_jpg is not None, "labelled": self.labelled}


class Gallery:
    """The latest decided cells with their crops (thread-safe; the processing loop adds, the page reads)."""

    def __init__(self, size: int = GALLERY_SIZE) -> None:
        self._cells: deque[GalleryCell] = deque(maxlen=size)
        self._n = 0
        self._lock = threading.Lock()

    def add(self, record: CellRecord, frame_rgb: np.ndarray | None, frame_index: int, session: str,
            um_per_px: float | None) -> None:
        if record.crop is None:
            return
        ok, png = cv2.imencode(".png", cv2.cvtColor(record.crop, cv2.COLOR_RGB2BGR))
        if not ok:
            return
        context = None
        if frame_rgb is not None and record.frame_index == frame_index:  # decided while in view
            x0, y0, x1, y1 = record.box
            context = context_jpeg(frame_rgb, record.box, int(1.5 * max(x1 - x0, y1 - y0)), max_side=320)
        with self._lock:
            self._n += 1
            self._cells.append(GalleryCell(self._n, record, png.tobytes(), context, session, um_per_px))

    def get(self, n: int) -> GalleryCell | None:
        with self._lock:
            return next((c for c in self._cells if c.n == n), None)

    def latest(self, show: str = "all", limit: int = 60) -> list[GalleryCell]:
        with self._lock:
            cells = list(self._cells)[::-1]
        if show == "abstained":
            cells = [c for c in cells if c.record.label is None]
        elif show.startswith("reason:"):
            cells = [c for c in cells if c.record.abstain_reason == show[7:]]
        elif show != "all":
            cells = [c for c in cells if c.record.label == show]
        return cells[:limit]

    def clear(self) -> None:
        with self._lock:
            self._cells.clear()


class PageRoutes:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._viewers: dict[str, float] = {}
        self._lock = threading.Lock()
        self._live: tuple[float, dict[str, Any]] = (0.0, {})  # one answer for every page polling within LIVE_CACHE_S
        self._lat: tuple[float, dict[str, Any]] = (-1e9, {})  # the latency of the last minute, once a second

    # -- reading ------------------------------------------------------------------------------------
    def _viewer(self, request: Request) -> bool:
        """Count this page (its X-Viewer id) among those watching; False when MAX_VIEWERS others are."""
        vid = (request.headers.get("X-Viewer") or "")[:64]
        now = time.monotonic()
        with self._lock:
            self._viewers = {k: t for k, t in self._viewers.items() if now - t < WATCH_S}
            if vid not in self._viewers and len(self._viewers) >= MAX_VIEWERS:
                return False
            self._viewers[vid] = now
        self.daemon.page_watched()
        return True

    def live(self) -> dict[str, Any]:
        """What the page shows, computed at most once per LIVE_CACHE_S for all the pages watching."""
        now = time.monotonic()
        with self._lock:
            at, cached = self._live
            if now - at < LIVE_CACHE_S and cached:
                return {**cached, "viewers": len(self._viewers)}
        fresh = self._compute_live()
        with self._lock:
            self._live = (now, fresh)
        return fresh

    def _compute_live(self) -> dict[str, Any]:
        d = self.daemon
        st = d.status()
        now = time.monotonic()
        if now - self._lat[0] >= 1.0:  # a minute's percentiles move slowly: once a second is enough
            self._lat = (now, d.latency_last_minute())
        lat = self._lat[1]
        return {"status": st, "latency": lat, "recording": d.recording, "session_name": d.session_name,
                "session_id": d.recorder.db.session_id if d.recording else None, "read_only": d.cfg.http.read_only,
                "viewers": len(self._viewers), "positive": d.agg.positive, "blast": list(d.agg.blast),
                "classes": list(d.card.class_names),
                "target": d.target_cells}

    def get(self, path: str, request: Request) -> Reply | None:
        d = self.daemon
        if path == "/":
            html = Environment(autoescape=True).from_string(PAGE).render(
                poll_ms=POLL_MS, read_only=d.cfg.http.read_only, label=bool(d.cfg.http.label_dataset),
                px_per_um=PX_PER_UM, canvas_um=d.card.input.canvas_um or 0)
            return Reply.html(html)
        if path == "/api/live":
            if not self._viewer(request):
                return Reply.json(503, {"error": f"busy: {MAX_VIEWERS} pages are watching this device; try later"})
            return Reply.json(200, self.live())
        if path == "/live.jpg":
            self.daemon.page_watched()
            jpg = d.latest_preview
            return Reply(200, jpg, "image/jpeg") if jpg else Reply.text(404, "no frame yet")
        if path == "/api/gallery":
            show = request.arg("show", "all")[:80]
            return Reply.json(200, {"cells": [c.to_dict(d.agg.blast) for c in d.gallery.latest(show)]})
        m = _GALLERY_URL.match(path)
        if m:
            cell = d.gallery.get(int(m.group(1)))
            if cell is None:
                return Reply.text(404, "no such cell (the gallery keeps the latest)")
            if m.group(2) == ".png":
                return Reply(200, cell.crop_png, "image/png")
            return Reply(200, cell.context_jpg, "image/jpeg") if cell.context_jpg else \
                Reply.text(404, "no frame context (the cell was decided after it left the field)")
        if path == "/api/sessions":
            return Reply.json(200, {"sessions": self._sessions()})
        m = _SESSION_URL.match(path)
        if m:
            return self._session_file(int(m.group(1)), m.group(2))
        return None

    def _db(self) -> sqlite3.Connection:
        con = sqlite3.connect(f"file:{self.daemon.recorder.db.path}?mode=ro", uri=True, timeout=2)
        con.row_factory = sqlite3.Row
        return con

    def _sessions(self) -> list[dict[str, Any]]:
        try:
            con = self._db()
            try:
                rows = con.execute("SELECT id, name, started, ended, frames, cells FROM sessions ORDER BY id DESC "
                                   "LIMIT 50").fetchall()
                blast = self.daemon.agg.blast
                counts = {r[0]: (r[1], r[2]) for r in con.execute(
                    f"SELECT session_id, SUM(label IN ({','.join('?' * len(blast))})), SUM(label IS NOT NULL) FROM cells "
                    "WHERE session_id IN (SELECT id FROM sessions ORDER BY id DESC LIMIT 50) GROUP BY session_id", blast)}
            finally:
                con.close()
        except sqlite3.Error as exc:
            log.warning("page: the session list could not be read: %s", exc)
            return []
        out = []
        for r in rows:
            blasts, classified = counts.get(r["id"], (0, 0))
            out.append({"id": r["id"], "name": r["name"] or "", "started": r["started"], "ended": r["ended"],
                        "frames": r["frames"], "cells": r["cells"], "classified": classified or 0,
                        "blast_ratio": round(blasts / classified, 4) if classified else None})
        return out

    def _session_file(self, sid: int, what: str) -> Reply:
        from alnett_edge.daemon.report import build_report

        if what == "report.html":
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    build_report(self.daemon.recorder.db.path, tmp, session=sid)
                except AlnettError as exc:
                    return Reply.text(404, str(exc))
                return Reply.html((Path(tmp) / "report.html").read_text(encoding="utf-8"))
        try:
            con = self._db()
            try:
                cur = con.execute("SELECT * FROM cells WHERE session_id = ? ORDER BY id", (sid,))
                buf = io.StringIO()
                w = csv.writer(buf)
                w.writerow([c[0] for c in cur.description])
                w.writerows(cur)
            finally:
                con.close()
        except sqlite3.Error as exc:
            return Reply.text(503, f"the database could not be read: {exc}")
        return Reply(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                     {"Content-Disposition": f'attachment; filename="session-{sid}-cells.csv"'})

    # -- changing -----------------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], request: Request) -> Reply | None:
        d = self.daemon
        try:
            if path == "/api/session/start":
                name, target = body.get("name", ""), body.get("target", d.target_cells)
                if not isinstance(name, str) or not _NAME.match(name):
                    return Reply.json(400, {"error": "a session name: up to 80 letters, digits, spaces and .,:()+-"})
                if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= 1_000_000:
                    return Reply.json(400, {"error": "target: a whole number of cells, 0 to 1000000 (0: none)"})
                d.request_session(name, target)
                return Reply.json(202, {"starting": name, "target": target})
            if path == "/api/session/stop":
                d.request_session(None, None)
                return Reply.json(202, {"stopping": d.session_name})
            m = _LABEL_URL.match(path)
            if m:
                cell = d.gallery.get(int(m.group(1)))
                if cell is None:
                    return Reply.json(404, {"error": "no such cell (the gallery keeps the latest)"})
                where = d.label_gallery_cell(cell, body.get("label"))
                return Reply.json(200, {"labelled": cell.labelled, "dataset": where})
        except AlnettError as exc:
            return Reply.json(409, {"error": str(exc)})
        return None


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alnett-edge · device</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --bg:#14171c; --panel:#1d2128; --ink:#e8ebef; --dim:#9aa3ae; --accent:#ffd600; --all:#ff6b6b;
        --hem:#4dabf7; --abs:#adb5bd; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:14px/1.4 system-ui, sans-serif; }
header { display:flex; flex-wrap:wrap; gap:14px; align-items:center; padding:10px 16px; background:var(--panel); }
header h1 { font-size:16px; margin:0; }
header .dim, .dim { color:var(--dim); }
a { color:var(--accent); }
main { display:grid; grid-template-columns: minmax(0, 3fr) minmax(300px, 2fr); gap:14px; padding:14px; }
.panel { background:var(--panel); border-radius:8px; padding:12px; }
h2 { font-size:14px; margin:0 0 8px; color:var(--dim); font-weight:600; text-transform:uppercase; letter-spacing:.04em; }
#live { width:100%; background:#000; border-radius:4px; display:block; min-height:120px; }
.stats { display:flex; flex-wrap:wrap; gap:16px; margin-top:8px; }
.stat b { font-size:18px; display:block; font-variant-numeric:tabular-nums; }
table { border-collapse:collapse; width:100%; }
td, th { padding:3px 6px; border-bottom:1px solid #2b313a; text-align:left; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; }
.bar { height:10px; background:#2b313a; border-radius:5px; overflow:hidden; }
.bar > div { height:100%; background:var(--accent); width:0; }
#ratio { font-size:26px; font-weight:600; }
#gallery { display:flex; flex-wrap:wrap; gap:8px; }
.cell { background:#0e1013; border-radius:4px; padding:4px; cursor:pointer; border:2px solid transparent; font-size:12px; }
.cell.blast { border-color:var(--all); } .cell.other { border-color:var(--hem); } .cell.abst { border-color:var(--abs); }
.cell img { display:block; }
button, select, input { font:inherit; color:var(--ink); background:#2b313a; border:1px solid #3a414c;
                        border-radius:6px; padding:5px 10px; }
button:hover { border-color:var(--accent); }
#busy, #msg { color:var(--accent); }
dialog { background:var(--panel); color:var(--ink); border:1px solid #3a414c; border-radius:8px; max-width:90vw; }
dialog img { display:block; margin:6px 0; max-width:80vw; }
svg text { fill:var(--dim); font-size:10px; }
</style></head>
<body>
<header><h1>alnett-edge</h1>
<span class="dim" id="model"></span><span class="dim" id="optics"></span><span class="dim" id="detector"></span>
<span id="session"></span>
{% if not read_only %}<span id="controls"><input id="sname" placeholder="slide name" size="14">
<input id="starget" type="number" min="0" placeholder="target cells" style="width:8em">
<button id="start">start slide</button><button id="stop">stop</button></span>{% else %}<span class="dim">read-only</span>{% endif %}
{% if label %}<a href="/label">label cells</a>{% endif %}
<span id="busy" role="status"></span></header>
<main>
<div>
<section class="panel"><h2>Live</h2><img id="live" alt="the annotated frame">
<div class="stats">
<div class="stat"><b id="fps">–</b>fps</div><div class="stat"><b id="dropped">–</b>dropped</div>
<div class="stat"><b id="reconnects">–</b>reconnects</div><div class="stat"><b id="queue">–</b>queued</div>
<div class="stat"><b id="frames">–</b>frames</div></div>
<h2 style="margin-top:12px">Latency, last minute (frame to decision)</h2>
<svg id="chart" width="100%" height="90" viewBox="0 0 600 90" preserveAspectRatio="none"></svg>
<table id="stages"></table></section>
<section class="panel" style="margin-top:14px"><h2>Cells</h2>
<select id="show"><option value="all">all decided cells</option></select>
<span class="dim">click a cell to see its frame or label it</span>
<div id="gallery" style="margin-top:8px"></div></section>
</div>
<div>
<section class="panel"><h2>Differential</h2>
<div id="ratio">–</div><div class="dim" id="ratioci"></div><div id="decision" style="margin:6px 0"></div>
<div class="bar" title="progress toward the target"><div id="progress"></div></div>
<div class="dim" id="progresstext"></div>
<table id="counts" style="margin-top:8px"></table></section>
<section class="panel" style="margin-top:14px"><h2>Sessions</h2><table id="sessions"></table></section>
</div>
</main>
<dialog id="dlg"><div id="dlginfo"></div><img id="dlgcell" alt="the cell as the model saw it">
<img id="dlgctx" alt="the frame around it"><div id="dlgbtns"></div>
<div id="msg" role="status"></div><button id="dlgclose">close</button></dialog>
<script>
const viewer = Math.random().toString(36).slice(2);
const post = {"Content-Type": "application/json"};
const pxPerUm = {{ px_per_um }}, canvasUm = {{ canvas_um }}, readOnly = {{ 'true' if read_only else 'false' }};
let live = null, frameNo = 0, lastGallery = 0;
const $ = id => document.getElementById(id);
function esc(t) { const d = document.createElement("div"); d.textContent = t == null ? "" : String(t); return d.innerHTML; }
function pct(v) { return v == null ? "–" : (100 * v).toFixed(1) + " %"; }

function chart(series) {
  const svg = $("chart"), w = 600, h = 90, pts = series.filter(p => p.p99 != null);
  if (!pts.length) { svg.innerHTML = ""; return; }
  const max = Math.max(...pts.map(p => p.p99)) * 1.1 || 1;
  const line = key => pts.map(p => ((60 + p.age) / 60 * w).toFixed(1) + "," + (h - p[key] / max * (h - 12)).toFixed(1)).join(" ");
  svg.innerHTML = '<polyline fill="none" stroke="#ff6b6b" stroke-width="1.5" points="' + line("p99") + '"/>' +
    '<polyline fill="none" stroke="#4dabf7" stroke-width="1.5" points="' + line("p50") + '"/>' +
    pts.map(p => '<circle r="2.5" fill="#ff6b6b" cx="' + ((60 + p.age) / 60 * w).toFixed(1) + '" cy="' +
      (h - p.p99 / max * (h - 12)).toFixed(1) + '"/>').join("") +
    '<text x="4" y="10">' + max.toFixed(0) + ' ms · p50 blue, p99 red · one point per 5 s</text>';
}

function show(d) {
  live = d;
  const s = d.status, sess = s.session;
  $("model").textContent = s.backend + " " + s.precision + " · model " + s.model_sha256.slice(0, 10);
  const o = s.optics || {};
  $("optics").textContent = o.um_per_px ? (+o.um_per_px).toPrecision(4) + " µm/px (" + o.source + ")"
                                        : "optics: " + (o.source || "?");
  const dt = s.detector || {};
  $("detector").textContent = "cells: " + (dt.sha256 ? String(dt.centres).split("/").pop() + " " + dt.sha256.slice(0, 10)
                                                     : (dt.centres || "?"));
  $("session").innerHTML = d.recording ? "recording <b>" + esc(d.session_name || "session " + d.session_id) + "</b>"
                                       : "<b>not recording</b>";
  $("fps").textContent = s.fps.toFixed(1);
  $("dropped").textContent = s.frames_dropped; $("reconnects").textContent = s.capture.reconnects;
  $("queue").textContent = s.queue_depth; $("frames").textContent = s.frames_processed;
  const lat = d.latency;
  chart(lat.series);
  $("stages").innerHTML = "<tr><th>stage</th><th class=n>p50 ms</th><th class=n>p99 ms</th></tr>" +
    Object.entries(lat.stages).map(([k, v]) => "<tr><td>" + esc(k) + "</td><td class=n>" + v.p50_ms.toFixed(1) +
      "</td><td class=n>" + v.p99_ms.toFixed(1) + "</td></tr>").join("");
  $("ratio").textContent = "blasts " + pct(sess.blast_ratio);
  $("ratioci").textContent = sess.blast_ratio_ci95 ? "95 % interval " + pct(sess.blast_ratio_ci95[0]) + " – " +
    pct(sess.blast_ratio_ci95[1]) + " of " + sess.classified + " classified cells" : "no classified cell yet";
  const dec = sess.decision;
  $("decision").innerHTML = dec ? "slide: <b>" + (dec.all ? "ALL" : "benign") + "</b> <span class=dim>(" +
    esc(dec.score.replace(/_/g, " ")) + " " + dec.value + (dec.all ? " > " : " ≤ ") + dec.threshold + ", " + dec.cells +
    " cells)</span>" : "";
  const target = d.target || 0;
  $("progress").style.width = target ? Math.min(100, 100 * sess.classified / target) + "%" : "0";
  $("progresstext").textContent = !target ? "no target set" : sess.classified >= target ?
    "target of " + target + " cells reached (" + sess.classified + ")" : sess.classified + " of " + target + " cells toward the target";
  const rows = Object.entries(sess.labels).map(([k, v]) => "<tr><td>" + esc(k) + (d.blast.includes(k) ? " (blast)" : "") +
      "</td><td class=n>" + v + "</td></tr>")
    .concat(Object.entries(sess.abstained).map(([k, v]) => "<tr><td class=dim>abstained: " + esc(k) +
      "</td><td class=n>" + v + "</td></tr>"))
    .concat(sess.smudges ? ["<tr><td class=dim>smudge cells (counted apart)</td><td class=n>" + sess.smudges +
      "</td></tr>"] : []);
  $("counts").innerHTML = rows.join("");
  const sel = $("show"), have = new Set([...sel.options].map(o => o.value));
  const opts = [...d.classes, "abstained", ...Object.keys(sess.abstained).map(r => "reason:" + r)];
  for (const v of opts) if (!have.has(v)) sel.add(new Option(v.startsWith("reason:") ? "abstained: " + v.slice(7) : v, v));
}

async function poll() {
  try {
    const r = await fetch("/api/live", {headers: {"X-Viewer": viewer}});
    const d = await r.json();
    if (r.status === 503) { $("busy").textContent = d.error; }
    else if (r.ok) {
      $("busy").textContent = "";
      show(d);
      const img = new Image();
      img.onload = () => { $("live").src = img.src; };
      img.src = "/live.jpg?n=" + (++frameNo);
      if (Date.now() - lastGallery > 2000) { lastGallery = Date.now(); gallery(); sessions(); }
    }
  } catch (e) { $("busy").textContent = "the device does not answer"; }
  setTimeout(poll, {{ poll_ms }});
}

async function gallery() {
  const r = await fetch("/api/gallery?show=" + encodeURIComponent($("show").value));
  if (!r.ok) return;
  const side = Math.round((canvasUm || 20) * pxPerUm);
  $("gallery").innerHTML = (await r.json()).cells.map(c => {
    const cls = c.label == null ? "abst" : c.blast ? "blast" : "other";
    const what = c.label == null ? "abstained: " + esc(c.reason) : esc(c.label) + " " + c.confidence.toFixed(2);
    return '<div class="cell ' + cls + '" style="width:' + (side + 12) + 'px" data-n="' + c.n + '"><img src="/gallery/' + c.n + '.png" width="' + side +
      '" height="' + side + '" alt="cell ' + c.n + '"><div>' + what + '</div><div class=dim>track ' + esc(c.track) +
      " · " + c.observations + " obs" + (c.labelled ? " · <b>labelled " + esc(c.labelled) + "</b>" : "") + "</div></div>";
  }).join("");
  document.querySelectorAll("#gallery .cell").forEach(e => e.onclick = () => open_(+e.dataset.n));
}

async function sessions() {
  const r = await fetch("/api/sessions");
  if (!r.ok) return;
  $("sessions").innerHTML = "<tr><th>#</th><th>slide</th><th>started</th><th class=n>cells</th><th class=n>blasts</th><th></th></tr>" +
    (await r.json()).sessions.map(s => "<tr><td>" + s.id + "</td><td>" + esc(s.name) + "</td><td>" +
      new Date(s.started * 1000).toLocaleTimeString() + "</td><td class=n>" + s.classified + "</td><td class=n>" +
      pct(s.blast_ratio) + '</td><td><a href="/sessions/' + s.id + '/report.html">report</a> <a href="/sessions/' +
      s.id + '/cells.csv">CSV</a></td></tr>').join("");
}

function open_(n) {
  const cells = [...document.querySelectorAll("#gallery .cell")].map(e => +e.dataset.n);
  $("dlgcell").src = "/gallery/" + n + ".png";
  $("dlgcell").width = $("dlgcell").height = Math.round((canvasUm || 20) * pxPerUm * 2);
  $("dlgctx").src = "/gallery/" + n + "/context.jpg";
  $("dlgctx").onerror = () => { $("dlgctx").alt = "no frame context (the cell was decided after it left the field)"; };
  $("msg").textContent = "";
  $("dlginfo").textContent = "cell " + n;
  $("dlgbtns").innerHTML = readOnly ? "" : "Its true class: " + [...live.classes, "reject"].map(c =>
    '<button data-label="' + esc(c) + '">' + (c === "reject" ? "not a cell" : esc(c)) + "</button>").join(" ");
  document.querySelectorAll("#dlgbtns button").forEach(b => b.onclick = async () => {
    const r = await fetch("/api/gallery/" + n + "/label", {method: "POST", headers: post,
                                                            body: JSON.stringify({label: b.dataset.label})});
    const d = await r.json();
    $("msg").textContent = r.ok ? "saved as " + d.labelled + " in " + d.dataset : d.error;
    gallery();
  });
  $("dlg").showModal();
}
$("dlgclose").onclick = () => $("dlg").close();
$("show").onchange = gallery;
if (!readOnly) {
  $("start").onclick = async () => {
    const body = {name: $("sname").value};
    if ($("starget").value !== "") body.target = parseInt($("starget").value, 10);
    const r = await fetch("/api/session/start", {method: "POST", headers: post, body: JSON.stringify(body)});
    $("busy").textContent = r.ok ? "" : (await r.json()).error;
  };
  $("stop").onclick = () => fetch("/api/session/stop", {method: "POST", headers: post, body: "{}"});
}
poll();
</script>
</body></html>
"""
