"""Extensions without editing alnett-edge: ``ALNETT_EDGE_PLUGINS=mod_a,mod_b`` names modules that
add one entry each to a registry — a runtime backend (``runtime.base.BACKENDS``), an export format
(``export.formats.register``) or a capture source (``capture.base.SOURCES``) — plus, for a new
device, a profile TOML given as ``--target path/to/profile.toml``. The CLI and every ``bench``
worker process import them at start, so the same entries exist in every process.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from alnett_edge.errors import ConfigError

ENV = "ALNETT_EDGE_PLUGINS"


def load_plugins() -> list[str]:
    """Import the modules named in ``$ALNETT_EDGE_PLUGINS``; a missing one is a one-line error."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{ENV}: cannot import plugin {name!r} ({exc})") from exc
    return names


def registered_name(cls: type, table: Mapping[str, Any]) -> str:
    """The key under which ``cls`` (or the class it derives from) is registered in ``table``, whose
    entries name their class as ``target = "module:Class"``: a backend's or a source's name is
    written once, as its table key, and never again on the class ("" when not registered)."""
    for klass in cls.__mro__:
        target = f"{klass.__module__}:{klass.__qualname__}"
        for name, spec in table.items():
            if spec.target == target:
                return name
    return ""
