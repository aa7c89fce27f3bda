"""``python -m alnett_edge.daemon CONFIG``: the daemon as a service runs it, without the CLI.

The systemd unit (``deploy/alnett-edge.service``) starts this: everything comes from the TOML config
(every option of ``alnett-edge daemon`` has a key there; the HTTP token also from
``ALNETT_EDGE_HTTP_TOKEN``), the exit summary is logged, and typer, rich and pydantic are never
imported: a process that runs for days on a Raspberry Pi holds about 12 MiB less (640x480 BCCD at
30 fps, AMD EPYC Zen 4: 127-128 MiB resident against 139-140 for ``alnett-edge daemon``). Errors are
one line on stderr with the CLI's exit codes (``ALNETT_EDGE_DEBUG=1``: the traceback).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path

from alnett_edge.errors import DEBUG_ENV, AlnettError

# as the CLI: OpenCV's and FFmpeg's own lines off (the daemon reports a bad frame or camera itself)
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
log = logging.getLogger("alnett_edge.daemon")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """A usage mistake is one line too, as in the CLI."""
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m alnett_edge.daemon",
                 description="The microscope daemon from a TOML config (as a service runs it).")
    ap.add_argument("config", type=Path, help="daemon TOML (see deploy/daemon.toml)")
    ap.add_argument("--summary-json", type=Path, help="write the session summary here at exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args.config, args.summary_json)
    except AlnettError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except OSError as exc:  # a file or folder the config names: what the system said, and about which path
        if os.environ.get(DEBUG_ENV):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        return 1 if exc.errno == errno.EPIPE else 2


def _run(config: Path, summary_json: Path | None) -> int:
    from alnett_edge.daemon.config import load_config
    from alnett_edge.daemon.service import Daemon, ood_warning
    from alnett_edge.daemon.sinks import StoreError

    token = os.environ.get("ALNETT_EDGE_HTTP_TOKEN")
    cfg = load_config(config, {"http": {"token": token}} if token else None)
    d = Daemon(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda num, _frame: d.request_stop(signal.Signals(num).name))
    signal.signal(signal.SIGHUP, lambda *_: d.reload(config))  # a changed [runtime] bundle, without a restart
    summary = d.run()
    s, f2d = summary["session"], summary["stages"].get("frame_to_decision", {})
    log.info("stopped (%s): %d frames, %s fps, %d dropped; %d cells, %d classified, blast calls %s CI95 %s; "
             "frame to decision p50 %s / p99 %s ms; database %s", summary["stop_reason"], summary["frames_processed"],
             summary["mean_fps"], summary["frames_dropped"], s["cells"], s["classified"], s["blast_ratio"],
             s["blast_ratio_ci95"], f2d.get("p50_ms"), f2d.get("p99_ms"), cfg.sinks.db)
    warning = ood_warning(summary)
    if warning:
        log.warning(" ".join(warning.removeprefix("warning: ").split()))
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2))
    if summary["store_error"]:
        raise StoreError(summary["store_error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
