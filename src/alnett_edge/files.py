"""File helpers shared by every layer (bottom layer: no torch)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from alnett_edge.errors import ConfigError, DataError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work is done, that a file can be written at ``path``: not a folder, its
    folder exists or can be made. A command that writes a report after minutes of work asks first."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder for {what} {path}: {exc.strerror or exc}") from None
    existed = path.exists()
    try:
        with open(path, "ab"):  # appends nothing: an existing file is left as it is
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Check, before any work is done, that ``path`` is a folder or can become one (nothing is made)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder")
    ancestor = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise ConfigError(f"cannot make {what} {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot make {what} {path}: {ancestor} is not writable")
    return path


def load_plain_npy(path: str | Path) -> np.ndarray:
    """An ``.npy`` of plain numbers; a pickled or broken one is a DataError (never unpickled)."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a plain numeric .npy ({exc})") from exc


@contextlib.contextmanager
def atomic_text(path: str | Path) -> Iterator[TextIO]:
    """Write a text file whole or not at all: into a temporary file beside it (this process and thread's
    own), flushed to disk, then renamed over ``path``; a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
