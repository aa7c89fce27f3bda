"""``alnett-edge daemon``: capture, detect, classify and record cells until stopped."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alnett_edge.capture.base import source_help
from alnett_edge.cli.common import console, echo_wrapped, output_dir, output_file
from alnett_edge.errors import ConfigError


def stage_table(summary: dict) -> Table:
    s = summary["session"]
    est, dec = s.get("blast_ratio_estimate"), s.get("decision")
    title = (f"{summary['frames_processed']} frames ({summary['mean_fps']} fps mean), {summary['frames_dropped']} dropped, "
             f"{s['cells']} {'distinct cells' if summary.get('tracking') else 'cells'} ({s['classified']} classified; "
             f"the model ran {summary.get('inferences', 0)} times on {summary.get('observations', 0)} detections), "
             + (f"{s.get('smudges', 0)} smudge cells apart (looked for in {summary.get('smudge_frames', 0)} frames), "
                if summary.get("smudge_frames") or s.get("smudges") else "")
             + f"blast calls {s['blast_ratio']} "
             f"CI95 {s['blast_ratio_ci95']}, reconnects {summary['capture']['reconnects']}"
             + (f"\nblast ratio estimate {est['value']} CI95 {est['ci95']} (edge- and error-corrected, "
                f"{est['cells']} cells)" if est else "")
             + (f"\nslide decision: {'ALL' if dec['all'] else 'benign'} ({dec['score'].replace('_', ' ')} {dec['value']} "
                f"{'>' if dec['all'] else '<='} the card's {dec['threshold']}, {dec['cells']} cells)" if dec else "")
             + (f"\nmodels: {len(summary['models'])} (bundle swapped {len(summary['models']) - 1} times)"
                if summary.get("models") else "")
             + (f"\ncentre detectors: {', '.join(d['centres'] for d in summary['detectors'])} (swapped "
                f"{len(summary['detectors']) - 1} times)" if summary.get("detectors") else "")
             + (f"\nframes: {summary['capture']['delivery']}" if summary["capture"].get("delivery") else "")
             + (f"\n{summary['machine']}" if summary.get("machine") else ""))
    table = Table(title=title, title_justify="left")
    for c in ("stage", "n", "mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(c, justify="left" if c == "stage" else "right")
    for stage, v in summary["stages"].items():
        table.add_row(stage, str(v["n"]), *(f"{v[k]:.2f}" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")))
    return table


def _field_decisions(bundle: Path | None, frames: Path, cfg: Any, classes: list[str], limit: int | None,
                     threshold: float | None, json_out: Path | None) -> None:
    """``field-eval --fields``: fields labelled per field, decided by the field path, scored."""
    from alnett_edge.machine import inference_threads
    from alnett_edge.runtime.loader import open_runtime
    from alnett_edge.vision.fieldeval import field_eval_fields

    if bundle is None:
        raise ConfigError("field-eval --fields decides fields with a model: give the bundle")
    with open_runtime(bundle, cfg.runtime.backend or None, threads=inference_threads(cfg.runtime.threads)) as rt:
        rep = field_eval_fields(rt, frames, classes, cfg.detector, cfg.quality, cfg.optics, cfg.runtime.max_batch,
                                limit, threshold)
        rep["model"] = rt.describe()
    table = Table(title=f"field decisions: {rep['fields']} fields of {frames}", title_justify="left")
    for col in ("ALL", "benign", "undecided", "accuracy", "sensitivity", "specificity", "AUC", "cells/field"):
        table.add_column(col, justify="right")
    f3 = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    table.add_row(str(rep["all_fields"]), str(rep["benign_fields"]), str(rep["undecided"]), f3(rep["accuracy"]),
                  f3(rep["sensitivity"]), f3(rep["specificity"]), f3(rep["auc"]), f"{rep['cells_per_field']['median']:.0f}")
    console().print(table)
    typer.echo(f"a field is ALL when over {rep['threshold']:.3f} of its classified cells are blasts; model: {rep['model']}")
    for s in rep["skipped_sessions"]:
        typer.echo(f"warning: skipped {s}", err=True)
    if json_out:
        json_out.write_text(json.dumps(rep, indent=2))


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon(
        bundle: Path = typer.Option(None, help="Bundle to run (or \\[runtime] bundle in --config)."),
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
        crops: Path = typer.Option(None, help="Folder for a JPEG of each decided cell (alnett-edge report shows them)."),
        host: str = typer.Option(None, help="HTTP address (127.0.0.1 by default; others need --http-token)."),
        port: int = typer.Option(None, help="HTTP port for /healthz /status /metrics (0 = off; default 8080)."),
        http_token: str = typer.Option(None, help="Token required by the HTTP endpoints.", envvar="ALNETT_EDGE_HTTP_TOKEN"),
        preview: bool = typer.Option(None, "--preview/--no-preview", help="Serve /preview.mjpg of annotated frames."),
        summary_json: Path = typer.Option(None, help="Write the session summary (per-stage latency, counts) as JSON.",
                                          callback=output_file),
        tracking: bool = typer.Option(None, "--tracking/--no-tracking", help="One row per cell tracked across frames "
                                      "(default), or one per detection per frame."),
        observations: int = typer.Option(None, help="The sharpest good observations of a track classified and "
                                         "fused into its decision (default 3)."),
        watch_frames: int = typer.Option(None, help="Good observations a track is watched for before its sharpest "
                                         "are classified (default 6)."),
        target_cells: int = typer.Option(None, help="A differential of N decided cells: say so when reached (log, "
                                         "/status, --on-target)."),
        on_target: str = typer.Option(None, help="Command run once when the target is reached (a beep, an LED)."),
        stop_at_target: bool = typer.Option(None, "--stop-at-target/--no-stop-at-target",
                                            help="End the session when the target is reached."),
    ) -> None:
        """Run the microscope daemon: capture -> detect -> track -> quality gate -> classify -> record."""
        from alnett_edge.daemon.config import load_config
        from alnett_edge.daemon.service import Daemon, ood_warning
        from alnett_edge.daemon.sinks import StoreError

        overrides = {
            "source": {"spec": source, "fps": fps, "loop": loop, "queue": queue},
            "runtime": {"bundle": str(bundle) if bundle else None, "backend": backend},
            "sinks": {"db": str(db) if db else None, "jsonl": str(jsonl) if jsonl else None,
                      "snapshots": str(snapshots) if snapshots else None, "crops": str(crops) if crops else None},
            "http": {"host": host, "port": port, "token": http_token, "preview": preview},
            "run": {"max_frames": max_frames, "duration": duration, "target_cells": target_cells, "on_target": on_target,
                    "stop_at_target": stop_at_target},
            "tracking": {"enabled": tracking, "observations": observations, "watch_frames": watch_frames},
        }  # fmt: skip
        cfg = load_config(config, overrides)
        d = Daemon(cfg)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda num, _frame: d.request_stop(signal.Signals(num).name))
        if config is not None:  # SIGHUP: the config's [runtime] bundle again, swapped without a restart
            signal.signal(signal.SIGHUP, lambda *_: d.reload(config))
        summary = d.run()
        console().print(stage_table(summary))
        warning = ood_warning(summary)
        if warning:
            typer.echo(warning)
        typer.echo(f"database: {cfg.sinks.db} (stopped: {summary['stop_reason']})")
        if summary_json:
            summary_json.write_text(json.dumps(summary, indent=2))
        if summary["store_error"]:
            raise StoreError(summary["store_error"])

    @app.command("report")
    def report(
        db: Path = typer.Argument(..., help="The daemon's SQLite database."),
        out: Path = typer.Option(None, "--out", "-o", help="Folder for report.html, cells.png, latency.png "
                                 "(default: <db name>-report beside the database).", callback=output_dir),
        session: int = typer.Option(None, help="Session id (default: the last)."),
        crops: Path = typer.Option(None, help="The daemon's --crops folder (default: the one its session recorded)."),
        as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    ) -> None:
        """A per-slide differential of a daemon session: counts, blast %, interval, crops, latency (HTML + PNG)."""
        from alnett_edge.daemon.report import build_report

        rep = build_report(db, out or db.with_name(db.stem + "-report"), session, crops)
        if as_json:
            typer.echo(json.dumps(rep, indent=2))
            return
        est = f", estimated {rep['estimate']} (CI95 {rep['estimate_ci']})" if rep["estimate"] else ""
        typer.echo(f"session {rep['session_id']}: {rep['cells']} distinct cells, {rep['classified']} decided, "
                   f"{rep['blasts']} blasts = {rep['blast_pct']} (CI95 {rep['blast_ci']}){est}")
        for k, v in rep["outcomes"]:
            typer.echo(f"  {v:6d}  {k}")
        for w in rep["warnings"]:
            typer.echo(f"note: {w}")
        typer.echo("report: " + ", ".join(rep["files"].values()))

    @app.command("field-eval")
    def field_eval(
        bundle: Path = typer.Argument(None, help="Bundle to run (folder or .tar.gz); without one, the detector "
                                      "and quality gate alone are scored."),
        frames_arg: Path = typer.Argument(None, metavar="FRAMES", help="Annotated frames: Pascal VOC (BCCD) or YOLO "
                                          "(images/ + labels/), or a points CSV (image,x,y: cells counted by hand)."),
        frames_opt: Path = typer.Option(None, "--frames", help="The same folder, as an option."),
        config: Path = typer.Option(None, "--config", "-c", help="Daemon TOML: its \\[optics], \\[detector], \\[quality] "
                                    "and \\[runtime] backend / threads / max_batch are used."),
        um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="Pixel size in µm (default: \\[optics], "
                                        "else estimated from the frames' red cells)."),
        iou: float = typer.Option(0.5, help="IoU for a detection to count as a true cell."),
        match_um: float = typer.Option(4.0, "--match-um", min=0.1, help="A cell is found once when one detection, and "
                                       "only one, is centred within this many µm of its centre."),
        images: Path = typer.Option(None, "--images", help="With a points CSV: the folder its image names are in "
                                    "(default: the CSV's folder)."),
        limit: int = typer.Option(None, min=1, help="Only the first N frames."),
        json_out: Path = typer.Option(None, "--json", help="Write the report as JSON.", callback=output_file),
        sheet: Path = typer.Option(None, help="Write a contact sheet PNG (found green, false red, missed blue).",
                                   callback=output_file),
        fields: bool = typer.Option(False, "--fields", help="FRAMES are class folders of fields labelled per field "
                                    "(no boxes): score the field decision (the card's blast-fraction threshold)."),
        classes: list[str] = typer.Option(None, "--classes", help="With --fields: CLASS=FOLDER[,FOLDER...] as for "
                                          "harvest, e.g. --classes hem=Benign --classes all=Early,Pre,Pro."),
        threshold: float = typer.Option(None, "--threshold", min=0.0, max=1.0, help="With --fields: the blast "
                                        "fraction above which a field is ALL (default: the card's)."),
        centres: str = typer.Option(None, "--centres", help="Seed the nuclei with a learned centre detector: "
                                    "\"builtin\" or an .onnx from `detector train` (sets \\[detector] centres)."),
    ) -> None:
        """Score the daemon's per-frame path (detect, gate, crop, classify) on annotated field frames."""
        if frames_arg is None and frames_opt is None and bundle is not None and (
                (bundle.is_dir() and not (bundle / "manifest.json").is_file()) or bundle.suffix.lower() == ".csv"):
            bundle, frames_arg = None, bundle  # `field-eval FRAMES`: frames (or a points file), not a bundle
        if (frames_arg is None) == (frames_opt is None):
            raise ConfigError("give the annotated frames folder once: field-eval [BUNDLE] FRAMES or --frames FRAMES")
        frames = frames_arg or frames_opt
        from alnett_edge.daemon.config import build_config, load_config
        from alnett_edge.machine import inference_threads
        from alnett_edge.runtime.loader import open_runtime
        from alnett_edge.vision.fieldeval import contact_sheet
        from alnett_edge.vision.fieldeval import field_eval as run

        overrides = {"source": {"spec": "field-eval"}, "runtime": {"bundle": str(bundle or "none")},
                     "optics": {"um_per_px": um_per_px}, "detector": {"centres": centres}}
        cfg = load_config(config, overrides) if config else build_config({}, overrides)
        if fields:
            _field_decisions(bundle, frames, cfg, classes or (), limit, threshold, json_out)
            return
        if bundle is None:
            report, results = run(None, frames, cfg.detector, cfg.quality, iou, limit, cfg.runtime.max_batch, cfg.optics,
                                  match_um, images)
            report["model"] = "none (detector and quality gate only)"
        else:
            with open_runtime(bundle, cfg.runtime.backend or None, threads=inference_threads(cfg.runtime.threads)) as rt:
                report, results = run(rt, frames, cfg.detector, cfg.quality, iou, limit, cfg.runtime.max_batch,
                                      cfg.optics, match_um, images)
            report["model"] = rt.describe()
        table = Table(title=f"field-eval: {report['frames']} frames ({report['layout']}) of {frames}", title_justify="left")
        for col in ("true cells", "detections", "matched", "recall", "precision", "centroid recall", "classified"):
            table.add_column(col, justify="right")
        pct = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(str(report["true_cells"]), str(report["detections"]), str(report["matched"]), pct(report["recall"]),
                      pct(report["precision"]), pct(report["centroid_recall"]), str(report["classified"]))
        console().print(table)
        typer.echo(f"IoU >= {iou}; pixel size {report['optics']['um_per_px']:.4f} µm ({report['optics']['source']}); "
                   f"model: {report['model']}")
        if report["found_once"] is not None:
            typer.echo(f"found once (a detection centred within {match_um:g} µm, one to one): {report['found_once']:.3f} "
                       f"of the cells; extra detections {report['extra'] if report['extra'] is not None else 0:.3f}")
        if report["by_cluster"]:
            typer.echo("by cluster size (cells: found once / precision): " + ", ".join(
                f"{k}: {v['cells']} {v['found_once']:.2f}/{(v['precision'] or 0):.2f}" for k, v in report["by_cluster"].items()))
        sm, looked = report.get("smudges"), f"looked for in {report['smudge_frames']} of {report['frames']} frames"
        if sm and sm["true"]:
            echo_wrapped(f"smudge cells ({looked}): {sm['found']} of {sm['true']} found as smudge cells, "
                         f"{sm['boxed_as_white_cells']} boxed as white cells; {sm['on_no_smudge']} of "
                         f"{sm['detections']} smudge detections on none")
        else:
            echo_wrapped(f"smudge cells ({looked}): {sm['detections'] if sm else 0} detections, none marked in the "
                         "truth")
        if report["abstained"]:
            typer.echo("abstained: " + ", ".join(f"{k} {v}" for k, v in report["abstained"].items()))
        if report["cell_accuracy"] is not None:
            typer.echo(f"per-cell accuracy {report['cell_accuracy']:.3f} on {report['cells_with_truth_label']} "
                       "matched cells with a true label")
        for kind, v in report.get("calls_by_cluster", {}).items():
            typer.echo(f"cells {kind}: sensitivity {pct(v['sensitivity']) or '-'} on {v['blasts']} blasts, "
                       f"specificity {pct(v['specificity']) or '-'} on {v['normal']} normal cells")
        if report["blast_ratio_predicted"] is not None:
            ci = report["blast_ratio_predicted_ci95"]
            truth = report["blast_ratio_true"]
            typer.echo(f"blast ratio predicted {report['blast_ratio_predicted']:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f})"
                       + (f", true {truth:.3f}" if truth is not None else ""))
            est = report.get("blast_ratio_estimate")
            if est:
                typer.echo(f"blast ratio estimated {est['value']:.3f} (95 % CI {est['ci95'][0]:.3f}-{est['ci95'][1]:.3f}),"
                           " corrected for the frame edge and the model's errors")
        st = report["stages"]
        typer.echo("stage p50 ms: " + ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in st.items()))
        if json_out:
            json_out.write_text(json.dumps(report, indent=2))
        if sheet:
            typer.echo(f"sheet: {contact_sheet(results, sheet)}")
