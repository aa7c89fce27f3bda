"""``alnett-edge report DB``: a per-slide differential from a daemon session — distinct cells, blasts
with their 95 % interval and the edge- and error-corrected estimate, abstain reasons, a montage of every
blast crop and a sample of normal ones, the per-stage latency — as PNGs and one self-contained HTML page
(pictures inlined as data URIs: no network fetch, one file to mail or archive).

The HTML is a Jinja2 template (autoescaped: sources, paths and reasons are text, never markup).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from alnett_edge.data.preprocess import load_image
from alnett_edge.errors import DataError
from alnett_edge.vision.differential import session_blast, wilson_interval
from alnett_edge.vision.record import SMUDGE_REASON

#: the outcome row of a session's smudge cells (rows with SMUDGE_REASON), listed apart from its cells
SMUDGE_OUTCOME = "smudge cells (counted apart)"

log = logging.getLogger(__name__)

#: normal cells shown beside every blast (a sample, not all: a slide has hundreds)
NORMAL_SAMPLE = 24
TILE = 96

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alnett-edge slide report: session {{ r.session_id }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} .sub{color:#666;margin-top:0}
.big{display:flex;gap:1.2em;flex-wrap:wrap;margin:1.2em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.8em 1.1em;min-width:150px}
.card b{display:block;font-size:1.9em} .blast b{color:#c0262d}
table{border-collapse:collapse;margin:.6em 0} td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right} img{max-width:100%;image-rendering:pixelated} .warn{color:#a15c00}
</style></head><body>
<h1>Slide report</h1>
<p class="sub">session {{ r.session_id }} · {{ r.started }} · {{ r.source }} · model {{ r.model_sha256[:12] }}</p>
<div class="big">
 <div class="card"><b>{{ r.cells }}</b>distinct cells</div>
 <div class="card"><b>{{ r.classified }}</b>decided</div>
 <div class="card blast"><b>{{ r.blasts }}</b>blasts</div>
 <div class="card blast"><b>{{ r.blast_pct }}</b>blast calls, 95 % CI {{ r.blast_ci }}</div>
 {% if r.estimate %}<div class="card blast"><b>{{ r.estimate }}</b>estimated blast ratio, 95 % CI {{ r.estimate_ci }}</div>{% endif %}
</div>
{% for w in r.warnings %}<p class="warn">{{ w }}</p>{% endfor %}
<h2>Decisions</h2>
<table><tr><th>outcome</th><th>cells</th></tr>
{% for k, v in r.outcomes %}<tr><td>{{ k }}</td><td class="n">{{ v }}</td></tr>{% endfor %}</table>
<h2>Every blast, and a sample of normal cells</h2>
{% if r.montage %}<img alt="cell crops" src="data:image/png;base64,{{ r.montage }}">{% else %}<p>No crops were kept
(run the daemon with <code>--crops DIR</code>).</p>{% endif %}
{% if r.latency %}<h2>Per-stage latency</h2><img alt="latency" src="data:image/png;base64,{{ r.latency }}">{% endif %}
<p class="sub">{{ r.machine }}</p>
</body></html>
"""


@dataclass
class SlideReport:
    session_id: int
    started: str
    source: str
    model_sha256: str
    cells: int
    classified: int
    blasts: int
    blast_pct: str
    blast_ci: str
    outcomes: list[tuple[str, int]]
    estimate: str = ""
    estimate_ci: str = ""
    machine: str = ""
    warnings: list[str] = field(default_factory=list)
    montage: str = ""  # base64 PNG
    latency: str = ""  # base64 PNG


def _open(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise DataError(f"database not found: {db}")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{db} is not an SQLite database ({exc})") from None
    if not {"sessions", "cells"} <= tables:
        con.close()
        raise DataError(f"{db} is not an alnett-edge daemon database (no sessions/cells tables)")
    for table, needed in REPORT_COLUMNS.items():  # a database from another (newer) schema: say which column
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        missing = sorted(set(needed) - have)
        if missing:
            con.close()
            raise DataError(f"{db}: table {table} has no column {', '.join(missing)} (a database from another "
                            "version of alnett-edge?)")
    return con


#: the columns the report reads
REPORT_COLUMNS = {"sessions": ("id", "started", "source", "model_sha256", "summary"), "cells": ("label", "abstain_reason",
                                                                                               "session_id")}


def _read_tile(path: Path) -> np.ndarray | None:
    """A crop through the one bounded decoder (BGR), or None (logged) when it cannot be read."""
    try:
        return cv2.cvtColor(load_image(path, what="crop"), cv2.COLOR_RGB2BGR)
    except DataError as exc:
        log.warning("left out of the montage: %s", exc)
        return None


def _tiles(paths: list[Path], label: str, colour: tuple[int, int, int], per_row: int = 8) -> np.ndarray | None:
    images = [im for im in (_read_tile(p) for p in paths) if im is not None]
    if not images:
        return None
    tiles = [cv2.resize(im, (TILE, TILE), interpolation=cv2.INTER_AREA) for im in images]
    tiles += [np.full((TILE, TILE, 3), 255, np.uint8)] * (-len(tiles) % per_row)
    rows = [np.hstack(tiles[i : i + per_row]) for i in range(0, len(tiles), per_row)]
    bar = np.full((26, rows[0].shape[1], 3), 255, np.uint8)
    cv2.putText(bar, label, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour[::-1], 1, cv2.LINE_AA)
    return np.vstack([bar, *rows])


def _montage(crops: Path | None, session_prefix: str, blast: tuple[str, ...], seed: int = 0) -> np.ndarray | None:
    """Every blast crop (``blast``: the card's blast classes) and a sample of the other classes'."""
    if crops is None or not crops.is_dir():
        return None
    files = sorted(crops.glob(f"{session_prefix}-t*.jpg"))
    blasts = [p for p in files if p.stem.endswith(tuple(f"-{b}" for b in blast))]
    normal = [p for p in files if not p.stem.endswith((*(f"-{b}" for b in blast), "-abstain"))]
    if len(normal) > NORMAL_SAMPLE:
        normal = [normal[i] for i in sorted(np.random.default_rng(seed).choice(len(normal), NORMAL_SAMPLE, replace=False))]
    parts = [t for t in (_tiles(blasts, f"every blast ({len(blasts)})", (192, 38, 45)),
                         _tiles(normal, f"normal, a sample of {len(normal)}", (30, 130, 60))) if t is not None]
    if not parts:
        return None
    width = max(p.shape[1] for p in parts)
    return np.vstack([np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts])


def _latency_png(stages: dict[str, Any]) -> bytes | None:
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stages)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2), dpi=100)
    y = np.arange(len(names))
    for k, (q, colour) in enumerate((("p50_ms", "#4c78a8"), ("p95_ms", "#f58518"), ("p99_ms", "#e45756"))):
        ax.barh(y + (k - 1) * 0.27, [stages[n][q] for n in names], height=0.27, color=colour, label=q[:3])
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")  # stages of 0.1 ms beside a frame-to-decision of 100 ms: all readable
    ax.set_xlabel("ms (log scale)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _png(image_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image_rgb)
    return buf.tobytes() if ok else b""


def build_report(db: str | Path, out: str | Path, session: int | None = None, crops: str | Path | None = None) -> dict[str, Any]:
    """Write ``report.html``, ``cells.png`` (crops) and ``latency.png`` for ``session`` (default: the
    last) of a daemon database into ``out``; returns the figures as a dict (also ``report.json``)."""
    from jinja2 import Environment

    db, out = Path(db), Path(out)
    con = _open(db)
    try:
        row = con.execute("SELECT id, started, source, model_sha256, summary FROM sessions "
                          + ("WHERE id = ?" if session is not None else "ORDER BY id DESC LIMIT 1"),
                          (session,) if session is not None else ()).fetchone()
        if row is None:
            raise DataError(f"{db} has no session {session}" if session is not None else f"{db} has no session")
        sid, started, source, sha, summary_json = row
        cells = con.execute("SELECT label, abstain_reason FROM cells WHERE session_id = ?", (sid,)).fetchall()
    finally:
        con.close()
    try:
        summary = json.loads(summary_json) if summary_json else {}
        if not isinstance(summary, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise DataError(f"{db}: session {sid}'s summary is not the JSON the daemon writes ({exc}); the cells are "
                        "there, the summary was edited or damaged") from None
    labels = [lab for lab, _ in cells if lab]
    sess = summary.get("session") if isinstance(summary.get("session"), dict) else {}
    # the card's blast class, as the daemon recorded it (a session before it was recorded: "all")
    blast = session_blast(sess)
    known = set(sess.get("labels") or {}) | set(blast) if sess.get("labels") else {"all", "hem"}
    unknown = sorted(set(labels) - known)
    if unknown:  # counting them as "not blast" would print a ratio that means nothing
        raise DataError(f"{db}: session {sid} has cells labelled {', '.join(map(repr, unknown[:5]))}, which its model "
                        f"does not have (classes: {', '.join(sorted(known))}); the database was edited or mixed")
    blasts, classified = sum(lab in blast for lab in labels), len(labels)
    outcomes: dict[str, int] = {}
    for lab, reason in cells:
        key = (f"blast ({lab})" if lab in blast else lab) if lab else \
            SMUDGE_OUTCOME if reason == SMUDGE_REASON else f"abstained: {reason}"
        outcomes[key] = outcomes.get(key, 0) + 1
    smudges = outcomes.get(SMUDGE_OUTCOME, 0)  # not cells of the differential
    ci = wilson_interval(blasts, classified)
    est = sess.get("blast_ratio_estimate") or {}
    warnings = []
    if not summary:
        warnings.append("The session did not end cleanly (no summary row): counts are what was stored.")
    elif not summary.get("tracking", True):
        warnings.append("Tracking was off: every detection in every frame is a row, so a cell held in view is "
                        "counted many times and the interval is too narrow.")
    rep = SlideReport(
        session_id=sid, started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), source=source or "?",
        model_sha256=sha or "?", cells=len(cells) - smudges, classified=classified, blasts=blasts,
        blast_pct=f"{100 * blasts / classified:.1f} %" if classified else "—",
        blast_ci=f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %" if ci else "—",
        outcomes=sorted(outcomes.items(), key=lambda kv: -kv[1]), machine=summary.get("machine", ""), warnings=warnings)
    if est:
        rep.estimate = f"{100 * est['value']:.1f} %"
        rep.estimate_ci = f"{100 * est['ci95'][0]:.1f}–{100 * est['ci95'][1]:.1f} %"
    out.mkdir(parents=True, exist_ok=True)
    crops_dir = Path(crops) if crops else (Path(summary["crops"]) if summary.get("crops") else None)
    files = {}
    montage = _montage(crops_dir, f"s{int(started)}", blast)
    if montage is not None:
        data = _png(montage)
        (out / "cells.png").write_bytes(data)
        rep.montage, files["cells"] = base64.b64encode(data).decode(), str(out / "cells.png")
    latency = _latency_png(summary.get("stages") or {})
    if latency:
        (out / "latency.png").write_bytes(latency)
        rep.latency, files["latency"] = base64.b64encode(latency).decode(), str(out / "latency.png")
    html = Environment(autoescape=True).from_string(TEMPLATE).render(r=rep)
    (out / "report.html").write_text(html, encoding="utf-8")
    files["html"] = str(out / "report.html")
    result = {k: v for k, v in rep.__dict__.items() if k not in ("montage", "latency")}
    result["files"] = files
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result
