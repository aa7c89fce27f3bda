"""Helpers shared by the command modules."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import typer
from rich.console import Console

from alnett_edge.errors import ConfigError
from alnett_edge.files import check_output_dir, check_output_file


#: what a person reads fits this many columns by default; --wide shows every column on one line
NARROW = 100
WIDE = 240
WIDE_HELP = "Every column (up to ~240 characters wide); the default fits 100 columns. --json has everything."


def console(wide: bool = False) -> Console:
    """A console for tables: 100 columns (or the terminal's, when narrower) unless ``wide``; a file or a
    pipe gets the same widths (rich would assume 80 there)."""
    if wide:
        return Console(width=WIDE)
    tty = sys.stdout.isatty()
    return Console(width=min(NARROW, shutil.get_terminal_size((NARROW, 24)).columns) if tty else NARROW)


COLOUR_JITTER_HELP = ("Colour augmentation HUE,SAT: each training cell's hue turned by up to HUE degrees and its "
                      "saturation scaled by up to 1 +- SAT (all-fields recipe: 12,0.35); 0,0 is off.")


def colour_jitter_pair(value: str) -> tuple[float, float]:
    """``--colour-jitter HUE,SAT`` as two numbers (ConfigError otherwise)."""
    try:
        hue, sat = (float(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"--colour-jitter must be HUE,SAT (two numbers, e.g. 12,0.35), got {value!r}") from None
    return hue, sat


def output_file(value: Path | None) -> Path | None:
    """typer callback for options that name a file to write: refused before the command runs."""
    return None if value is None else check_output_file(value, "output file")


def output_dir(value: Path | None) -> Path | None:
    """typer callback for options that name a folder to write into: refused before the command runs."""
    return None if value is None else check_output_dir(value)


def change(drop_points: float | None) -> str:
    """A drop in points shown as the change it is: a gain reads +0.75, a loss -0.75."""
    return "" if drop_points is None else f"{0.0 - drop_points:+.2f}"


def echo_wrapped(text: str) -> None:
    """One note line, wrapped at the narrow width (continuation lines indented)."""
    typer.echo(textwrap.fill(text, NARROW, subsequent_indent="    "))


def uncounted_changes(changed: dict | None) -> str:
    """The gate's changed decisions it did not count (a gate result's ``changed``), as a phrase; ""
    when every change counted."""
    if not changed or changed["decisions"] <= changed["counted"]:
        return ""
    return (f"{changed['decisions'] - changed['counted']} of the {changed['decisions']} changed decisions on cells "
            f"both models hold below {changed['min_confidence']} (abstained on a device either way): not counted")
