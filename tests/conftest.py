"""Shared fixtures. Real data lives read-only at ../shared/data from the project root."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CNMC_SAMPLE = SHARED / "cnmc-sample"
BCCD = SHARED / "bccd"


def require_shared(path: Path) -> Path:
    """Skip with a clear reason on a user's clone without ../shared/data; never skip in CI."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real data at {path}")
        pytest.skip(f"real data not found at {path} (../shared/data is absent in this clone)")
    return path


def wait_for(cond, timeout: float = 15.0) -> None:
    """Poll ``cond()`` until it is true; an AssertionError after ``timeout`` seconds."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Debian's Chromium, which Playwright drives offline (its own browser download cannot run here)
CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def chromium_browser():
    """(playwright's sync_api, a launched headless Chromium), closed after; a skip on a user's machine
    without Chromium or Playwright, a failure in CI."""
    import shutil

    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (apt-get install chromium; .ci/run installs it)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield sync_api, browser
        finally:
            browser.close()


def http_request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One raw HTTP request to a local server (any Host header, any body); (status, body)."""
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        con.request(method, path, body=body, headers={"Host": f"{host}:{port}", **(headers or {})})
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


def cli(*args):
    """Run the CLI in-process (typer's runner) with every argument as a string."""
    from typer.testing import CliRunner

    from alnett_edge.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, *needles):
    """The command failed with exactly one ``error: ...`` line on stderr and no traceback."""
    assert res.exit_code != 0, res.output
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="session")
def cnmc_sample() -> Path:
    return require_shared(CNMC_SAMPLE)


@pytest.fixture(scope="session")
def easy_cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 easy synthetic cells (C-NMC fold layout, 96 px PNG, 30 patients)."""
    from alnett_edge.data.synth import SynthSpec, generate_cnmc_dataset

    root = tmp_path_factory.mktemp("easy") / "cells"
    generate_cnmc_dataset(root, SynthSpec(n_cells=300, size=96, difficulty=0.1, fmt="png", cells_per_patient=10, seed=3))
    return root


@pytest.fixture(scope="session")
def trained(easy_cells: Path, tmp_path_factory: pytest.TempPathFactory):
    """alnett-tiny trained for 12 epochs on ``easy_cells`` (shared by several tests)."""
    from alnett_edge.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(easy_cells), out=str(out), variant="alnett-tiny", epochs=12, patience=12, batch_size=32,
                      lr=5e-3, workers=0, seed=0)
    return cfg, train(cfg, progress=False)


@pytest.fixture(scope="session")
def qat_runs(trained, tmp_path_factory):
    """QAT of ``trained`` in both schemes with the CLI's default two epochs (reports with the checkpoint
    paths); one epoch leaves the int8 model's calibration error 0.037 above fp32's, over the gate's 0.03."""
    from alnett_edge.compress.qat import qat_checkpoint

    cfg, result = trained
    out = tmp_path_factory.mktemp("qat")
    return {s: qat_checkpoint(result.best, cfg.data, out, s, epochs=2) for s in ("symmetric", "asymmetric")}


@pytest.fixture(scope="session")
def qat_sym(qat_runs):
    return qat_runs["symmetric"]["qat"]


@pytest.fixture(scope="session")
def qat_asym(qat_runs):
    return qat_runs["asymmetric"]["qat"]


@pytest.fixture(scope="session")
def qat_sym_onnx(qat_sym, tmp_path_factory):
    """The symmetric QAT checkpoint exported to a QDQ ONNX (8-bit weights, as TensorRT takes it)."""
    from alnett_edge.compress.qat import load_qat_checkpoint
    from alnett_edge.model.to_onnx import export_onnx

    model, card = load_qat_checkpoint(qat_sym)
    return export_onnx(model, card, tmp_path_factory.mktemp("qatonnx") / "q.onnx", simplify=False)


@pytest.fixture(scope="session")
def rpi_bundle(trained, qat_asym, tmp_path_factory):
    """``trained`` exported for rpi5 from the asymmetric QAT checkpoint: int8 .tflite (selected) plus
    the fp32 ONNX fallback; gated leniently (alnett-tiny on 64 px is not an int8-friendly model)."""
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    out = tmp_path_factory.mktemp("rpi") / "rpi8"
    return export_bundle(result.best, "rpi", out, qat=qat_asym, allow_drop=10.0, min_agreement=0.9)


@pytest.fixture(scope="session")
def x86_bundle(trained, tmp_path_factory):
    """``trained`` exported for x86-cpu with --precision auto (fp32 and int8 ONNX tried), plus archive."""
    from alnett_edge.export.exporter import export_bundle

    _, result = trained
    out = tmp_path_factory.mktemp("exp") / "x86"
    return export_bundle(result.best, "x86-cpu", out, precision="auto", archive=True)
