"""``alnett-edge train``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import COLOUR_JITTER_HELP, colour_jitter_pair, console, output_dir


def ensemble_line(info: dict) -> str:
    return (f"ensemble: {info['path']} ({info['members']} models, {info['macs'] / 1e9:.3f} GMAC = "
            f"{info['members']}x {info['member_macs'] / 1e9:.3f}: {info['members']}x the latency of one model)")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", "-d", help="Dataset folder or manifest CSV."),
        out: Path = typer.Option(Path("runs/train"), "--out", "-o", callback=output_dir),
        variant: str = typer.Option("alnett-s", "--model", "-m", help="An ALNett variant or a torchvision "
                                    "baseline (vgg16, resnet50, googlenet, alexnet, mobilenet_v2, mobilenet_v3_small, "
                                    "efficientnet_b0, shufflenet_v2; see `model list`)."),
        input_size: int = typer.Option(None, help="Input side in pixels (default: the variant's)."),
        layout: str = typer.Option("auto", help="auto, cnmc, cnmc-prelim, manifest or folders."),
        labels_csv: Path = typer.Option(None, help="Label CSV for the cnmc-prelim layout."),
        epochs: int = typer.Option(30),
        batch_size: int = typer.Option(32, "--batch-size", "-b"),
        lr: float = typer.Option(2e-3),
        weight_decay: float = typer.Option(0.05),
        patience: int = typer.Option(8, help="Early stopping: epochs without a better validation score (--select)."),
        select: str = typer.Option("loss", help="The epoch kept: loss (lowest validation loss, mean of 3 epochs), "
                                   "f1 (best validation F1) or last (the whole schedule, no early stop)."),
        ema_epochs: float = typer.Option(2.0, min=0.0, help="Validate and keep a moving average of the weights "
                                         "over about this many epochs (0: the raw weights)."),
        label_smoothing: float = typer.Option(0.0, help="Label smoothing of the training loss (0 to 0.5)."),
        tta: str = typer.Option("none", help="Test-time augmentation recorded in the card, applied by every "
                                "backend: none, flips (4 views) or d4 (8); logits averaged."),
        val_fraction: float = typer.Option(0.2, help="Share of patients for validation (no official folds)."),
        val_fold: str = typer.Option(None, help="Official fold used for validation (default: the last)."),
        balance: str = typer.Option("weights", help="Class imbalance: weights, sampler or none."),
        no_augment: bool = typer.Option(False, "--no-augment"),
        dilations: str = typer.Option(None, help="Comma-separated dilation rates, e.g. 1,2,3."),
        fusion: str = typer.Option(None, help="Branch fusion: concat or sum."),
        stain: str = typer.Option("auto", help="Colour normalisation in the card: none (the card's mean/std), "
                                  "cell (each cell's own mean/std: robust to lamp and stain strength), opponent "
                                  "(each cell's own opponent colour planes: robust to saturation too) or auto "
                                  "(cell when a class comes from fewer than 8 patients, else none)."),
        canvas_um: float = typer.Option(0.0, "--canvas-um", min=0.0, help="Side of the input canvas in µm "
                                        "(default: measured, the median normal cell taken as 9 µm)."),
        workers: int = typer.Option(2, help="Data loading worker processes."),
        device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
        seed: int = typer.Option(0),
        resume: bool = typer.Option(False, help="Continue from OUT/last.safetensors (exactly as if never stopped)."),
        stop_after: int = typer.Option(None, help="Run at most this many epochs now; continue later with --resume."),
        folds: int = typer.Option(0, "--folds", min=0, help="K-fold cross-validation (patient-disjoint, stratified): "
                                  "every fold trained alike and scored on its held-out cells; OUT/cv_report.md."),
        init: Path = typer.Option(None, "--init", help="Fine-tune from this checkpoint (e.g. a C-NMC model on your "
                                  "harvest): its preprocessing is kept, the canvas and the training cells' look are "
                                  "measured again on --data."),
        freeze: int = typer.Option(0, "--freeze", help="With --init: keep the stem and the first N clusters' weights "
                                   "(their batch-norm statistics still adapt to the new cells)."),
        weak_labels: str = typer.Option("naive", "--weak-labels", help="Cells labelled only by their field (a "
                                        "harvest's weak labels): naive (each takes its field's label) or mil "
                                        "(multiple-instance: a benign field has no blasts, an ALL field at least one)."),
        colour_jitter: str = typer.Option("0,0", "--colour-jitter", help=COLOUR_JITTER_HELP),
        weights: Path = typer.Option(None, "--weights", help="A baseline's starting weights: a torchvision state "
                                     "dict you have (its head is replaced when the classes differ); default: from "
                                     "scratch."),
        ensemble: bool = typer.Option(False, "--ensemble", help="With --folds: also write OUT/ensemble.safetensors, "
                                      "the fold models as one model (K times the compute at run time)."),
    ) -> None:
        """Train ALNett (or a baseline); writes best/last checkpoints (with their model card) to OUT."""
        from alnett_edge.errors import ConfigError
        from alnett_edge.train.loop import TrainConfig
        from alnett_edge.train.loop import train as run

        try:
            dil = tuple(int(d) for d in dilations.split(",")) if dilations else None
        except ValueError:
            raise ConfigError(f"--dilations must be comma-separated integers, got {dilations!r}") from None
        hue, sat = colour_jitter_pair(colour_jitter)
        cfg = TrainConfig(
            data=str(data), out=str(out), variant=variant, input_size=input_size, layout=layout,
            labels_csv=str(labels_csv) if labels_csv else None, epochs=epochs, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, patience=patience, val_fraction=val_fraction, val_fold=val_fold,
            balance=balance, augment=not no_augment, dilations=dil, fusion=fusion, stain=stain, canvas_um=canvas_um,
            workers=workers, device=device, seed=seed, resume=resume, stop_after=stop_after,
            select=select, ema_epochs=ema_epochs, label_smoothing=label_smoothing, tta=tta,
            init=str(init) if init else None, freeze=freeze, weak_labels=weak_labels, colour_jitter=(hue, sat),
            weights=str(weights) if weights else None,
        )
        if ensemble and not folds:
            raise ConfigError("--ensemble averages cross-validation fold models: give --folds K too")
        if folds:
            from alnett_edge.train.cv import CV_KEYS, cross_validate

            rep = cross_validate(cfg, folds, ensemble=ensemble)
            table = Table(title=f"{variant}: {folds}-fold cross-validation (held-out cells)", title_justify="left")
            for col in ("fold", "cells", "epoch", "T", *CV_KEYS):
                table.add_column(col, justify="right")
            for r in rep["per_fold"]:
                table.add_row(str(r["fold"]), str(r["n_test"]), str(r["best_epoch"]), f"{r['temperature']:.2f}",
                              *("n/a" if r[k] is None else f"{r[k]:.3f}" for k in CV_KEYS))
            sm = rep["summary"]
            table.add_row("mean", "", "", "", *("n/a" if sm[k]["mean"] is None else f"{sm[k]['mean']:.3f}" for k in CV_KEYS))
            table.add_row("± std", "", "", "", *("" if sm[k]["std"] is None else f"{sm[k]['std']:.3f}" for k in CV_KEYS))
            pl = rep["pooled"]
            table.add_row("pooled", str(pl["n"]), "", "", *("n/a" if pl[k] is None else f"{pl[k]:.3f}" for k in CV_KEYS))
            console().print(table)
            if rep.get("fields"):
                f = rep["fields"]
                auc = "n/a" if f["auc"] is None else f"{f['auc']:.3f}"
                score = ", ".join(f.get("score") or ["blast_fraction"])
                typer.echo(f"held-out fields: {f['fields']}, accuracy {f['accuracy']:.3f}, sensitivity "
                           f"{f['sensitivity']:.3f}, specificity {f['specificity']:.3f}, AUC {auc} ({score})")
            typer.echo(f"report: {out / 'cv_report.md'} (and cv_report.json, cv_roc.png); {rep['seconds']:.0f} s")
            if ensemble:
                typer.echo(ensemble_line(rep["ensemble"]))
            return
        result = run(cfg)
        m = result.best_metrics
        if m:
            typer.echo(
                f"best epoch {result.best_epoch}: val accuracy {m['accuracy']:.4f}  sensitivity {m['sensitivity']:.4f}  "
                f"specificity {m['specificity']:.4f}  F1 {m['f1']:.4f}"
            )
        if result.load_report.get("skipped"):
            typer.echo(f"skipped {result.load_report['skipped']} unreadable images (see warnings)")
        typer.echo(f"checkpoints: {result.best} (best), {result.last} (last)")
