"""``alnett-edge harvest``: training cells from your microscope's frames (:mod:`alnett_edge.vision.harvest`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.capture.base import source_help
from alnett_edge.cli.common import console, output_file


def register(app: typer.Typer) -> None:
    @app.command("harvest")
    def harvest(
        source: str = typer.Argument(..., help=f"A folder of frames (each image a field), class folders of frames "
                                     f"(--labels-from-folders), a video or a camera: {source_help()}."),
        out: Path = typer.Option(..., "--out", "-o", help="The dataset folder: new, empty, or an earlier harvest to add "
                                 "to (cells already in it are not written again; labels are kept)."),
        labels_from_folders: bool = typer.Option(False, "--labels-from-folders", help="SOURCE/CLASS/...: every cell "
                                                 "inherits its field's class as a weak label."),
        classes: list[str] = typer.Option(None, "--classes", help="CLASS=FOLDER[,FOLDER...], once per class, e.g. "
                                          "--classes hem=Benign --classes all=Early,Pre,Pro (default: folders named "
                                          "all / hem or an alias). A folder that matches no class is an error. "
                                          "Other class names (--classes benign=Benign --classes pre=Pre ...) train a "
                                          "model of those classes; then --blast names the blast ones."),
        blast: list[str] = typer.Option(None, "--blast", help="The classes whose share is the blast ratio, when "
                                        "--classes names others than all / hem, e.g. --blast early,pre,pro."),
        bundle: Path = typer.Option(None, "--bundle", help="Record this bundle's probabilities for each cell (at its "
                                    "own scale), for labelling the least certain first."),
        config: Path = typer.Option(None, "--config", "-c", help="Daemon TOML: its \\[optics], \\[detector], "
                                    "\\[quality] and \\[tracking] are used."),
        um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="Pixel size in µm for every session "
                                        "(default: \\[optics], else estimated per session from its red cells)."),
        canvas_um: float = typer.Option(None, "--canvas-um", help="The crops' canvas in µm (default: measured from "
                                        "the cells; a re-run keeps the dataset's)."),
        group_by: str = typer.Option("auto", "--group-by", help="The split group of a cell: session (its folder, "
                                     "video or camera run), field (its frame), or auto (field where a class folder "
                                     "holds its frames directly, else session)."),
        track: bool = typer.Option(False, "--track", help="A folder's frames are consecutive frames (tracked, each "
                                   "cell written once), not separate fields."),
        max_frames: int = typer.Option(None, "--max-frames", min=1, help="At most N frames per session."),
        duration: float = typer.Option(None, "--duration", help="At most S seconds per session (a camera)."),
        json_out: Path = typer.Option(None, "--json", help="Write the report as JSON.", callback=output_file),
        sheet: Path = typer.Option(None, "--sheet", help="Write a contact sheet PNG of harvested cells.",
                                   callback=output_file),
    ) -> None:
        """Harvest training cells from a microscope's frames through the daemon's own vision path."""
        from alnett_edge.daemon.config import build_config, load_config
        from alnett_edge.machine import inference_threads
        from alnett_edge.runtime.loader import open_runtime
        from alnett_edge.vision.harvest import Harvester, HarvestOptions, contact_sheet

        overrides = {"source": {"spec": "harvest"}, "runtime": {"bundle": str(bundle or "none")},
                     "optics": {"um_per_px": um_per_px}}
        cfg = load_config(config, overrides) if config else build_config({}, overrides)
        options = HarvestOptions(labels_from_folders, classes or (), blast or (), canvas_um, group_by, track, max_frames,
                                 duration, cfg.optics, cfg.detector, cfg.quality, cfg.tracking)
        if bundle is None:
            harvester = Harvester(out, options)
            reports = harvester.run(source)
        else:
            with open_runtime(bundle, cfg.runtime.backend or None, threads=inference_threads(cfg.runtime.threads)) as rt:
                harvester = Harvester(out, options, rt, rt.sha256())
                reports = harvester.run(source)
        table = Table(title=f"harvest into {out} (canvas {harvester.canvas_um:g} µm)", title_justify="left")
        for col, justify in (("session", "left"), ("frames", "right"), ("µm/px", "right"), ("found", "right"),
                             ("written", "right"), ("already", "right"), ("abstained", "left")):
            table.add_column(col, justify=justify, overflow="fold")
        for r in reports:
            table.add_row(r.session, str(r.frames), f"{r.um_per_px:.4f}" if r.um_per_px else "-", str(r.detections),
                          str(r.written), str(r.already),
                          ", ".join(f"{k} {v}" for k, v in r.abstained.most_common()) or r.optics)
        console().print(table)
        written = sum(r.written for r in reports)
        typer.echo(f"{written} new cells, {len(harvester.rows)} in the dataset; manifest {out / 'manifest.csv'}")
        for r in reports:
            if r.um_per_px is None:
                typer.echo(f"warning: session {r.session} skipped: {r.optics}", err=True)
            if r.unreadable:
                typer.echo(f"warning: {len(r.unreadable)} unreadable frame(s) skipped in {r.session}, e.g. "
                           f"{r.unreadable[0]}", err=True)
        if json_out:
            json_out.write_text(json.dumps({"dataset": str(out), "canvas_um": harvester.canvas_um,
                                            "cells": len(harvester.rows), "written": written,
                                            "sessions": [r.to_dict() for r in reports]}, indent=2))
        if sheet:
            typer.echo(f"contact sheet: {contact_sheet(out, harvester.rows, sheet)}")
