"""``alnett-edge label``: label a harvest's cells in the browser, keyboard first (:mod:`alnett_edge.vision.labels`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import console, output_file

log = logging.getLogger(__name__)


def _address(server, host: str, token: str, page: str) -> str:  # noqa: ANN001 - http.server's server
    where = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{server.server_address[1]}/{page}"
    return where + (" (sign in with the token)" if token else "")


def _serve_until_interrupted(server) -> None:  # noqa: ANN001 - http.server's server
    """Serve until Ctrl-C, then stop the server."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()


def register(app: typer.Typer) -> None:
    @app.command("label")
    def label(
        dataset: Path = typer.Argument(..., help="A harvest (alnett-edge harvest --out DATASET)."),
        labeller: str = typer.Option(None, "--labeller", "-l", help="Your name: your labels are DATASET/labels/NAME.csv "
                                     "(two people labelling the same cells give their agreement). Default: $USER."),
        order: str = typer.Option("uncertain", "--order", help="Which cells first: uncertain (the model's least sure; "
                                  "harvest with --bundle), disagree (the model against the field's label), labellers "
                                  "(cells two people labelled differently), outliers (least like the training cells) "
                                  "or harvest."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (other than localhost: --token)."),
        port: int = typer.Option(8090, "--port", min=0, max=65535),
        token: str = typer.Option("", "--token", envvar="ALNETT_LABEL_TOKEN", help="Needed to serve beyond localhost."),
        agreement_only: bool = typer.Option(False, "--agreement", help="Print the labellers' agreement (Cohen's "
                                            "kappa) and stop."),
        json_out: Path = typer.Option(None, "--json", help="With --agreement: write it as JSON.", callback=output_file),
    ) -> None:
        """Serve the label view for DATASET (open the printed address); Ctrl-C stops it. Labels are saved at each key."""
        import getpass

        from alnett_edge.daemon.labelpage import serve_labels
        from alnett_edge.vision.labels import LabelBook, agreement

        if agreement_only:
            rep = agreement(dataset)
            if json_out:
                json_out.write_text(json.dumps(rep, indent=2))
            if not rep["pairs"]:
                typer.echo(f"{len(rep['labellers'])} labeller(s) in {dataset}: agreement needs two")
                return
            table = Table(title=f"Agreement between labellers, {dataset}", title_justify="left")
            for c in ("labellers", "cells both labelled", "agreement", "Cohen's kappa", "disagreements"):
                table.add_column(c, justify="left" if c in ("labellers", "disagreements") else "right")
            for p in rep["pairs"]:
                table.add_row(f"{p['a']} & {p['b']}", str(p["cells"]),
                              "n/a" if p["observed"] is None else f"{p['observed']:.3f}",
                              "n/a" if p["kappa"] is None else f"{p['kappa']:.3f}",
                              ", ".join(f"{k} {v}" for k, v in sorted(p["disagreements"].items())) or "-")
            console().print(table)
            return
        book = LabelBook(dataset, labeller or getpass.getuser(), order)
        server = serve_labels(book, host, port, token)
        p = book.progress()
        typer.echo(f"label view: {_address(server, host, token, 'label')}  ({p['labelled']} of {p['cells']} cells "
                   f"labelled by {book.labeller}; keys 1-{len(book.classes)} classes, x reject, s skip, u undo; "
                   "Ctrl-C stops)")
        _serve_until_interrupted(server)
        p = book.progress()
        typer.echo(f"{p['labelled']} of {p['cells']} cells labelled by {book.labeller}, in {book.path}")

    @app.command("mark")
    def mark(
        frames: Path = typer.Argument(..., help="A folder of field frames (images found below it)."),
        out: Path = typer.Option(..., "--out", "-o", help="The points CSV (image,x,y,kind) to keep the marks in; "
                                 "an existing one is resumed.", callback=output_file),
        propose: str = typer.Option("rule", "--propose", help="Offer the detector's cells on a frame not yet "
                                    "marked: rule (the rule-based detector), builtin or an .onnx from `detector "
                                    "train` (learned centres), or none."),
        um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="Pixel size for the proposals "
                                        "(default: estimated from the frames' red cells)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (other than localhost: --token)."),
        port: int = typer.Option(8091, "--port", min=0, max=65535),
        token: str = typer.Option("", "--token", envvar="ALNETT_LABEL_TOKEN", help="Needed to serve beyond localhost."),
    ) -> None:
        """Mark cell centres on FRAMES in the browser (the learned centre detector's training and gate data)."""
        from alnett_edge.daemon.markpage import serve_marks
        from alnett_edge.errors import ConfigError
        from alnett_edge.vision.detector import CellDetector, DetectorConfig
        from alnett_edge.vision.fieldeval import folder_scale
        from alnett_edge.vision.marks import MarkBook
        from alnett_edge.vision.optics import OpticsConfig

        book = MarkBook(frames, out)
        if propose != "none":
            if propose == "":
                raise ConfigError("--propose: rule, builtin, a model file or none")
            um = um_per_px or folder_scale(book.images[:: max(1, len(book.images) // 20)], OpticsConfig())[0]
            book.detector = CellDetector(DetectorConfig(centres="" if propose == "rule" else propose), um)
        server = serve_marks(book, host, port, token)
        typer.echo(f"mark view: {_address(server, host, token, 'mark')}  ({len(book.marks)} of {len(book.images)} "
                   "frames marked; click a cell, shift-click a smudge cell, n save and next; Ctrl-C stops)")
        _serve_until_interrupted(server)
        typer.echo(f"{len(book.marks)} of {len(book.images)} frames marked, in {out}")
