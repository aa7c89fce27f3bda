"""The mark view: cell centres marked by hand on field frames in a browser (``alnett-edge mark FRAMES
--out marks.csv``), the data the learned centre detector is fine-tuned and gated on.

Routes: ``GET /mark`` (the page), ``GET /api/mark/state?i=N`` (frame N: its size, its marks or the
detector's proposals, the progress), ``POST /api/mark`` ``{"index", "points": [{"x", "y", "kind"}]}``
(saves that frame's marks and rewrites the CSV) and ``GET /frames/<N>.jpg`` (the frame). A frame is
named by its index only; no file path is ever taken from a request. Hostile clients meet the checks of
:mod:`alnett_edge.daemon.web` (Host, token or login cookie, JSON changes, same-origin)."""

from __future__ import annotations

import re
from typing import Any

import cv2
from jinja2 import Environment

from alnett_edge.daemon.web import Reply, Request, check_bind, serve
from alnett_edge.errors import AlnettError
from alnett_edge.vision.marks import MarkBook

_FRAME_URL = re.compile(r"^/frames/([0-9]{1,7})\.jpg$")


class MarkRoutes:
    def __init__(self, book: MarkBook) -> None:
        self.book = book

    def get(self, path: str, request: Request) -> Reply | None:
        if path == "/":
            return Reply(302, headers={"Location": "/mark"})
        if path == "/mark":
            html = Environment(autoescape=True).from_string(PAGE).render(folder=self.book.frames.name,
                                                                          out=self.book.out.name)
            return Reply(200, html.encode(), "text/html; charset=utf-8")
        try:
            if path == "/api/mark/state":
                arg = request.arg("i", str(self.book.first_unmarked()))
                return Reply.json(200, self.book.state(int(arg) if arg.isdigit() else -1))
            m = _FRAME_URL.match(path)
            if not m:
                return None
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(self.book.frame(int(m.group(1))), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 92])
            return Reply(200, jpg.tobytes(), "image/jpeg") if ok else Reply.text(500, "cannot encode")
        except (AlnettError, OSError) as exc:
            return Reply.json(404, {"error": str(exc)})

    def post(self, path: str, body: dict[str, Any], request: Request) -> Reply | None:
        if path != "/api/mark":
            return None
        try:
            return Reply.json(200, self.book.save(body.get("index"), body.get("points")))
        except AlnettError as exc:
            return Reply.json(400, {"error": str(exc)})


def serve_marks(book: MarkBook, host: str = "127.0.0.1", port: int = 8091, token: str = "") -> Any:
    """A started server for the mark view (``alnett-edge mark``); beyond localhost it needs a token."""
    check_bind(host, token, "marks")
    return serve([MarkRoutes(book)], host, port, token, title=f"mark {book.frames.name}")


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mark cells · {{ folder }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --bg:#14171c; --panel:#1d2128; --ink:#e8ebef; --dim:#9aa3ae; --accent:#ffd600; --smudge:#ff5cf0; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink); font:15px/1.4 system-ui, sans-serif; }
header { display:flex; gap:16px; align-items:center; padding:10px 18px; background:var(--panel); }
header h1 { font-size:17px; margin:0; font-weight:600; }
#bar { flex:1; height:10px; background:#2b313a; border-radius:5px; overflow:hidden; }
#bar > div { height:100%; background:var(--accent); width:0; }
main { display:grid; grid-template-columns: 1fr 300px; gap:18px; padding:18px; align-items:start; }
.panel { background:var(--panel); border-radius:8px; padding:14px; }
#stage { position:relative; display:inline-block; cursor:crosshair; line-height:0; }
#frame { display:block; image-rendering:auto; }
#marks { position:absolute; left:0; top:0; }
.meta { color:var(--dim); font-size:13px; }
button { font:inherit; color:var(--ink); background:#2b313a; border:1px solid #3a414c; border-radius:6px;
         padding:8px 12px; cursor:pointer; margin:0 6px 6px 0; }
button:hover { border-color:var(--accent); }
kbd { background:#0e1013; border:1px solid #444; border-radius:4px; padding:0 5px; font-size:12px; margin-right:6px; }
#msg { min-height:1.4em; color:var(--accent); }
ul { padding-left:18px; margin:6px 0; } li { margin:3px 0; }
</style></head>
<body>
<header><h1>Mark cells</h1><span class="meta">{{ folder }} → {{ out }}</span>
<div id="bar"><div></div></div><span id="count" class="meta"></span></header>
<main>
<section class="panel"><div id="stage"><img id="frame" alt="the field frame"><canvas id="marks"></canvas></div>
<div id="info" class="meta" style="margin-top:8px"></div></section>
<aside class="panel">
  <button id="prev"><kbd>p</kbd>previous</button><button id="next"><kbd>n</kbd>save, next</button>
  <button id="undo"><kbd>u</kbd>undo</button><button id="clear"><kbd>c</kbd>clear</button>
  <div id="msg" role="status"></div>
  <ul class="meta">
    <li>Click a white cell's centre to mark it; click a mark to remove it.</li>
    <li>Shift-click marks a smudge cell (pink).</li>
    <li>Dashed marks are the detector's proposals: correct them, then save.</li>
    <li>Every white cell of the frame, touching or cut by its edge.</li>
  </ul>
  <div id="totals" class="meta"></div>
</aside>
</main>
<script>
const headers = {"Content-Type": "application/json"};
let state = null, points = [], history = [], scale = 1, busy = false;
const img = document.getElementById("frame"), cv = document.getElementById("marks"), ctx = cv.getContext("2d");

function fit(w, h) {  // at least 3 screen px per frame px for small fields, never wider than the panel
  const room = Math.max(320, document.querySelector("main section").clientWidth - 28);
  return Math.min(Math.max(1, Math.floor(720 / Math.max(w, h))), room / w, 900 / h) || 1;
}
function draw() {
  ctx.clearRect(0, 0, cv.width, cv.height);
  const r = Math.max(6, Math.min(14, 9 * scale));
  for (const p of points) {
    ctx.beginPath(); ctx.arc(p.x * scale, p.y * scale, r, 0, 2 * Math.PI);
    ctx.setLineDash(state && !state.saved && state.proposed && !history.length ? [4, 3] : []);
    ctx.lineWidth = 2.5; ctx.strokeStyle = p.kind === "smudge" ? "#ff5cf0" : "#ffd600"; ctx.stroke();
  }
  const cells = points.filter(p => p.kind !== "smudge").length;
  document.getElementById("info").textContent = state.name + " · " + state.width + "×" + state.height + " px · " +
    cells + " cells, " + (points.length - cells) + " smudge" + (state.saved ? " · saved" :
    (state.proposed ? " · proposed by the detector, not saved" : " · not saved"));
}
function show(s) {
  state = s; points = s.points.map(p => ({...p})); history = [];
  document.querySelector("#bar > div").style.width = (100 * s.marked_frames / s.frames) + "%";
  document.getElementById("count").textContent = s.marked_frames + " / " + s.frames + " frames marked";
  document.getElementById("totals").textContent = s.cells + " cells and " + s.smudges + " smudge cells saved in " + s.out;
  scale = fit(s.width, s.height);
  img.onload = () => {
    img.width = cv.width = Math.round(s.width * scale); img.height = cv.height = Math.round(s.height * scale); draw();
  };
  img.src = "/frames/" + s.index + ".jpg";
}
async function load(i) {
  const r = await fetch("/api/mark/state?i=" + i); const s = await r.json();
  if (s.error) { document.getElementById("msg").textContent = s.error; return; }
  document.getElementById("msg").textContent = ""; show(s);
}
async function save(then) {
  if (busy || !state) return; busy = true;
  try {
    const r = await fetch("/api/mark", {method: "POST", headers, body: JSON.stringify({index: state.index, points})});
    const s = await r.json();
    document.getElementById("msg").textContent = s.error || "saved";
    if (!s.error) { if (then !== undefined && then >= 0 && then < s.frames) await load(then); else show(s); }
  } catch (e) { document.getElementById("msg").textContent = "not saved: " + e; }
  finally { busy = false; }
}
cv.addEventListener("click", e => {
  const b = cv.getBoundingClientRect(), x = (e.clientX - b.left) / scale, y = (e.clientY - b.top) / scale;
  const near = points.findIndex(p => Math.hypot(p.x - x, p.y - y) * scale < Math.max(8, 9 * scale));
  history.push(points.map(p => ({...p})));
  if (near >= 0) points.splice(near, 1);
  else points.push({x: Math.round(x * 10) / 10, y: Math.round(y * 10) / 10, kind: e.shiftKey ? "smudge" : "cell"});
  draw();
});
document.getElementById("next").onclick = () => save(state.index + 1);
document.getElementById("prev").onclick = () => state.index > 0 && load(state.index - 1);
document.getElementById("undo").onclick = () => { if (history.length) { points = history.pop(); draw(); } };
document.getElementById("clear").onclick = () => { history.push(points); points = []; draw(); };
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "n" || e.key === "Enter") { e.preventDefault(); document.getElementById("next").click(); }
  else if (e.key === "p") document.getElementById("prev").click();
  else if (e.key === "u" || e.key === "z") document.getElementById("undo").click();
  else if (e.key === "c") document.getElementById("clear").click();
});
load("");
</script>
</body></html>
"""
