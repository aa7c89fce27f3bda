"""Extensions without editing alnett-edge: ``ALNETT_EDGE_PLUGINS=mod_a,mod_b`` names modules that
add one entry each to a registry — a runtime backend (``runtime.base.BACKENDS``), an export format
(``export.formats.register``) or a capture source (``capture.base.SOURCES``) — plus, for a new
device, a profile TOML given as ``--target path/to/profile.toml``. The CLI and every ``bench``
worker process import them at start, so the same entries exist in every process.
"""

from __future__ import annotations

import importlib
import os

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
