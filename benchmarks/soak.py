"""A soak of the daemon with the device page open in a real browser (issue 36's target): a video replayed
at 30 fps for ``--minutes``, Debian's Chromium (Playwright) showing the page the whole time, and every
10 s the daemon process's RSS, threads and open file descriptors. At the end: the database's rows
against the cells the daemon processed.

Usage: .venv/bin/python benchmarks/soak.py BUNDLE --video runs/bench-daemon/bccd.avi --minutes 30 \\
       [--um-per-px 0.1] [--out runs/soak]
Prints the CPU model and ISA first; OUT/soak.json holds every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

from alnett_edge.bench.system import rss_mb
from alnett_edge.daemon.config import build_config
from alnett_edge.daemon.service import Daemon
from alnett_edge.machine import isa_line


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--video", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--um-per-px", type=float)
    ap.add_argument("--out", default="runs/soak")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    machine = isa_line()
    print(machine, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "soak.db"
    db.unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = build_config({}, {"source": {"spec": f"video:{a.video}", "fps": 30.0, "loop": True},
                            "runtime": {"bundle": a.bundle}, "sinks": {"db": str(db)}, "http": {"port": port},
                            "optics": {"um_per_px": a.um_per_px}, "run": {"duration": a.minutes * 60}})
    d = Daemon(cfg)
    samples: list[dict] = []
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    while d.http is None:
        time.sleep(0.1)
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        while t.is_alive():
            page.wait_for_timeout(10_000)  # the page polls on its own meanwhile
            st = d.status()
            samples.append({"t_s": round(time.monotonic() - t0), "rss_mb": round(rss_mb(), 1),
                            "threads": threading.active_count(), "fds": _fds(), "frames": st["frames_processed"],
                            "dropped": st["frames_dropped"], "page_frames": page.locator("#frames").inner_text()})
            print(json.dumps(samples[-1]), flush=True)
        browser.close()
    t.join()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    con.close()
    steady = [s for s in samples if s["t_s"] >= 120] or samples  # after the first two minutes (warm-up)
    rss = [s["rss_mb"] for s in steady]
    result = {"machine": machine, "minutes": a.minutes, "rows": rows, "cells_processed": d.cells_processed,
              "rss_mb_first": rss[0], "rss_mb_last": rss[-1], "rss_mb_max": max(rss),
              "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
              "threads": sorted({s["threads"] for s in steady}), "fds": sorted({s["fds"] for s in steady}),
              "frames": samples[-1]["frames"] if samples else 0, "dropped": samples[-1]["dropped"] if samples else 0,
              "samples": samples}
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
