"""``alnett-edge optics calibrate``: the camera's pixel size in µm, estimated from red cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from alnett_edge.capture.base import source_help
from alnett_edge.cli.common import output_file
from alnett_edge.errors import ConfigError, DataError

app = typer.Typer(help="The microscope's optics: pixel size in µm (what the detector's sizes are measured in).",
                  no_args_is_help=True)


def _folder_frames(folder: Path, n: int) -> list:
    from alnett_edge.data.preprocess import IMAGE_SUFFIXES, load_image

    if not folder.is_dir():
        raise DataError(f"frames folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images in {folder}")
    step = max(1, len(files) // n)
    return [load_image(p, what="frame") for p in files[::step][:n]]


def write_um_per_px(path: Path, um_per_px: float) -> None:
    """Set ``[optics] um_per_px`` in a daemon TOML, keeping everything else as written."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    line = f"um_per_px = {um_per_px:.5f}  # alnett-edge optics calibrate"
    section = re.search(r"^\[optics\][^\n]*\n(?P<body>(?:(?!^\[).*\n?)*)", text, re.MULTILINE)
    if section is None:
        text = text + ("" if not text or text.endswith("\n") else "\n") + f"\n[optics]\n{line}\n"
    else:
        body = section.group("body")
        new_body, n = re.subn(r"^um_per_px\s*=.*$", line, body, count=1, flags=re.MULTILINE)
        if not n:
            new_body = line + "\n" + body
        text = text[: section.start("body")] + new_body + text[section.end("body") :]
    import tomllib

    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} would not be valid TOML after the change ({exc}); not written") from None
    path.write_text(text, encoding="utf-8")


@app.command("calibrate")
def calibrate(
    frames: Path = typer.Option(None, "--frames", help="A folder of field frames (any layout; images found below it)."),
    source: str = typer.Option(None, help=f"Or a live source: {source_help()}."),
    n: int = typer.Option(20, "-n", min=1, help="Frames to measure (evenly spaced in a folder, the first N of a source)."),
    rbc_um: float = typer.Option(None, "--rbc-um", min=0.1, help="Red-cell diameter in µm (default 7.8, human; "
                                 "pig ~6)."),
    write: Path = typer.Option(None, "--write", help="Set \\[optics] um_per_px in this daemon TOML (created if missing)."),
    json_out: Path = typer.Option(None, "--json", help="Write the estimate as JSON.", callback=output_file),
) -> None:
    """Estimate the pixel size (µm per camera pixel) from the red cells of a smear, with its spread."""
    from alnett_edge.vision.optics import RBC_UM, estimate_um_per_px, read_source_frames

    if (frames is None) == (source is None):
        raise ConfigError("give the frames once: --frames DIR or --source SPEC")
    images = _folder_frames(frames, n) if frames is not None else read_source_frames(source, n)
    cal = estimate_um_per_px(images, rbc_um or RBC_UM)
    out = cal.to_dict()
    p10, p90 = out["per_frame_rbc_px_p10_p90"]
    lo, hi = cal.ci95
    typer.echo(f"pixel size {cal.um_per_px:.4f} µm (95 % CI {lo:.4f}-{hi:.4f}; {1 / cal.um_per_px:.2f} px per µm)")
    typer.echo(f"red cells {cal.rbc_px:.1f} px across (taken as {cal.rbc_um:g} µm) in {cal.frames} frames; "
               f"frame-to-frame spread {100 * cal.spread:.1f} % (p10-p90 {p10:.1f}-{p90:.1f} px)"
               + (f"; {cal.frames_without_cells} frames without a red-cell size to measure"
                  if cal.frames_without_cells else ""))
    if (hi - lo) / 2 > 0.05 * cal.um_per_px:
        typer.echo("note: the estimate is uncertain by more than 5 %: measure more frames (-n), or give the pixel "
                   "size from the microscope (camera pixel pitch / magnification)")
    if write:
        write_um_per_px(write, cal.um_per_px)
        typer.echo(f"wrote [optics] um_per_px to {write}")
    if json_out:
        json_out.write_text(json.dumps(out, indent=2))
