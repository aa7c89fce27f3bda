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
        where = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{server.server_address[1]}/label"
        typer.echo(f"label view: {where}{' (sign in with the token)' if token else ''}  ({p['labelled']} of {p['cells']} cells labelled "
                   f"by {book.labeller}; keys 1-{len(book.classes)} classes, x reject, s skip, u undo; Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
            p = book.progress()
            typer.echo(f"{p['labelled']} of {p['cells']} cells labelled by {book.labeller}, in {book.path}")
