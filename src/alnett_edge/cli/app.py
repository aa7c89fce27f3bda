"""The ``alnett-edge`` command: one typer app, one module per command group (thin over the library).

Errors raised on purpose (:class:`AlnettError`) print one line on stderr and exit with a non-zero
code; set ``ALNETT_EDGE_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings

from typing import Any

import typer
from typer.core import TyperGroup

from alnett_edge import __version__
from alnett_edge.errors import DEBUG_ENV, AlnettError
from alnett_edge.plugins import load_plugins

# Native logs of the TFLite/LiteRT converter stack (absl/glog) unless the user set their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")
# OpenCV's own warnings and FFmpeg's decoder/network lines ("[mjpeg @ 0x..] bad vlc", "[tcp @ ..]"):
# a bad frame or an unreachable camera is reported once, by alnett-edge, in its own words
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # its decode errors too: ours say it in one line
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
# torch's own log handler (onnx exporter registrations, pytree deprecations): errors only.
os.environ.setdefault("TORCH_LOGS", "-all")
#: packages of the [train]/[tflite] extras; a command that needs one on a device install says so
_TRAIN_ONLY = {"torch", "onnx", "onnxscript", "onnxslim", "safetensors", "torch_pruning", "onnxconverter_common",
               "litert_torch", "torchao"}
_NOISY_LOGGERS = ("torchao", "torch", "onnxscript", "onnx_ir", "absl", "jax")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (test runners swap it between commands)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


# typer carries its own click; its exception classes, found from a public one
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Group(TyperGroup):
    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Usage mistakes (a missing option, a bad value, an unknown command) are one line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as before
                typer.echo(exc.ctx.get_help() if exc.ctx else "")
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if exc.ctx else "alnett-edge"
            typer.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except _ClickException as exc:
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AlnettError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            typer.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            # a file or folder the user named cannot be read or written (permissions, a folder where a
            # file was meant, disk full): what the system said, and about which path
            if os.environ.get(DEBUG_ENV):
                raise
            if exc.errno == errno.EPIPE:  # `... | head` closed the pipe: not an error worth a line
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the closed pipe
                ctx.exit(1)
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as exc:
            # a device install (alnett-edge[rpi] / [jetson]) has no torch or exporters
            if os.environ.get(DEBUG_ENV) or (exc.name or "").split(".")[0] not in _TRAIN_ONLY:
                raise
            typer.echo(f"error: this command needs {exc.name}, which device installs leave out: "
                       "pip install 'alnett-edge[train]' (or [tflite] for LiteRT export)", err=True)
            ctx.exit(2)


app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="ALNett leukemia cell classifier: train, compress, export and run on edge devices.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"alnett-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v for progress logs, -vv for debug."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if not any(getattr(h, "_alnett", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._alnett = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    load_plugins()  # registry entries of $ALNETT_EDGE_PLUGINS (a new backend, format or camera)
    if verbose < 2:  # library deprecation chatter (torch.export, torchao); our own code logs instead
        warnings.simplefilter("ignore")
    for name in _NOISY_LOGGERS:  # third-party warnings that are not the user's concern, unless -vv
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def _register() -> None:
    try:  # plugin entries appear in the help texts too; a bad plugin name is reported by _root
        load_plugins()
    except AlnettError:
        pass
    from alnett_edge.cli import (compare, compress, daemon, data, demo, detector, devices, evaluate, export, harvest,
                                 label, model, optics, runtime, train)

    app.add_typer(data.app, name="data")
    app.add_typer(model.app, name="model")
    train.register(app)
    evaluate.register(app)
    compress.register(app)
    devices.register(app)
    export.register(app)
    compare.register(app)
    runtime.register(app)
    daemon.register(app)
    harvest.register(app)
    label.register(app)
    app.add_typer(optics.app, name="optics")
    app.add_typer(detector.app, name="detector")
    demo.register(app)


_register()


def main() -> None:
    app()
