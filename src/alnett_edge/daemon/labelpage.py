"""The label view: a harvest's cells labelled in a browser, keyboard first (``alnett-edge label DATASET``;
the device page mounts the same routes).

Routes: ``GET /label`` (the page), ``GET /api/label/next`` (the cell to label and the progress),
``POST /api/label`` ``{"cell_id", "label"}``, ``POST /api/label/skip`` ``{"cell_id"}``,
``POST /api/label/undo`` ``{}``, ``GET /cells/<id>.png`` (the crop, at true scale in the page: every
cell shown at :data:`PX_PER_UM` screen pixels per µm whatever its session's pixel size) and
``GET /cells/<id>/context.jpg`` (its frame around it, the box drawn). A cell is named by its id only;
no file path is ever taken from a request.

Hostile clients meet the checks of :mod:`alnett_edge.daemon.web` (Host, token or login cookie, JSON
changes, same-origin); here a cell is named by its id only, and a crop must lie inside the dataset."""

from __future__ import annotations

import logging
import re
from typing import Any

from jinja2 import Environment

from alnett_edge.daemon.web import Reply, Request, check_bind, serve
from alnett_edge.data.preprocess import load_image
from alnett_edge.errors import AlnettError
from alnett_edge.vision.cells import context_jpeg
from alnett_edge.vision.labels import LabelBook, agreement

log = logging.getLogger(__name__)

#: screen pixels per µm at which every cell is drawn (a 34 µm canvas: 272 px)
PX_PER_UM = 8.0
_CELL_URL = re.compile(r"^/cells/([0-9a-f]{8,64})(\.png|/context\.jpg)$")


class LabelRoutes:
    """The label view's answers, apart from any server (the CLI's and the daemon's both use it)."""

    def __init__(self, book: LabelBook, home: str | None = None) -> None:
        self.book, self.home = book, home  # home: a link back (the device page, when the daemon serves the view)

    def state(self) -> dict[str, Any]:
        nxt = self.book.next_cells(2)
        return {"cell": nxt[0].to_dict() if nxt else None, "after": nxt[1].cell_id if len(nxt) > 1 else None,
                "progress": self.book.progress(), "choices": list(self.book.choices),
                "canvas_um": self.book.canvas_um, "px_per_um": PX_PER_UM, "order": self.book.order}

    def get(self, path: str, request: Request) -> Reply | None:
        if path == "/":
            return Reply(302, headers={"Location": "/label"})
        if path == "/label":
            html = Environment(autoescape=True).from_string(PAGE).render(
                labeller=self.book.labeller, dataset=self.book.dataset.name, choices=self.book.choices,
                order=self.book.order, home=self.home)
            return Reply(200, html.encode(), "text/html; charset=utf-8")
        if path == "/api/label/next":
            return Reply.json(200, self.state())
        if path == "/api/label/agreement":
            return Reply.json(200, agreement(self.book.dataset))
        m = _CELL_URL.match(path)
        if not m:
            return None
        cell_id, what = m.groups()
        try:
            if what == ".png":
                return Reply(200, self.book.crop_path(cell_id).read_bytes(), "image/png")
            return self._context(cell_id)
        except (AlnettError, OSError) as exc:
            return Reply.text(404, str(exc))

    def _context(self, cell_id: str) -> Reply:
        """The frame around the cell (about three canvases wide), its box drawn; 404 when the frame is
        not a still image that can be found (a video, a camera, a moved folder)."""
        frame = self.book.source_frame(cell_id)
        if frame is None:
            return Reply.text(404, "no frame context (a video or camera source, or the frame moved)")
        cell = self.book.cells[cell_id].to_dict()
        half = 1.5 * self.book.canvas_um / (cell["um_per_px"] or 0.5)  # three canvases wide
        jpg = context_jpeg(load_image(frame, what="frame"), tuple(cell["box"]), int(half), quality=88)
        return Reply(200, jpg, "image/jpeg") if jpg else Reply.text(500, "cannot encode")

    def post(self, path: str, body: dict[str, Any], request: Request) -> Reply | None:
        try:
            if path == "/api/label":
                self.book.label(body.get("cell_id"), body.get("label"))
            elif path == "/api/label/skip":
                self.book.skip(body.get("cell_id"))
            elif path == "/api/label/undo":
                if self.book.undo() is None:
                    return Reply.json(409, {"error": "nothing to undo in this run", **self.state()})
            else:
                return None
        except AlnettError as exc:
            return Reply.json(400, {"error": str(exc)})
        return Reply.json(200, self.state())


def serve_labels(book: LabelBook, host: str = "127.0.0.1", port: int = 8090, token: str = "") -> Any:
    """A started server for the label view alone (``alnett-edge label``); beyond localhost it needs a token."""
    check_bind(host, token, "labels")
    return serve([LabelRoutes(book)], host, port, token, title=f"label {book.dataset.name}")


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label cells · {{ dataset }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --bg:#14171c; --panel:#1d2128; --ink:#e8ebef; --dim:#9aa3ae; --accent:#ffd600; --all:#ff6b6b; --hem:#4dabf7; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:15px/1.4 system-ui, sans-serif; }
header { display:flex; gap:16px; align-items:center; padding:10px 18px; background:var(--panel); }
header h1 { font-size:17px; margin:0; font-weight:600; }
header .who { color:var(--dim); }
#bar { flex:1; height:10px; background:#2b313a; border-radius:5px; overflow:hidden; }
#bar > div { height:100%; background:var(--accent); width:0; }
main { display:grid; grid-template-columns: auto 1fr 300px; gap:18px; padding:18px; align-items:start; }
.panel { background:var(--panel); border-radius:8px; padding:14px; }
#cellbox { display:flex; flex-direction:column; align-items:center; gap:8px; }
#cell { image-rendering:auto; background:#000; outline:1px solid #333; }
#scale { height:6px; background:var(--ink); }
#context { max-width:100%; display:block; height:auto; }
.meta { color:var(--dim); font-size:13px; }
.keys { display:flex; flex-wrap:wrap; gap:8px; margin-top:12px; }
button { font:inherit; color:var(--ink); background:#2b313a; border:1px solid #3a414c; border-radius:6px;
         padding:8px 12px; cursor:pointer; }
button:hover { border-color:var(--accent); }
kbd { background:#0e1013; border:1px solid #444; border-radius:4px; padding:0 5px; font-size:12px; margin-right:6px; }
button.all { border-color:var(--all); } button.hem { border-color:var(--hem); }
table { border-collapse:collapse; width:100%; font-size:13px; }
td { padding:3px 4px; border-bottom:1px solid #2b313a; } td.n { text-align:right; font-variant-numeric:tabular-nums; }
#msg { min-height:1.4em; color:var(--accent); }
#done { display:none; font-size:18px; }
</style></head>
<body>
<header>{% if home %}<a href="{{ home }}" style="color:var(--dim)">← device</a>{% endif %}<h1>Label cells</h1><span class="who">{{ dataset }} · labeller <b>{{ labeller }}</b> · order: {{ order }}</span>
<div id="bar"><div></div></div><span id="count" class="meta"></span></header>
<main>
<section class="panel" id="cellbox">
  <img id="cell" alt="the cell, at true scale">
  <div id="scale" title="10 µm"></div><div class="meta">10 µm</div>
  <div id="done">Every cell is labelled. Thank you.</div>
</section>
<section class="panel">
  <div class="keys" style="margin:0 0 8px">
  {% for c in choices %}<button data-label="{{ c }}" class="{{ c }}"><kbd>{{ 'x' if c == 'reject' else loop.index }}</kbd>{{ c }}</button>{% endfor %}
  <button id="skip"><kbd>s</kbd>skip</button><button id="undo"><kbd>u</kbd>undo</button>
  </div>
  <div class="meta" id="info"></div>
  <div id="msg" role="status"></div>
  <img id="context" alt="where the cell lies in its frame, at the same scale">
</section>
<aside class="panel"><b>Progress per slide</b><table id="sessions"></table>
<p class="meta" id="agree"></p></aside>
</main>
<script>
const headers = {"Content-Type": "application/json"};
let state = null, busy = false;
const choices = {{ choices|list|tojson }};

function show(s) {
  state = s;
  const p = s.progress, cell = s.cell;
  document.querySelector("#bar > div").style.width = (100 * p.labelled / Math.max(1, p.cells)) + "%";
  document.getElementById("count").textContent = p.labelled + " / " + p.cells + " labelled";
  const rows = p.sessions.map(r => "<tr><td>" + esc(r.session) + "</td><td class=n>" + r.labelled + " / " + r.cells + "</td></tr>");
  document.getElementById("sessions").innerHTML = rows.join("");
  const img = document.getElementById("cell"), ctx = document.getElementById("context");
  document.getElementById("scale").style.width = (10 * s.px_per_um) + "px";
  if (!cell) {
    img.style.display = ctx.style.display = "none";
    document.getElementById("done").style.display = "block";
    document.getElementById("info").textContent = "";
    return;
  }
  img.style.display = ctx.style.display = "";
  document.getElementById("done").style.display = "none";
  img.src = "/cells/" + cell.cell_id + ".png";
  img.width = img.height = Math.round(s.canvas_um * s.px_per_um);
  ctx.onload = () => { ctx.width = Math.round(ctx.naturalWidth * (cell.um_per_px || 0.5) * s.px_per_um); };
  ctx.src = "/cells/" + cell.cell_id + "/context.jpg";
  const probs = Object.entries(cell.prob).map(([k, v]) => "P(" + k + ") " + v.toFixed(3)).join(", ");
  document.getElementById("info").textContent = [cell.session, cell.source + (cell.frame ? " frame " + cell.frame : ""),
     cell.weak_label ? "field's label: " + cell.weak_label : "", probs || "no model probabilities",
     cell.um_per_px ? cell.um_per_px.toFixed(3) + " µm/px" : ""].filter(Boolean).join(" · ");
  if (s.after) { const pre = new Image(); pre.src = "/cells/" + s.after + ".png"; }
}
function esc(t) { const d = document.createElement("div"); d.textContent = t; return d.innerHTML; }
async function call(path, body) {
  if (busy) return; busy = true;
  try {
    const r = await fetch(path, {method: "POST", headers, body: JSON.stringify(body || {})});
    const s = await r.json();
    document.getElementById("msg").textContent = s.error || "";
    if (s.progress) show(s);
  } catch (e) { document.getElementById("msg").textContent = "not saved: " + e; }
  finally { busy = false; }
}
function label(l) { if (state && state.cell) call("/api/label", {cell_id: state.cell.cell_id, label: l}); }
document.querySelectorAll("button[data-label]").forEach(b => b.onclick = () => label(b.dataset.label));
document.getElementById("skip").onclick = () => state && state.cell && call("/api/label/skip", {cell_id: state.cell.cell_id});
document.getElementById("undo").onclick = () => call("/api/label/undo", {});
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const n = parseInt(e.key, 10);
  if (n >= 1 && n <= choices.length && choices[n - 1] !== "reject") label(choices[n - 1]);
  else if (e.key === "x") label("reject");
  else if (e.key === "s" || e.key === " ") { e.preventDefault(); document.getElementById("skip").click(); }
  else if (e.key === "u" || e.key === "Backspace" || (e.key === "z")) { e.preventDefault(); call("/api/label/undo", {}); }
});
fetch("/api/label/next").then(r => r.json()).then(show);
fetch("/api/label/agreement").then(r => r.json()).then(a => {
  const t = a.pairs.filter(p => p.cells).map(p => p.a + " & " + p.b + ": kappa " + (p.kappa === null ? "n/a" : p.kappa.toFixed(2)) + " on " + p.cells + " cells");
  document.getElementById("agree").textContent = t.length ? "Agreement: " + t.join("; ") : "";
});
</script>
</body></html>
"""
