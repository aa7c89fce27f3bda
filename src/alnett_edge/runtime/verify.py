"""``alnett-edge verify BUNDLE``: the first thing to run after copying a bundle to a device.

Runs the bundle's golden inputs (real gate images, preprocessed at export) through each artifact on
this machine's backend and compares with what the export host computed for that artifact (and with
the fp32 PyTorch reference): max absolute probability difference and top-1 agreement. An artifact
passes when every golden image keeps its label and the difference is within the precision's
tolerance (kernels differ between an x86 host and an ARM CPU or a GPU, more so at int8/fp16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.bundle import load_bundle
from alnett_edge.errors import AlnettError
from alnett_edge.runtime.base import RuntimeUnavailable, backend_formats, unavailable_reason
from alnett_edge.runtime.loader import backend_order, open_target, targets_of

#: max |p_device - p_host| allowed per precision
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}


class VerifyFailed(AlnettError):
    """An artifact gives different answers on this machine than on the export host."""


@dataclass
class VerifyRow:
    artifact: str
    precision: str
    backend: str
    compared_with: str  # "export host" or "fp32 reference"
    n: int
    max_abs_diff: float | None
    agreement: float | None
    max_abs_diff_vs_fp32: float
    agreement_vs_fp32: float
    tolerance: float
    passed: bool | None
    note: str = ""


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def verify_bundle(path: str | Path, backend: str | None = None, threads: int = 0,
                  tolerance: float | None = None) -> list[VerifyRow]:
    bundle = load_bundle(path)
    golden_dir = bundle.root / "golden"
    inputs = np.load(golden_dir / "inputs.npy")
    ref = np.load(golden_dir / "fp32_reference.probs.npy")
    rows: list[VerifyRow] = []
    targets = targets_of(bundle.root)
    if backend:
        runnable = [t for t in targets if t.format in backend_formats(backend)]
        if not runnable:
            raise RuntimeUnavailable(f"backend {backend} runs none of {', '.join(t.label for t in targets)}")
        targets = runnable
    for target in targets:
        names = [backend] if backend else backend_order(target)
        usable = [b for b in names if unavailable_reason(b) is None]
        precision = str(target.artifact.get("precision", "fp32"))
        tol = tolerance if tolerance is not None else TOLERANCE.get(precision, 5e-2)
        if not usable:
            why = "; ".join(f"{b}: {unavailable_reason(b)}" for b in names) or "no backend runs this format"
            rows.append(VerifyRow(target.path.name, precision, "-", "-", len(inputs), None, None, float("nan"),
                                  float("nan"), tol, None, f"not run here ({why})"))
            continue
        with open_target(target, usable[0], threads) as rt:
            probs = rt.infer(inputs)
        host_file = golden_dir / f"{target.path.name}.probs.npy"
        if host_file.is_file():
            host, against = np.load(host_file), "export host"
        else:  # e.g. a TensorRT engine: nothing ran it at export, so the fp32 reference is the yardstick
            host, against = ref, "fp32 reference"
        diff = float(np.abs(probs - host).max())
        agree = _agree(probs, host)
        rows.append(VerifyRow(target.path.name, precision, usable[0], against, len(inputs), round(diff, 6), agree,
                              round(float(np.abs(probs - ref).max()), 6), _agree(probs, ref), tol,
                              agree == 1.0 and diff <= tol))
    return rows


def check_verified(rows: list[VerifyRow], path: str | Path) -> None:
    """Raise when nothing could run here or any artifact that ran disagrees."""
    ran = [r for r in rows if r.passed is not None]
    if not ran:
        raise RuntimeUnavailable(f"no artifact of {path} can run on this machine: " + "; ".join(r.note for r in rows))
    bad = [r for r in ran if not r.passed]
    if bad:
        raise VerifyFailed("; ".join(f"{r.artifact} on {r.backend}: max diff {r.max_abs_diff} (tolerance {r.tolerance}), "
                                     f"agreement {r.agreement:.3f} vs {r.compared_with}" for r in bad))


def rows_to_dicts(rows: list[VerifyRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
