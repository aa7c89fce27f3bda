"""``alnett-edge compare``: ALNett against the paper's models and the edge models, on your data and device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import COLOUR_JITTER_HELP, WIDE_HELP, colour_jitter_pair, console, output_dir


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        data: Path = typer.Option(..., "--data", "-d", help="The dataset every model is cross-validated on."),
        models: str = typer.Option("alnett-s,vgg16,resnet50,googlenet,alexnet,mobilenet_v2,mobilenet_v3_small,"
                                   "efficientnet_b0,shufflenet_v2", "--models", "-m",
                                   help="Comma-separated models (see `model list`); ratios are to the first ALNett."),
        out: Path = typer.Option(Path("runs/compare"), "--out", "-o", callback=output_dir,
                                 help="One folder per model's run (reused when there), the bundles and the table."),
        folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds (grouped by patient or field)."),
        input_size: int = typer.Option(None, help="Input side for every model (default: each model's own)."),
        epochs: int = typer.Option(30, help="Training epochs (the same recipe for every model)."),
        seed: int = typer.Option(0),
        stain: str = typer.Option("auto", help="Colour normalisation for every model (see train --stain)."),
        colour_jitter: str = typer.Option("0,0", "--colour-jitter", help=COLOUR_JITTER_HELP),
        target: str = typer.Option("x86-cpu", help="Device profile the models are exported for and timed on."),
        batch: str = typer.Option("1,8", help="Batch sizes timed, comma-separated."),
        runs: int = typer.Option(100, help="Timed calls per batch size and round."),
        rounds: int = typer.Option(3, help="Every row timed this many times, in turn (ratios round by round)."),
        threads: int = typer.Option(0, help="Threads per backend (0 = all cores)."),
        workers: int = typer.Option(2, help="Data-loading processes while training."),
        wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    ) -> None:
        """The paper's comparison on your data: accuracy, calibration, size and deployed latency of every
        model, as ratios to ALNett; OUT/compare.md, compare.json and compare.png. Resumable."""
        from alnett_edge.compare.compare import CompareConfig, compare as run
        from alnett_edge.errors import ConfigError

        try:
            batches = tuple(int(b) for b in batch.split(","))
        except ValueError:
            raise ConfigError(f"--batch must be comma-separated integers, got {batch!r}") from None
        cfg = CompareConfig(data=str(data), models=tuple(m.strip() for m in models.split(",") if m.strip()),
                            out=str(out), folds=folds, input_size=input_size, epochs=epochs, seed=seed, stain=stain,
                            colour_jitter=colour_jitter_pair(colour_jitter), target=target, batches=batches,
                            runs=runs, rounds=rounds, threads=threads, workers=workers)
        rep = run(cfg)
        b1 = str(batches[0])
        table = Table(title=f"compare on {data} ({folds} folds; ratios to {rep['reference']})", title_justify="left")
        cols = ["model", "params", "MACs", "accuracy", "F1", "AUC", "ECE", f"b{b1} ms", "× ref"]
        if wide:
            cols[4:4] = ["sensitivity", "specificity"]
            cols += ["fp32 MB", "int8 MB", "÷ eager"]
        for c in cols:
            table.add_column(c, justify="left" if c == "model" else "right")
        for e in rep["models"]:
            lat = min(e["latency"].values(), key=lambda r: r["p50_ms"][b1], default=None)
            cv = e["cv"]

            def f3(k: str) -> str:
                return "n/a" if cv[k]["mean"] is None else f"{cv[k]['mean']:.3f}"

            row = {"model": e["model"], "params": f"{e['params'] / 1e6:.2f}M", "MACs": f"{e['macs'] / 1e6:.0f}M",
                   "accuracy": f"{f3('accuracy')}±{cv['accuracy']['std']:.3f}", "F1": f3("f1"), "AUC": f3("roc_auc"),
                   "ECE": f3("ece"), "sensitivity": f3("sensitivity"), "specificity": f3("specificity"),
                   f"b{b1} ms": "—" if lat is None else f"{lat['p50_ms'][b1]:.2f}",
                   "× ref": "—" if lat is None or "vs_ref" not in lat else f"{lat['vs_ref'].get(b1, float('nan')):.2f}",
                   "fp32 MB": "—" if e["fp32_bytes"] is None else f"{e['fp32_bytes'] / 1e6:.2f}",
                   "int8 MB": "—" if e["int8_bytes"] is None else f"{e['int8_bytes'] / 1e6:.2f}",
                   "÷ eager": "—" if lat is None or "vs_eager" not in lat
                   else f"{lat['vs_eager'].get(b1, float('nan')):.2f}"}
            table.add_row(*(row[c] for c in cols))
        con = console()
        con.print(table)
        con.print(f"timed on: {rep['machine']['isa']} ({rep['machine']['cores']} cores)")
        typer.echo(f"table: {Path(out) / 'compare.md'} (and compare.json, compare.png)")
