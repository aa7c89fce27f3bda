"""``alnett-edge model``: registered variants and their size."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import console

from alnett_edge.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Model variants.")


@app.command("list")
def list_() -> None:
    """List the ALNett variants and the torchvision baselines (``train --model NAME``)."""
    from alnett_edge.model import get_variant, list_variants
    from alnett_edge.model.baselines import BASELINES, DEFAULT_INPUT

    for name in list_variants():
        v = get_variant(name)
        typer.echo(f"{name:18s} {v.input_size}x{v.input_size}  {v.description}")
    for name, spec in BASELINES.items():
        typer.echo(f"{name:18s} {DEFAULT_INPUT}x{DEFAULT_INPUT}  {spec.description}")
    typer.echo("(the baselines are torchvision's architectures, trained from scratch unless train --weights FILE)")


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Variant or baseline name, or a .safetensors checkpoint."),
    input_size: int = typer.Option(None, help="Input side (default: the variant's)."),
) -> None:
    """Parameters, MACs and per-layer output shapes of a variant or checkpoint."""
    from alnett_edge.model import load_checkpoint, profile_model
    from alnett_edge.model.registry import create_model, default_input_size

    if name.endswith(".safetensors"):
        model, card = load_checkpoint(name)
        size = input_size or card.input.size[0]
        title = f"{name} ({card.variant})"
    else:
        model = create_model(name)
        size = input_size or default_input_size(name)
        title = name
    if size < model.min_input_size():
        raise ConfigError(f"--input-size {size} is below the {model.min_input_size()} this model needs")
    prof = profile_model(model, size)
    table = Table(title=f"{title} @ {size}x{size}")
    for col in ("layer", "type", "output", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
    for layer in prof.layers:
        table.add_row(layer.name, layer.kind, "x".join(map(str, layer.output_shape[1:])), f"{layer.params:,}",
                      f"{layer.macs:,}")
    out = console()
    out.print(table)
    out.print(f"parameters: {prof.params:,}   MACs: {prof.macs / 1e6:.1f} M ({prof.macs / 1e9:.3f} G)")


@app.command("ensemble")
def ensemble(
    checkpoints: list[Path] = typer.Argument(..., help="Two or more fp32 .safetensors checkpoints fed alike "
                                                       "(e.g. the fold models of train --folds, pruned or not)."),
    out: Path = typer.Option(..., "--out", "-o", help="The ensemble checkpoint to write (.safetensors)."),
) -> None:
    """One checkpoint that averages the members' calibrated logits (K times the compute at run time)."""
    from alnett_edge.cli.train import ensemble_line
    from alnett_edge.train.cv import build_ensemble

    typer.echo(ensemble_line(build_ensemble(checkpoints, out)))
