"""The front door and the documentation site (issue 37): the README is short and starts with the two
commands, the site builds with --strict (no broken link, no missing page), the generated references
cover every setting, and every `alnett-edge` command the README and the journey pages show is one the
CLI takes (the getting-started daemon is run for real, on a small bundle)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md", *sorted((ROOT / "docs" / "journeys").glob("*.md"))]


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    first = "\n".join(lines[:6])
    assert "make demo" in first and "make test" in first


def _commands(page: Path) -> list[list[str]]:
    """Every `alnett-edge ...` command of a page's shell blocks (continuation lines joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#", 1)[0].strip()
            cmd = re.sub(r"^(sudo )?(\S*/)?\.?venv/bin/", "", cmd)
            if cmd.startswith("alnett-edge "):
                out.append(shlex.split(cmd)[1:])
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_is_one_the_cli_takes(page):
    import typer

    from alnett_edge.cli.app import app

    root = typer.main.get_command(app)
    commands = _commands(page)
    assert commands, f"{page.name} shows no alnett-edge command"
    for args in commands:
        group, rest = root, list(args)
        while hasattr(group, "commands") and rest and rest[0] in group.commands:
            group, rest = group.commands[rest[0]], rest[1:]
        assert not hasattr(group, "commands"), f"{page.name}: {' '.join(args)}: not a command"
        try:  # options and arguments parsed as the CLI would (callbacks, which touch files, not run)
            group.make_context(f"alnett-edge {args[0]}", rest, resilient_parsing=True)
        except Exception as exc:  # noqa: BLE001 - click's usage errors
            pytest.fail(f"{page.name}: alnett-edge {' '.join(args)}: {exc}")


def test_the_getting_started_daemon_runs(x86_bundle, tmp_path):
    (daemon,) = [c for c in _commands(ROOT / "docs" / "getting-started.md") if c[0] == "daemon"]
    args = [a for a in daemon]
    args[args.index("--bundle") + 1] = str(x86_bundle["bundle"])
    args[args.index("--db") + 1] = str(tmp_path / "cells.db")
    args[args.index("--port") + 1] = "0"
    args[args.index("--duration") + 1] = "3"
    res = cli(*args, "--summary-json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames_processed"] > 0 and s["cells_processed"] > 0


def _run_page(page: Path, subs: dict[str, str], extra: dict[str, list], skip: tuple[str, ...] = ()) -> list[str]:
    """Run every `alnett-edge` command of a journey page in order, on small data: each placeholder token
    (``FIELDS/``, ``/path/to/...``) replaced by ``subs``, ``extra`` options appended per command (fewer
    epochs, fewer timed runs: the command shown is still the one run). Returns the commands run."""
    ran = []
    for args in _commands(page):
        if args[0] in skip:
            continue
        key = " ".join(args[:2]) if " ".join(args[:2]) in extra else args[0]
        run = [subs.get(a, a) for a in args] + [str(x) for x in extra.get(key, [])]
        res = cli(*run)
        assert res.exit_code == 0, f"{page.name}: alnett-edge {' '.join(args)}\n{res.output}"
        ran.append(" ".join(args))
    return ran


def test_the_researcher_and_device_journeys_run_on_the_real_sample(cnmc_sample, tmp_path):
    """docs/journeys/researcher.md then device.md, command by command, on the 70 real C-NMC-sample
    cells (one epoch; the device page's sudo/systemd lines are for the device and not run here)."""
    runs = tmp_path / "runs"
    subs = {"/path/to/C-NMC_training_data": str(cnmc_sample), "...": str(cnmc_sample),
            "/path/to/heldout": str(cnmc_sample), "runs/s": str(runs / "s"), "runs/cv": str(runs / "cv"),
            "runs/eval": str(runs / "eval"), "runs/s/best.safetensors": str(runs / "s" / "best.safetensors"),
            "cells/": str(cnmc_sample), "rpi5-bundle": str(tmp_path / "rpi5-bundle"), "runs/mnv3": str(runs / "mnv3"),
            "runs/compare": str(runs / "compare")}
    fast = ["--epochs", 1, "--workers", 0, "--input-size", 64]
    small = ["--models", "alnett-tiny,mobilenet_v3_small", "--folds", 2, *fast, "--runs", 5, "--rounds", 1, "--batch", 1]
    ran = _run_page(ROOT / "docs" / "journeys" / "researcher.md", subs, {"train": fast, "compare": small})
    assert [c.split()[0] for c in ran] == ["data", "model", "train", "train", "evaluate", "train", "compare", "compare"]
    assert (runs / "cv" / "cv_report.json").is_file() and (runs / "eval" / "report.json").is_file()
    assert (runs / "mnv3" / "best.safetensors").is_file() and (runs / "compare" / "compare.png").is_file()
    assert {p.name for p in (runs / "compare" / "bundles").iterdir()} == {
        f"{m}-{t}" for m in ("alnett-tiny", "mobilenet_v3_small") for t in ("x86-cpu", "rpi5")}
    ran = _run_page(ROOT / "docs" / "journeys" / "device.md", subs, {"bench": ["--runs", 5, "--warmup", 1]})
    assert [c.split()[0] for c in ran] == ["devices", "export", "verify", "bench"]


def test_the_microscope_journey_runs_on_real_fields(trained, tmp_path):
    """docs/journeys/microscope.md, command by command, on 6 real all-fields fields per class folder:
    calibrate, harvest, fine-tune from a checkpoint, decide the fields, export for the Pi, the
    four-class harvest, and the centre detector fine-tuned, gated and scored on marked Pre fields. The
    label and mark views serve until stopped (tests/test_labels.py and tests/test_marks.py drive them in
    a browser) and the swap is a curl to a running daemon (tests/test_swap.py)."""
    from test_harvest import _fields

    fields = _fields(tmp_path, {"Benign": 6, "Early": 6, "Pre": 6, "Pro": 6})
    _, result = trained
    mine = tmp_path / "mine"
    subs = {"FIELDS/": str(fields), "images:frames/": f"images:{fields / 'Pre'}", "daemon.toml": str(tmp_path / "d.toml"),
            "cells/": str(tmp_path / "cells"), "cells4/": str(tmp_path / "cells4"), "cnmc.safetensors": str(result.best),
            "runs/mine": str(mine), "runs/mine/best.safetensors": str(mine / "best.safetensors"),
            "mine-rpi5": str(tmp_path / "mine-rpi5")}
    # the cells' centres as `mark` would save them with the detector's proposals taken as they are
    from alnett_edge.vision.detector import CellDetector
    from alnett_edge.vision.marks import MarkBook

    for name, frames in (("marked.csv", range(3)), ("kept.csv", range(3, 6))):
        book = MarkBook(fields / "Pre", tmp_path / name, CellDetector(um_per_px=0.44))
        for i in frames:
            book.save(i, book.state(i)["points"])
        subs[name] = str(tmp_path / name)
    subs.update({"FIELDS/Pre": str(fields / "Pre"), "mine.onnx": str(tmp_path / "mine.onnx")})
    ran = _run_page(ROOT / "docs" / "journeys" / "microscope.md", subs,
                    {"train": ["--epochs", 1, "--workers", 0, "--val-fraction", 0.3],
                     "detector train": ["--steps", 2, "--crowded", 0]}, skip=("label", "mark"))
    assert [c.split()[0] for c in ran] == ["optics", "harvest", "train", "field-eval", "export", "harvest", "detector",
                                           "field-eval"]
    assert (tmp_path / "mine.safetensors").is_file()
    assert "um_per_px" in (tmp_path / "d.toml").read_text()
    assert json.loads((tmp_path / "cells4" / "harvest.json").read_text())["blast_classes"] == ["early", "pre", "pro"]
    assert (tmp_path / "mine-rpi5" / "manifest.json").is_file()


#: the pages whose every `alnett-edge` command a test above runs (the getting-started daemon; the journeys)
RUN_PAGES = {"getting-started.md", "researcher.md", "device.md", "microscope.md"}
NOT_RUN = "<!-- not run by the tests: "


@pytest.mark.parametrize("page", [p for p in PAGES if p.name in RUN_PAGES], ids=lambda p: p.name)
def test_every_shell_block_is_run_or_says_why_not(page):
    """Issue 37: every shell block of the getting-started and journey pages is run by a test on small data
    (its lines are `alnett-edge` commands, which the tests above run) or says, just above it, why not."""
    text = page.read_text()
    for m in re.finditer(r"```bash\n(.*?)```", text, re.S):
        lines = [ln.split("#", 1)[0].strip() for ln in m.group(1).replace("\\\n", " ").splitlines()]
        lines = [re.sub(r"^(\S*/)?\.?venv/bin/", "", ln) for ln in lines if ln]
        before = text[: m.start()].rstrip().splitlines()[-1] if text[: m.start()].strip() else ""
        if before.startswith(NOT_RUN):
            assert len(before) > len(NOT_RUN) + 20 and before.endswith("-->"), f"{page.name}: give the reason: {before}"
            continue
        others = [ln for ln in lines if not ln.startswith("alnett-edge ")]
        assert not others, f"{page.name}: a block that is not run and does not say why: {others}"


def test_the_site_builds_strictly_and_its_references_are_whole(tmp_path):

    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have mkdocs (the [dev] extra)")
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", config, re.S)
    assert len(rows) > 60 and not [r for r in rows if r.strip().endswith("<td></td>")]  # every key described
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for name in ("alnett-edge daemon", "alnett-edge label", "alnett-edge harvest", "alnett-edge train"):
        assert name in cli_page
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "open_runtime" in api and "LabelBook" in api
