"""``alnett-edge daemon``: capture, detect, classify and record cells until stopped."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.capture.base import source_help
from alnett_edge.cli.common import console, output_file


def stage_table(summary: dict) -> Table:
    s = summary["session"]
    title = (f"{summary['frames_processed']} frames ({summary['mean_fps']} fps mean), {summary['frames_dropped']} dropped, "
             f"{s['cells']} cells ({s['classified']} classified), blast ratio {s['blast_ratio']} "
             f"CI95 {s['blast_ratio_ci95']}, reconnects {summary['capture']['reconnects']}")
    table = Table(title=title, title_justify="left")
    for c in ("stage", "n", "mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(c, justify="left" if c == "stage" else "right")
    for stage, v in summary["stages"].items():
        table.add_row(stage, str(v["n"]), *(f"{v[k]:.2f}" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")))
    return table


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon(
        bundle: Path = typer.Option(None, help="Bundle to run (or [runtime] bundle in --config)."),
        source: str = typer.Option(None, help=f"The camera or file: {source_help()}."),
        config: Path = typer.Option(None, "--config", "-c", help="TOML config; options given here override it."),
        max_frames: int = typer.Option(None, help="Stop after this many captured frames."),
        duration: float = typer.Option(None, help="Stop after this many seconds."),
        fps: float = typer.Option(None, help="Camera frame rate, or replay pace for files and folders."),
        loop: bool = typer.Option(None, "--loop/--no-loop", help="Replay files and folders forever."),
        queue: int = typer.Option(None, help="Frame queue length (the oldest frame is dropped when full)."),
        backend: str = typer.Option(None, help="Runtime backend (default: the device profile's order)."),
        db: Path = typer.Option(None, help="SQLite database (WAL) for cells and sessions."),
        jsonl: Path = typer.Option(None, help="Also append every cell as JSON lines here."),
        snapshots: Path = typer.Option(None, help="Folder for annotated snapshots (every N frames and on blasts)."),
        host: str = typer.Option(None, help="HTTP address (127.0.0.1 by default; others need --http-token)."),
        port: int = typer.Option(None, help="HTTP port for /healthz /status /metrics (0 = off; default 8080)."),
        http_token: str = typer.Option(None, help="Token required by the HTTP endpoints.", envvar="ALNETT_EDGE_HTTP_TOKEN"),
        preview: bool = typer.Option(None, "--preview/--no-preview", help="Serve /preview.mjpg of annotated frames."),
        summary_json: Path = typer.Option(None, help="Write the session summary (per-stage latency, counts) as JSON.",
                                          callback=output_file),
    ) -> None:
        """Run the microscope daemon: capture -> detect -> crop -> quality gate -> classify -> record."""
        from alnett_edge.daemon.config import load_config
        from alnett_edge.daemon.service import Daemon
        from alnett_edge.daemon.sinks import StoreError

        overrides = {
            "source": {"spec": source, "fps": fps, "loop": loop, "queue": queue},
            "runtime": {"bundle": str(bundle) if bundle else None, "backend": backend},
            "sinks": {"db": str(db) if db else None, "jsonl": str(jsonl) if jsonl else None,
                      "snapshots": str(snapshots) if snapshots else None},
            "http": {"host": host, "port": port, "token": http_token, "preview": preview},
            "run": {"max_frames": max_frames, "duration": duration},
        }  # fmt: skip
        cfg = load_config(config, overrides)
        d = Daemon(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda num, _frame: d.request_stop(signal.Signals(num).name))
        summary = d.run()
        console().print(stage_table(summary))
        typer.echo(f"database: {cfg.sinks.db} (stopped: {summary['stop_reason']})")
        if summary_json:
            summary_json.write_text(json.dumps(summary, indent=2))
        if summary["store_error"]:
            raise StoreError(summary["store_error"])
