"""``alnett-edge detector train``: a learned nucleus-centre detector for the daemon's ``[detector] centres``."""

from __future__ import annotations

from pathlib import Path

import typer

from alnett_edge.cli.common import echo_wrapped, output_file
from alnett_edge.errors import ConfigError

app = typer.Typer(help="The learned nucleus-centre detector: train or fine-tune one on your microscope's marked "
                  "frames (see field-eval --centres to score it).", no_args_is_help=True)

#: pixel sizes (µm) of the generated crowded fields a training mixes in
CROWDED_UM = (0.15, 0.3, 0.45)


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", "-o", help="The detector to write (.onnx; its weights go beside it as "
                             ".safetensors).", callback=output_file),
    data: list[Path] = typer.Option(None, "--data", help="Annotated frames: Pascal VOC or YOLO boxes, or a points "
                                    "CSV (image,x,y) of cells marked by hand; repeat for more sets."),
    weight: list[float] = typer.Option(None, "--weight", min=0.0, help="Each --data set's share of the crops, in "
                                       "the same order (default 1 each; the crowded fields count 1)."),
    images: Path = typer.Option(None, "--images", help="With a points CSV: the folder its image names are in."),
    crowded: int = typer.Option(40, "--crowded", min=0, help="Generated crowded fields (clusters of 2-8, exact "
                                "centres) per pixel size, at 0.15, 0.3 and 0.45 µm; 0: none."),
    init: str = typer.Option(None, "--init", help="Fine-tune this detector: \"builtin\" or an .onnx from this "
                             "command (its .safetensors beside it)."),
    arch: str = typer.Option("full", "--arch", help="Without --init: full, or light (about a fifth of the cost)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Training steps of 32 crops (3000: ~10 min on 2 cores)."),
    lr: float = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (default 3e-3, 1e-3 with --init)."),
    threshold: float = typer.Option(None, "--threshold", min=0.01, max=0.99, help="The heat-map peak a centre needs "
                                    "(default 0.3, or --init's; set it on marked fields kept out of the training)."),
    um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="Pixel size of every --data set (default: "
                                    "estimated per folder from its red cells)."),
    gate: Path = typer.Option(None, "--gate", help="Marked frames kept out of the training (a points CSV or "
                              "annotated folder): the threshold is chosen on them, the one finding the most cells "
                              "once with at most --max-extra extra detections."),
    max_extra: float = typer.Option(0.10, "--max-extra", min=0.0, max=1.0, help="With --gate: the extra "
                                    "detections' share allowed."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train (or fine-tune) the learned nucleus-centre detector; writes OUT.onnx and OUT.safetensors."""
    import dataclasses
    import tempfile

    from alnett_edge.card import CentreCard
    from alnett_edge.data.synth import CrowdSpec, generate_crowded
    from alnett_edge.machine import isa_line
    from alnett_edge.model.centres import CENTRE_ARCHS, load_centres, save_centres
    from alnett_edge.train.centres import gate_thresholds, load_frames, train_centres
    from alnett_edge.vision.centres import model_path

    data, weight = list(data or []), list(weight or [])
    if not data and not crowded:
        raise ConfigError("nothing to train on: give --data and/or --crowded N")
    if weight and len(weight) != len(data):
        raise ConfigError(f"--weight given {len(weight)} times for {len(data)} --data sets: one each, or none")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out must be an .onnx file, got {out.name}")
    if init is not None:
        net, card = load_centres(model_path(init))
        card = dataclasses.replace(card, threshold=threshold or card.threshold)
    else:
        if arch not in CENTRE_ARCHS:
            raise ConfigError(f"--arch must be one of {', '.join(CENTRE_ARCHS)}, got {arch!r}")
        net, card = None, CentreCard(arch=arch, threshold=threshold or 0.3)
    sets, names = [], []
    for src, w in zip(data, weight or [1.0] * len(data)):
        sets.append((load_frames(src, card, um_per_px, images), w))
        names.append(f"{src} ({len(sets[-1][0])} frames, weight {w:g})")
    with tempfile.TemporaryDirectory() as tmp:
        synth = []
        for i, um in enumerate(CROWDED_UM if crowded else ()):
            generate_crowded(Path(tmp) / f"c{i}", crowded, CrowdSpec(um_per_px=um, clusters=2, singles=2),
                             seed=seed * 10 + i)
            synth += load_frames(Path(tmp) / f"c{i}", card, um)
        if synth:
            sets.append((synth, 1.0))
            names.append(f"generated crowded fields ({len(synth)}, weight 1)")
    echo_wrapped(f"training the {card.arch} centre detector{' from ' + str(init) if init else ''} on: "
                 + "; ".join(names))
    typer.echo(isa_line())

    def progress(step: int, loss: float) -> None:
        if step % 500 == 0 or step == steps - 1:
            typer.echo(f"  step {step + 1}/{steps}: loss {loss:.3f}")

    net = train_centres(sets, card, steps, seed, net, lr or (1e-3 if init else 3e-3), progress=progress)
    training = {"sets": names, "steps": steps, "seed": seed, "init": str(init) if init else None}
    card = dataclasses.replace(card, training=training)
    save_centres(net, card, out)
    if gate is not None:
        best, rows = gate_thresholds(out, gate, images, um_per_px, max_extra)
        echo_wrapped(f"gate on {gate} ({rows[0]['cells']} marked cells): threshold found once / extra: " + ", ".join(
            f"{r['threshold']:g} {r['found_once']:.3f}/{r['extra']:.3f}" for r in rows))
        chosen = best if best is not None else min(rows, key=lambda r: (r["extra"], -r["found_once"]))["threshold"]
        gated = {"frames": str(gate), "max_extra": max_extra, "rows": rows, "met": best is not None}
        card = dataclasses.replace(card, threshold=chosen, training={**training, "gate": gated})
        save_centres(net, card, out)
        echo_wrapped(f"threshold {chosen:g}" + ("" if best is not None else f": no threshold kept extra detections "
                                              f"to {max_extra:g} on the gate's frames (the fewest chosen); mark more "
                                              "fields or keep the detector you have"))
    echo_wrapped(f"wrote {out} and {out.with_suffix('.safetensors').name} (threshold {card.threshold:g}); score it "
               f"on marked frames it never saw: alnett-edge field-eval FRAMES --centres {out}")


@app.command("quantize")
def quantize(
    model: str = typer.Argument(..., help="The centre detector: \"builtin\" or an .onnx from `detector train`."),
    out: Path = typer.Option(..., "--out", "-o", help="The int8 detector to write (.onnx).", callback=output_file),
    calib: list[Path] = typer.Option(..., "--calib", help="Frames of your microscope to set the int8 ranges on "
                                     "(anything field-eval reads; repeat for more sets)."),
    images: Path = typer.Option(None, "--images", help="With a points CSV: the folder its image names are in."),
    um_per_px: float = typer.Option(None, "--um-per-px", min=0.0, help="Pixel size of every set (default: "
                                    "estimated per folder from its red cells)."),
    check: Path = typer.Option(None, "--check", help="Marked frames to score the fp32 and int8 detectors on, side "
                               "by side (found once, extra, detect p50)."),
) -> None:
    """The centre detector in int8 (ONNX Runtime QDQ; faster on CPUs with VNNI and on ARM, not on AVX2 alone)."""
    import dataclasses

    import onnx

    from alnett_edge.calibrate.centres import quantize_centres
    from alnett_edge.model.centres import write_centres_onnx
    from alnett_edge.machine import isa_line
    from alnett_edge.vision.centres import CentreFinder, model_path
    from alnett_edge.vision.detector import DetectorConfig
    from alnett_edge.vision.fieldeval import field_eval
    from alnett_edge.vision.optics import OpticsConfig

    typer.echo(isa_line())
    info = quantize_centres(model, list(calib), out, images, um_per_px)
    typer.echo(f"calibrated on {info['frames']} frames; wrote {out}")
    if check is None:
        return
    rows = {}
    for name, spec in (("fp32", str(model_path(model))), ("int8", str(out))):
        rep, _ = field_eval(None, check, DetectorConfig(centres=spec), optics=OpticsConfig(um_per_px=um_per_px or 0.0),
                            images=images)
        rows[name] = {"found_once": rep["found_once"], "extra": rep["extra"], "recall": rep["recall"],
                      "precision": rep["precision"], "detect_p50_ms": rep["stages"]["detect"]["p50_ms"]}
        r = {k: "-" if v is None else f"{v:.3f}" for k, v in rows[name].items()}
        typer.echo(f"{name} on {check}: found once {r['found_once']}, extra {r['extra']}"
                   + (f", recall {r['recall']}, precision {r['precision']}" if rows[name]["recall"] is not None else "")
                   + f", detect p50 {rows[name]['detect_p50_ms']:.1f} ms")
    card = CentreFinder(out).card
    write_centres_onnx(onnx.load(str(out)), dataclasses.replace(card, training={
        **card.training, "int8": {**info, "check": {"frames": str(check), **rows}}}), out)
    typer.echo("the comparison is kept in the int8 model's card (training.int8.check)")
