"""``alnett-edge demo``: the whole main job offline on synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import WIDE_HELP, console as make_console, output_dir


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Work folder.", callback=output_dir),
        variant: str = typer.Option("alnett-tiny", "--model", "-m", help="alnett-tiny (default) or alnett-s."),
        n_cells: int = typer.Option(600, help="Synthetic cells to generate."),
        epochs: int = typer.Option(15),
        difficulty: float = typer.Option(0.4),
        seed: int = typer.Option(0),
        stages: str = typer.Option(None, help="Comma-separated subset of stages (default: all)."),
        real: Path = typer.Option(None, help="Also evaluate on real labelled cells (e.g. ../shared/data/cnmc-sample)."),
        wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    ) -> None:
        """Generate data, train, evaluate (and every later stage), then print a summary."""
        from alnett_edge.demo import PipelineContext, resolve_stages, run_pipeline

        console = make_console(wide)
        ctx = PipelineContext(workdir=out, variant=variant, n_cells=n_cells, epochs=epochs, difficulty=difficulty,
                              seed=seed, real_data=real)
        only = resolve_stages([s.strip() for s in stages.split(",")] if stages else None)
        console.print(f"alnett-edge demo: stages {', '.join(only)} -> {out}")
        t0 = time.perf_counter()
        results = run_pipeline(ctx, only, on_stage=lambda r: console.print(f"  [green]done[/] {r.name} ({r.seconds:.1f} s)"))
        table = Table(title=f"demo summary ({time.perf_counter() - t0:.0f} s)")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        table.add_column("result")
        for r in results:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.info.items())
            table.add_row(r.name, f"{r.seconds:.1f}", shown)
        console.print(table)
        from alnett_edge.cli.export import gate_table

        for target, manifest in ctx.artifacts.get("manifests", {}).items():
            console.print(gate_table(manifest), f"bundle {target}: {manifest['bundle']}")
        if "daemon_summary" in ctx.artifacts:
            from alnett_edge.cli.daemon import stage_table

            console.print(stage_table(ctx.artifacts["daemon_summary"]))
        report = next((r.info["report"] for r in results if r.name == "daemon" and "report" in r.info), None)
        if report:
            typer.echo(f"slide report (open it in a browser): {Path(report).resolve()}")
        console.print(f"files: {out.resolve()}")
