"""``alnett-edge data``: synthetic data, dataset inspection, contact sheet."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import console, output_dir

app = typer.Typer(no_args_is_help=True, help="Synthetic data and dataset tools.")


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (C-NMC training layout).", callback=output_dir),
    n: int = typer.Option(600, "--n", help="Number of cells."),
    size: int = typer.Option(450, help="Image side in pixels (C-NMC: 450)."),
    difficulty: float = typer.Option(0.5, help="0 = classes separable, 1 = heavily overlapping."),
    seed: int = typer.Option(0),
    fmt: str = typer.Option("bmp", "--format", help="bmp (as C-NMC) or png."),
    cells_per_patient: int = typer.Option(20, help="Cells per synthetic patient."),
    smears: int = typer.Option(0, help="Also write this many 640x480 smear frames with VOC boxes to OUT/smears."),
    crowded: int = typer.Option(0, min=0, help="Also write this many crowded fields (clusters of 2-8 touching white "
                                "cells, smudge cells; boxes, centres, cluster sizes and masks) to OUT/crowded."),
    crowded_um: float = typer.Option(0.25, "--crowded-um", min=0.01, help="The crowded fields' pixel size in µm."),
) -> None:
    """Generate seeded C-NMC-like cells (fold_k/{all,hem}) and optional BCCD-like smear frames."""
    from alnett_edge.data.synth import CrowdSpec, SynthSpec, generate_cnmc_dataset, generate_crowded, generate_smears

    info = generate_cnmc_dataset(out, SynthSpec(n_cells=n, size=size, difficulty=difficulty, seed=seed, fmt=fmt,
                                                cells_per_patient=cells_per_patient))
    typer.echo(f"wrote {info['cells']} cells ({info['all']} all, {info['hem']} hem, {info['patients']} patients) to {out}")
    if smears:
        s = generate_smears(out / "smears", smears, seed=seed)
        typer.echo(f"wrote {s['frames']} smear frames ({s['wbc']} white cells) to {out / 'smears'}")
    if crowded:
        c = generate_crowded(out / "crowded", crowded, CrowdSpec(um_per_px=crowded_um), seed=seed)
        typer.echo(f"wrote {c['frames']} crowded fields ({c['wbc']} white cells, {c['smudges']} smudge cells, "
                   f"{crowded_um:g} µm/px) to {out / 'crowded'}")


@app.command("inspect")
def inspect(
    root: Path = typer.Argument(..., help="Dataset folder or manifest CSV."),
    layout: str = typer.Option("auto", help="auto, cnmc, cnmc-prelim, manifest or folders."),
    labels_csv: Path = typer.Option(None, help="Label CSV for the cnmc-prelim layout."),
    val_fraction: float = typer.Option(0.2),
    seed: int = typer.Option(0),
) -> None:
    """Count images per class, patients and the patient-disjoint split of a dataset."""
    from alnett_edge.data.sources import class_counts, load_samples
    from alnett_edge.data.splits import make_split, patients_of

    samples = load_samples(root, layout, labels_csv)
    split = make_split(samples, val_fraction, seed)
    table = Table(title=str(root))
    for col in ("set", "images", "all", "hem", "patients"):
        table.add_column(col)
    for name, part in (("all", samples), ("train", split.train), ("val", split.val)):
        c = class_counts(part)
        table.add_row(name, str(len(part)), str(c["all"]), str(c["hem"]), str(len(patients_of(part))))
    console().print(table)
    typer.echo(f"split: {split.method}")


@app.command("sheet")
def sheet(
    real: Path = typer.Option(..., help="Real labelled cells (any supported layout)."),
    out: Path = typer.Option(Path("docs/real_vs_synthetic.png"), help="PNG to write."),
    difficulty: float = typer.Option(0.5),
    seed: int = typer.Option(0),
) -> None:
    """Write a PNG contact sheet of real vs synthetic cells."""
    from alnett_edge.data.sheet import contact_sheet
    from alnett_edge.data.sources import load_samples

    path = contact_sheet(load_samples(real), out, seed=seed, difficulty=difficulty)
    typer.echo(f"wrote {path}")
