"""Helpers shared by the command modules."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from alnett_edge.files import check_output_dir, check_output_file


def wide_console() -> Console:
    """Wide tables stay readable when the output is a file or a pipe (rich assumes 80 columns there)."""
    return Console() if sys.stdout.isatty() else Console(width=220)


def output_file(value: Path | None) -> Path | None:
    """typer callback for options that name a file to write: refused before the command runs."""
    return None if value is None else check_output_file(value, "output file")


def output_dir(value: Path | None) -> Path | None:
    """typer callback for options that name a folder to write into: refused before the command runs."""
    return None if value is None else check_output_dir(value)
