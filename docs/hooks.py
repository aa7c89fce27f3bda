"""MkDocs hooks: the daemon configuration and CLI references are generated from the code at every build,
so they cannot drift from it (``<!-- generated: config -->`` and ``<!-- generated: cli -->`` in a page)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any


def _comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass's source: name -> comment."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^=]+=\s*.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _example_comments() -> dict[tuple[str, str], str]:
    """``key = value  # comment`` lines of the config module's commented example, by (section, key)."""
    from alnett_edge.daemon import config

    out, section = {}, ""
    for line in (config.__doc__ or "").splitlines():
        m = re.match(r"\s*\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"\s*(\w+)\s*=\s*.*?#\s*(.*)$", line)
        if m and section:
            out[(section, m.group(1))] = m.group(2).strip()
    return out


def config_reference() -> str:
    from alnett_edge.daemon.config import DaemonConfig

    cfg = DaemonConfig()
    example = _example_comments()
    parts = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        notes = {**{k: v for (s, k), v in example.items() if s == section.name}, **_comments(type(obj))}
        doc = (inspect.getdoc(type(obj)) or "").split("\n\n")[0].replace("\n", " ")
        parts += [f"## `[{section.name}]`", "", doc, "", "| key | type | default | what (units) |", "|---|---|---|---|"]
        for f in dataclasses.fields(obj):
            default = getattr(obj, f.name)
            parts.append(f"| `{f.name}` | {type(default).__name__} | `{_cell(repr(default))}` | {_cell(notes.get(f.name, ''))} |")
        parts.append("")
    return "\n".join(parts)


def cli_reference() -> str:
    import typer

    from alnett_edge.cli.app import app

    root = typer.main.get_command(app)
    parts: list[str] = []

    def walk(cmd: Any, path: list[str]) -> None:  # typer's click objects (typer may vendor click)
        if hasattr(cmd, "commands"):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])
            return
        name = " ".join(path)
        parts.extend([f"## `alnett-edge {name}`", "", _cell((cmd.help or "").strip().split("\n\n")[0]), ""])
        rows = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                rows.append(f"| `{p.name.upper()}` (argument) | {'required' if p.required else 'optional'} | |")
            elif p.param_type_name == "option" and p.name != "help":
                default = "" if p.default in (None, False, ()) or callable(p.default) else f"`{_cell(p.default)}`"
                rows.append(f"| `{' / '.join(p.opts)}` | {default} | {_cell(p.help or '')} |")
        if rows:
            parts.extend(["| option | default | what |", "|---|---|---|", *rows, ""])

    walk(root, [])
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated: config -->" in markdown:
        markdown = markdown.replace("<!-- generated: config -->", config_reference())
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    return markdown
