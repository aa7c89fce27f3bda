"""``alnett-edge devices`` and ``alnett-edge trt-lint``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import WIDE_HELP, console


def register(app: typer.Typer) -> None:
    @app.command("devices")
    def devices(target: str = typer.Argument(None, help="Show one profile in full (name or alias)."),
                wide: bool = typer.Option(False, "--wide", help=WIDE_HELP)) -> None:
        """List the device profiles (runtimes, formats, precisions) export targets."""
        from alnett_edge.devices import ALIASES, load_profiles, resolve_target

        out = console(wide)
        if target:
            profile, note = resolve_target(target)
            if note:
                typer.echo(note)
            for key, value in profile.to_dict().items():
                typer.echo(f"{key:18s} {value}")
            return
        table = Table(title="device profiles")
        for col in ("name", "runtimes", "formats", "precisions (default)", "threads", "max batch", "camera"):
            table.add_column(col, no_wrap=col == "name", overflow="fold")  # a name is never cut
        for p in load_profiles().values():
            table.add_row(p.name, ", ".join(p.runtimes), ", ".join(p.formats),
                          f"{', '.join(p.precisions)} ({p.default_precision})", str(p.threads), str(p.max_batch), p.camera)
        out.print(table)
        typer.echo("aliases: " + ", ".join(f"{k} -> {v}" for k, v in ALIASES.items()))

    @app.command("trt-lint")
    def trt_lint(
        model: Path = typer.Argument(..., help="ONNX model (fp32 or int8 QDQ)."),
        target: str = typer.Option(None, help="Check the opset against this device's TensorRT."),
    ) -> None:
        """Check an ONNX model against TensorRT's requirements (runs without a GPU)."""
        from alnett_edge.devices import resolve_target
        from alnett_edge.errors import AlnettError
        from alnett_edge.export.trt_lint import lint_tensorrt

        max_opset = resolve_target(target)[0].onnx_opset if target else None
        report = lint_tensorrt(model, max_opset)
        for w in report.warnings:
            typer.echo(f"warning: {w}", err=True)
        if not report.ok:
            raise AlnettError(report.summary())
        typer.echo(report.summary())
