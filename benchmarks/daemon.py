"""The daemon's throughput and latency on 640x480 frames with an ``alnett-s`` bundle on this machine.

Videos: the 364 real BCCD frames (../shared/data/bccd) and 300 synthetic smear frames, as MJPEG .avi.
Runs per video: (1) as fast as the pipeline goes (file source unpaced: the sustained throughput and
drops with a producer faster than the consumer), (2) replayed at 30 fps for ``--seconds`` (a camera
stand-in: fps, p99 frame-to-decision, drops), with this process's RSS sampled every 0.5 s (flat memory).

``--viewers 0,1,20`` runs each video once per count of device pages watching (issue 33): each viewer
is a thread asking what the page's script asks (``/api/live`` and ``/live.jpg`` every 400 ms,
``/api/gallery`` and ``/api/sessions`` every 2 s), and the rows give the updates each viewer got per
second; with 20 viewers one more page is turned away ("busy": ``viewer_21``).

Usage: .venv/bin/python benchmarks/daemon.py runs/bench-runtime/alnett-s --out runs/bench-daemon
       [--hold 30] (each BCCD frame held 1 s: a still field) [--no-tracking]
       [--um-per-px 0.1] (the pixel size given, as a calibrated microscope would have it: no frames wait
       for the start-up estimate, which otherwise holds the first 40 frames and fills the p99)
       [--ood record|abstain|off] ([quality] out_of_distribution) [--videos bccd] [--fps 30]
Prints the CPU model and ISA first; every row goes to OUT/daemon.json with it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import cv2

from alnett_edge.bench.system import rss_mb
from alnett_edge.daemon.config import build_config
from alnett_edge.daemon.service import Daemon
from alnett_edge.data.synth import SMEAR_UM_PER_PX, write_smear_video
from alnett_edge.machine import isa_line

BCCD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "JPEGImages"


def bccd_video(dest: Path, hold: int = 1) -> Path:
    """The BCCD frames as a video, each written ``hold`` times (a still field for hold/30 s)."""
    frames = sorted(BCCD.glob("*.jpg"))
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for f in frames:
        img = cv2.imread(str(f))
        if img is not None:
            for _ in range(hold):
                writer.write(cv2.resize(img, (640, 480)))
    writer.release()
    return dest


def _get(port: int, path: str, viewer: str) -> int:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        con.request("GET", path, headers={"X-Viewer": viewer})
        r = con.getresponse()
        r.read()
        return r.status
    except OSError:
        return 0
    finally:
        con.close()


def viewer(port: int, name: str, d: Daemon, counts: dict) -> None:
    """What the device page's script asks, until the daemon stops; counts its live updates."""
    last_gallery = 0.0
    while not d.stopping:
        if _get(port, "/api/live", name) == 200 and _get(port, "/live.jpg", name) == 200:
            counts[name] = counts.get(name, 0) + 1
        if time.monotonic() - last_gallery > 2.0:
            last_gallery = time.monotonic()
            _get(port, "/api/gallery", name)
            _get(port, "/api/sessions", name)
        time.sleep(0.4)


def run(bundle: str, video: Path, out: Path, fps: float, seconds: float, queue: int = 8, tracking: bool = True,
        um_per_px: float | None = None, ood: str = "record", viewers: int = 0) -> dict:
    db = out / f"{video.stem}-{int(fps)}-{viewers}.db"
    db.unlink(missing_ok=True)
    port = 0
    if viewers:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cfg = build_config({}, {"source": {"spec": f"video:{video}", "fps": fps, "loop": True, "queue": queue},
                            "runtime": {"bundle": bundle}, "sinks": {"db": str(db)}, "http": {"port": port},
                            "run": {"duration": seconds}, "tracking": {"enabled": tracking},
                            "optics": {"um_per_px": um_per_px}, "quality": {"out_of_distribution": ood}})
    d = Daemon(cfg)
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            rss.append(round(rss_mb(), 1))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    counts: dict[str, int] = {}
    busy = None
    if viewers:
        def watch() -> None:
            nonlocal busy
            while d.http is None and not d.stopping:
                time.sleep(0.05)
            names = [f"viewer{i}" for i in range(viewers)]
            for name in names:
                threading.Thread(target=viewer, args=(port, name, d, counts), daemon=True).start()
            time.sleep(2.0)
            busy = _get(port, "/api/live", "one-too-many") if viewers >= 20 else None

        threading.Thread(target=watch, daemon=True).start()
    t0 = time.monotonic()
    s = d.run()
    elapsed = time.monotonic() - t0
    stop.set()
    f2d = s["stages"]["frame_to_decision"]
    return {"video": video.name, "um_per_px": s["optics"]["um_per_px"], "paced_fps": fps or "unpaced", "seconds": seconds, "mean_fps": s["mean_fps"],
            "frames": s["frames_processed"], "captured": s["capture"]["frames"], "dropped": s["frames_dropped"],
            "cells": s["cells_processed"], "classified": s["session"]["classified"], "tracking": tracking,
            "model_calls": s["inferences"], "detections": s["observations"],
            "f2d_p50_ms": f2d["p50_ms"], "f2d_p99_ms": f2d["p99_ms"],
            "stage_p50_ms": {k: v["p50_ms"] for k, v in s["stages"].items()},
            "rss_first_mb": rss[1] if len(rss) > 1 else None, "rss_last_mb": rss[-1] if rss else None,
            "rss_max_mb": max(rss) if rss else None, "viewers": viewers,
            "updates_per_s_per_viewer": round(sum(counts.values()) / max(1, len(counts)) / elapsed, 2) if viewers else None,
            "viewer_21": {503: "busy (503)", 200: "admitted", None: None}.get(busy, busy)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--out", default="runs/bench-daemon")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hold", type=int, default=1, help="Write each BCCD frame N times (a still field).")
    ap.add_argument("--tracking", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--um-per-px", type=float, help="BCCD's pixel size in µm (default: estimated at start-up).")
    ap.add_argument("--ood", default="record", choices=("record", "abstain", "off"))
    ap.add_argument("--videos", default="bccd,synthetic", help="Which videos, comma-separated.")
    ap.add_argument("--fps", default="0,30", help="Pacing per run, comma-separated (0: unpaced).")
    ap.add_argument("--viewers", default="0", help="Device pages watching, per run, comma-separated (e.g. 0,1,20).")
    args = ap.parse_args()
    machine = isa_line()
    print(machine, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted, videos = args.videos.split(","), []
    if "bccd" in wanted:
        videos.append(bccd_video(out / (f"bccd-hold{args.hold}.avi" if args.hold > 1 else "bccd.avi"), args.hold))
    if "synthetic" in wanted:
        write_smear_video(out / "synthetic.avi", 300, seed=1)
        videos.append(out / "synthetic.avi")
    rows = []
    for video in videos:
        # the synthetic smear's pixel size is known; BCCD's is --um-per-px or estimated
        um = SMEAR_UM_PER_PX if video.stem == "synthetic" and args.um_per_px else args.um_per_px
        for fps in (float(f) for f in args.fps.split(",")):
            for n in (int(v) for v in args.viewers.split(",")):
                row = {"machine": machine, **run(args.bundle, video, out, fps, args.seconds, tracking=args.tracking,
                                                 um_per_px=um, ood=args.ood, viewers=n)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "daemon.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
