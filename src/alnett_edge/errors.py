"""Typed exceptions. Every error a user can cause is one of these; the CLI prints it on one line."""

from __future__ import annotations

#: set (to anything) to see the traceback behind a one-line error
DEBUG_ENV = "ALNETT_EDGE_DEBUG"


class AlnettError(Exception):
    """Base class of every error alnett-edge raises on purpose."""

    exit_code = 2


class ConfigError(AlnettError):
    """A bad option, variant name or configuration value."""


class DataError(AlnettError):
    """A dataset, image or manifest that cannot be used."""


class CheckpointError(AlnettError):
    """A checkpoint or model card that is missing, corrupt or foreign."""


class TrainingError(AlnettError):
    """Training could not run or diverged."""


class CompressionError(AlnettError):
    """Pruning or quantization could not reach what was asked."""


class ExportError(AlnettError):
    """An artifact could not be produced."""
