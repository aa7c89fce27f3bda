"""``alnett-edge export`` and ``alnett-edge build-engine``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import change, console, echo_wrapped, uncounted_changes
from alnett_edge.metrics import DEFAULT_MIN_CONFIDENCE


def gate_table(manifest: dict) -> Table:
    table = Table(title=f"accuracy gate vs fp32 on {manifest['gate_set']['source']} ({manifest['gate_set']['n']} images)")
    for col in ("artifact", "prec", "bytes", "accuracy", "Δacc", "ΔF1", "agree", "ms b1", "gate"):
        table.add_column(col, justify="left" if col in ("artifact", "prec", "gate") else "right",
                         no_wrap=col == "artifact", min_width=20 if col == "artifact" else None)
    rows = [(a, "") for a in manifest["artifacts"]] + [(a, "rejected: ") for a in manifest.get("rejected_by_gate", [])]
    for a, tag in rows:
        g = a["gate"]
        if g.get("passed") is None:
            table.add_row(a["file"], a["precision"], f"{a['bytes']:,}", "", "", "", "", "", "not run here")
            continue
        table.add_row(a["file"], a["precision"], f"{a['bytes']:,}", f"{g['metrics']['accuracy']:.4f}",
                      change(g["drop_points"]["accuracy"]), change(g["drop_points"]["f1"]), f"{g['agreement']:.2%}",
                      f"{a.get('latency_b1_ms_here', 0):.3f}", tag + ("pass" if g["passed"] else "FAIL"))
    return table


def gate_notes(manifest: dict) -> list[str]:
    """Where the gate was measured and what it proves, one line each."""
    lines = [f"gate measured on: {manifest['gate_host']['isa']}"]
    gated = [a for a in manifest["artifacts"] + manifest.get("rejected_by_gate", []) if "ece" in a["gate"]]
    if gated:
        lines.append(f"calibration error (ECE): fp32 reference {gated[0]['gate']['reference_ece']:.3f}, "
                     + ", ".join(f"{a['file']} {a['gate']['ece']:.3f}" for a in gated))
    for a in manifest["artifacts"] + manifest.get("rejected_by_gate", []):
        g, sat = a["gate"], a.get("extra", {}).get("int8_saturation")
        if len(g.get("arithmetic", {})) > 1:
            lines.append(f"{a['file']}: int8 gated on this CPU's kernels and on the exact int8 arithmetic")
        if sat:
            lines.append(f"{a['file']}: " + ("no int16 saturation possible on x86 without VNNI (worst weight "
                                             f"pair x 255 = {sat['worst_pair']} <= 32767)" if sat["exact_on_x86_without_vnni"]
                                             else f"{len(sat['layers_that_may_saturate'])} layers may saturate on "
                                                  "x86 without VNNI (fine on the target's own hardware)"))
        if uncounted_changes(g.get("changed")):
            lines.append(f"{a['file']} ({g['n']} cells): {uncounted_changes(g['changed'])}")
        lines += [f"FAIL: {a['file']}: {f}" for f in g.get("failures", [])]
        if g.get("proxy"):
            lines.append(f"{a['file']}: a proxy gate (see the manifest); on the device run "
                         "`alnett-edge verify BUNDLE --gate-images DIR`")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        checkpoint: Path = typer.Argument(..., help="fp32 (optionally pruned) .safetensors checkpoint."),
        target: str = typer.Option(..., "--target", "-t", help="Device profile or alias (see `alnett-edge devices`), "
                                   "or the path of a profile .toml of your own device."),
        out: Path = typer.Option(None, "--out", "-o", help="Bundle folder (default runs/export/<profile>)."),
        precision: str = typer.Option("default", help="default (the profile's), auto, fp32, fp16 or int8."),
        qat: Path = typer.Option(None, help="QAT checkpoint for int8 (symmetric for TensorRT, asymmetric for "
                                 "TFLite); without it int8 is calibrated from the fp32 checkpoint."),
        calib_images: Path = typer.Option(None, help="Images for int8 calibration without --qat (ONNX and TFLite; "
                                          "default: the training split)."),
        gate_images: Path = typer.Option(None, help="Labelled gate set (default: the validation split)."),
        layout: str = typer.Option("auto", help="Layout of --gate-images and --calib-images: auto, cnmc, folders, "
                                   "manifest or cnmc-prelim."),
        allow_drop: float = typer.Option(1.0, help="Largest accepted drop, in points, of any gate metric."),
        min_agreement: float = typer.Option(0.99, help="Smallest accepted agreement with fp32 (changes on cells both "
                                           f"models hold below {DEFAULT_MIN_CONFIDENCE} are not counted)."),
        archive: bool = typer.Option(False, "--archive", help="Also write <bundle>.tar.gz."),
        force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out (never another folder)."),
    ) -> None:
        """Export a gated bundle (model files, card, manifest, golden inputs) for a device."""
        from alnett_edge.export.exporter import export_bundle

        manifest = export_bundle(checkpoint, target, out, precision, qat, calib_images, gate_images, allow_drop, archive,
                                 min_agreement, force, layout)
        console().print(gate_table(manifest))
        for line in gate_notes(manifest):
            echo_wrapped(line)
        typer.echo(f"bundle: {manifest['bundle']} (selected artifact: {manifest['selected']})")
        if "archive" in manifest:
            typer.echo(f"archive: {manifest['archive']}")

    @app.command("build-engine")
    def build_engine(
        bundle: Path = typer.Argument(..., help="A bundle exported for a Jetson target."),
        workspace_mb: int = typer.Option(None, help="Override the profile's TensorRT workspace."),
        max_batch: int = typer.Option(None, help="Override the optimisation profile's largest batch."),
    ) -> None:
        """Build (or reuse) the TensorRT engine for this GPU from a bundle — run it on the Jetson."""
        from alnett_edge.tensorrt.engine import build_engine as run

        typer.echo(f"engine: {run(bundle, workspace_mb, max_batch)}")
