"""``alnett-edge evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer

from alnett_edge.cli.common import output_dir


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint."),
        data: Path = typer.Option(..., "--data", "-d", help="Labelled dataset folder or manifest CSV."),
        out: Path = typer.Option(Path("runs/eval"), "--out", "-o", callback=output_dir),
        split: str = typer.Option("all", help="all images, or the val/train split the checkpoint was trained with."),
        layout: str = typer.Option("auto"),
        labels_csv: Path = typer.Option(None, help="Label CSV for the cnmc-prelim layout."),
        batch_size: int = typer.Option(64),
        device: str = typer.Option("auto"),
    ) -> None:
        """Accuracy, sensitivity, specificity, F1, ROC-AUC, confusion matrix (+ per patient); JSON + PNGs."""
        from alnett_edge.train.evaluate import evaluate_checkpoint

        rep = evaluate_checkpoint(checkpoint, data, out, layout, str(labels_csv) if labels_csv else None, split,
                                  batch_size, device)
        m = rep["metrics"]
        auc = f"{m['roc_auc']:.4f}" if m["roc_auc"] is not None else "n/a"
        typer.echo(
            f"{m['n']} images: accuracy {m['accuracy']:.4f}  balanced {m['balanced_accuracy']:.4f}  "
            f"sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  F1 {m['f1']:.4f}  "
            f"weighted F1 {m['f1_weighted']:.4f}  AUC {auc}"
        )
        if "per_patient" in m:
            p = m["per_patient"]
            typer.echo(f"{p['patients']} patients: accuracy {p['accuracy']:.4f}  F1 {p['f1']:.4f}")
        c = m["calibration"]
        typer.echo(f"calibration: ECE {c['ece']:.4f} at temperature {c['temperature']:g}"
                   + ("" if c["temperature"] != 1.0 else " (the card has no calibration)") + f", {c['bins']} bins; "
                   f"{c['ece_floor']:.4f} expected from sampling alone on {m['n']} cells")
        typer.echo(f"report: {Path(out) / 'report.json'} (plots: confusion.png, roc.png, reliability.png)")
