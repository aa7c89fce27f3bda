"""``alnett-edge prune``, ``qat`` and ``calibrate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import console, echo_wrapped, output_dir, output_file, uncounted_changes


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return "" if v is None else str(v)


def _table(title: str, rows: dict[str, dict[str, object]], columns: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("")
    for c in columns:
        table.add_column(c, justify="right")
    for name, row in rows.items():
        table.add_row(name, *(_fmt(row.get(c)) for c in columns))
    return table


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune(
        checkpoint: Path = typer.Argument(..., help="fp32 .safetensors checkpoint."),
        data: Path = typer.Option(..., "--data", "-d", help="The dataset it was trained on (for fine-tuning)."),
        out: Path = typer.Option(Path("runs/prune"), "--out", "-o", callback=output_dir),
        ratio: float = typer.Option(0.5, help="Share of MACs to remove, in (0, 1)."),
        target_macs: float = typer.Option(None, help="Absolute MAC target instead of --ratio (e.g. 5e7)."),
        importance: str = typer.Option("l1", help="l1, l2, bn (BatchNorm scale) or taylor."),
        global_pruning: bool = typer.Option(False, "--global", help="Rank channels across layers, not per layer."),
        steps: int = typer.Option(1, help="Prune in this many stages, fine-tuning after each."),
        round_to: int = typer.Option(16, help="Keep channel counts multiples of this (1: any; 16 is fastest in ORT here)."),
        finetune_epochs: int = typer.Option(2, help="Fine-tuning epochs after each stage (0: BN recalibration only)."),
        lr: float = typer.Option(1e-3, help="Fine-tuning learning rate."),
        budget: float = typer.Option(1.0, help="Most validation accuracy, in points, pruning may cost; a stage "
                                               "that costs more is undone and pruning stops (100: no limit)."),
    ) -> None:
        """Structured channel pruning (DepGraph) with iterative fine-tuning, within an accuracy budget;
        prints before -> after."""
        from alnett_edge.compress.prune import PruneConfig, prune_checkpoint
        from alnett_edge.errors import CompressionError

        rep = prune_checkpoint(checkpoint, data, out,
                               PruneConfig(ratio=ratio, target_macs=target_macs, importance=importance,
                                           global_pruning=global_pruning, steps=steps,
                                           round_to=round_to if round_to > 1 else None, budget=budget),
                               finetune_epochs=finetune_epochs, lr=lr)
        stop = rep["stopped"]
        why = (f"stage {stop['stage']} ({stop['macs'] / 1e6:.2f} M MACs) cost {stop['drop_points']:.1f} points of "
               f"validation accuracy ({stop['baseline_accuracy']:.4f} -> {stop['accuracy']:.4f}), more than the "
               f"{budget:g}-point budget") if stop else ""
        if rep["pruned"] is None:
            raise CompressionError(f"no pruned checkpoint: {why}; export the unpruned model, or prune less (--ratio), "
                                   f"in more --steps, or allow more (--budget); report: {Path(out) / 'prune_report.json'}")
        cols = ["params", "macs", "checkpoint_bytes", "onnx_bytes", "ort_b1_p50_ms", "accuracy", "sensitivity",
                "specificity", "f1"]
        console().print(_table(f"pruning: MACs x{rep['mac_ratio']:.3f}", {"before": rep["before"], "after": rep["after"]}, cols))
        if stop:
            echo_wrapped(f"pruning stopped early: {why}; that stage was undone and the model of stage "
                         f"{stop['stage'] - 1} kept.")
        typer.echo(f"pruned checkpoint: {rep['pruned']} (report: {Path(out) / 'prune_report.json'})")

    @app.command("qat")
    def qat(
        checkpoint: Path = typer.Argument(..., help="fp32 (optionally pruned) .safetensors checkpoint."),
        data: Path = typer.Option(..., "--data", "-d", help="The dataset it was trained on."),
        out: Path = typer.Option(Path("runs/qat"), "--out", "-o", callback=output_dir),
        scheme: str = typer.Option("symmetric", help="symmetric (TensorRT: zero-point 0) or asymmetric (LiteRT/XNNPACK)."),
        epochs: int = typer.Option(2),
        lr: float = typer.Option(2e-5, help="QAT learning rate (low: QAT should tune ranges, not re-train)."),
        batch_size: int = typer.Option(32, "--batch-size", "-b"),
        extra_eval: Path = typer.Option(None, help="Also compare fp32 vs int8 on these labelled images."),
    ) -> None:
        """Int8 quantization-aware training (PT2E); reports fp32 vs int8 on the validation split."""
        from alnett_edge.compress.qat import qat_checkpoint

        rep = qat_checkpoint(checkpoint, data, out, scheme, epochs, lr, batch_size, extra_eval)
        v = rep["val"]
        rows = {"fp32": v["fp32"], f"QAT int8 ({scheme})": {**v["int8"], "agreement": v["agreement"]}}
        cols = ["accuracy", "sensitivity", "specificity", "f1", "agreement"]
        out = console()
        out.print(_table(f"validation ({v['n']} images)", rows, cols))
        if "extra" in rep:
            e = rep["extra"]
            out.print(_table(f"{e['data']} ({e['n']} images)",
                                 {"fp32": e["fp32"], "QAT int8": {**e["int8"], "agreement": e["agreement"]}}, cols))
        typer.echo(f"QAT checkpoint: {rep['qat']} (activation zero-points: {rep['activation_zero_points'][:8]})")
        g = rep["gate_on_val"]
        unsure = f" ({uncounted_changes(g['changed'])})" if uncounted_changes(g["changed"]) else ""
        echo_wrapped("export gate on the validation split: " + ("passes" if g["passed"] else "FAILS ("
                     + "; ".join(g["failures"]) + "): more --epochs, another --lr, or export fp32") + unsure)

    @app.command("calibrate")
    def calibrate(
        model: Path = typer.Option(..., "--model", "-m", help="fp32 ONNX exported by alnett-edge."),
        images: Path = typer.Option(..., "--images", "-i", help="Calibration images (folder or dataset)."),
        out: Path = typer.Option(None, "--out", "-o", help="Output int8 ONNX (default: beside the model).",
                                  callback=output_file),
        method: str = typer.Option("minmax", help="minmax, percentile or entropy."),
        scheme: str = typer.Option("symmetric", help="symmetric (TensorRT) or asymmetric (ORT x86 u8s8)."),
        num: int = typer.Option(300, help="Calibration images to use (a warning below 300)."),
        any_size: bool = typer.Option(False, "--any-size", help="Accept images of another size than training's."),
        eval_data: Path = typer.Option(None, help="Labelled images: compare fp32 / PTQ (/ QAT) side by side."),
        qat: Path = typer.Option(None, help="A QAT checkpoint to add to the comparison."),
        allow_patient_overlap: bool = typer.Option(False, help="Allow patients shared by calibration and evaluation."),
        fit_avx2: bool = typer.Option(True, "--fit-avx2/--no-fit-avx2", help="Fit the weights so x86 CPUs without "
                                      "VNNI cannot saturate (exact on every x86-64); off: VNNI x86, ARM, TensorRT."),
    ) -> None:
        """Post-training int8 calibration (ONNX Runtime, QDQ) with an optional side-by-side report."""
        from alnett_edge.calibrate.ptq import calibrate as run

        rep = run(model, images, out, method, scheme, num, any_size, eval_data, allow_patient_overlap, qat,
                  fit_avx2)
        if "eval" in rep:
            console().print(_table(f"{rep['eval']['data']} ({rep['eval']['n']} images)", rep["eval"]["rows"],
                                   ["accuracy", "sensitivity", "specificity", "f1", "agreement"]))
        typer.echo(f"int8 model: {rep['int8']} ({rep['calibration_images']} calibration images, "
                   f"zero-points {rep['zero_points'][:6]})")
        sat = rep["int8_saturation"]
        typer.echo("int8 on x86 without VNNI: " + ("exact (no int16 saturation possible)" if sat["exact_on_x86_without_vnni"]
                   else f"may saturate in {len(sat['layers_that_may_saturate'])} layers (use --fit-avx2)"))
