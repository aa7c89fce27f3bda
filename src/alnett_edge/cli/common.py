"""Helpers shared by the command modules."""

from __future__ import annotations

import sys

from rich.console import Console


def wide_console() -> Console:
    """Wide tables stay readable when the output is a file or a pipe (rich assumes 80 columns there)."""
    return Console() if sys.stdout.isatty() else Console(width=220)
