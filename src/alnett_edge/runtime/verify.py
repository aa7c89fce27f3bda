"""``alnett-edge verify BUNDLE``: the first thing to run after copying a bundle to a device.

Runs the bundle's golden inputs (real gate images, preprocessed at export) through each artifact on
this machine's backend and compares with what the export host computed for that artifact (and with
the fp32 PyTorch reference): max absolute probability difference and top-1 agreement. An artifact
passes when every golden image keeps its label and the difference is within the precision's
tolerance (kernels differ between an x86 host and an ARM CPU or a GPU, more so at int8/fp16).

``--gate-images DIR`` re-runs the export's accuracy gate here, on labelled images of this site: each
artifact on this machine's backend against the bundle's fp32 reference model run here, with the
limits the bundle was exported with (``--allow-drop``, ``--min-agreement``). A bundle whose int8
gate was a proxy at export (a TensorRT engine, or an int8 artifact gated on another CPU) is judged
here on the real thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.bundle import Bundle, load_bundle
from alnett_edge.data.sources import load_samples
from alnett_edge.errors import AlnettError, DataError
from alnett_edge.evaluation import DEFAULT_ALLOW_DROP, DEFAULT_MIN_AGREEMENT, gate_result, labelled_inputs, predict_batched
from alnett_edge.machine import isa_line, isa_summary
from alnett_edge.runtime.base import RuntimeUnavailable, backend_formats, unavailable_reason
from alnett_edge.runtime.loader import backend_order, open_file, open_target, targets_of

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


@dataclass
class GateRow:
    """One artifact re-gated on this machine against the bundle's fp32 reference."""

    artifact: str
    precision: str
    backend: str
    n: int
    accuracy: float | None
    reference_accuracy: float | None
    drop_points: dict[str, float]
    agreement: float | None
    passed: bool | None
    failures: list[str]
    note: str = ""


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def verify_bundle(path: str | Path, backend: str | None = None, threads: int = 0,
                  tolerance: float | None = None) -> list[VerifyRow]:
    bundle = load_bundle(path)
    inputs = bundle.array("golden/inputs.npy")
    ref = bundle.array("golden/fp32_reference.probs.npy")
    rows: list[VerifyRow] = []
    for target in _targets(bundle, backend):
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
        host_file = f"golden/{target.path.name}.probs.npy"
        if host_file in bundle.manifest["files"]:
            host, against = bundle.array(host_file), "export host"
        else:  # e.g. a TensorRT engine: nothing ran it at export, so the fp32 reference is the yardstick
            host, against = ref, "fp32 reference"
        diff = float(np.abs(probs - host).max())
        agree = _agree(probs, host)
        rows.append(VerifyRow(target.path.name, precision, usable[0], against, len(inputs), round(diff, 6), agree,
                              round(float(np.abs(probs - ref).max()), 6), _agree(probs, ref), tol,
                              agree == 1.0 and diff <= tol, _saturation_note(target.artifact)))
    return rows


def _saturation_note(artifact: dict[str, Any]) -> str:
    """A warning when this CPU's int8 kernels can saturate on an artifact not proven safe for them."""
    sat = (artifact.get("extra") or {}).get("int8_saturation")
    if artifact.get("precision") != "int8" or not artifact.get("file", "").endswith(".onnx"):
        return ""
    if isa_summary()["int8_kernel"] != "x86-avx2" or (sat and sat.get("exact_on_x86_without_vnni")):
        return ""
    return "int8 weights not proven safe for this CPU without VNNI: results may differ from VNNI/ARM/GPU"


def regate_bundle(path: str | Path, gate_images: str | Path, backend: str | None = None, threads: int = 0,
                  allow_drop: float | None = None, min_agreement: float | None = None) -> tuple[list[GateRow], dict[str, Any]]:
    """Re-run the accuracy gate here on labelled ``gate_images`` (see the module doc)."""
    bundle = load_bundle(path)
    opts = bundle.manifest.get("options", {})
    allow_drop = opts.get("allow_drop", DEFAULT_ALLOW_DROP) if allow_drop is None else allow_drop
    min_agreement = opts.get("min_agreement", DEFAULT_MIN_AGREEMENT) if min_agreement is None else min_agreement
    gate = labelled_inputs(load_samples(gate_images), bundle.card, str(gate_images))
    ref_probs, ref_label = _reference_probs(bundle, gate.inputs, threads)
    rows = []
    for target in _targets(bundle, backend):
        names = [backend] if backend else backend_order(target)
        usable = [b for b in names if unavailable_reason(b) is None]
        precision = str(target.artifact.get("precision", "fp32"))
        if not usable:
            rows.append(GateRow(target.path.name, precision, "-", len(gate.labels), None, None, {}, None, None, [],
                                "not run here: " + "; ".join(f"{b}: {unavailable_reason(b)}" for b in names)))
            continue
        with open_target(target, usable[0], threads) as rt:
            probs = predict_batched(rt.infer, gate.inputs)
        g = gate_result(gate.prob(ref_probs), gate.prob(probs), gate.labels, allow_drop, min_agreement)
        rows.append(GateRow(target.path.name, precision, usable[0], g["n"], g["metrics"]["accuracy"],
                            g["reference_metrics"]["accuracy"], g["drop_points"], g["agreement"], g["passed"],
                            g["failures"], _saturation_note(target.artifact)))
    info = {"gate_images": str(gate_images), "n": int(len(gate.labels)), "reference": ref_label,
            "allow_drop": allow_drop, "min_agreement": min_agreement, "machine": isa_line()}
    return rows, info


def _targets(bundle: Bundle, backend: str | None) -> list[Any]:
    targets = targets_of(bundle.root)
    if backend:
        runnable = [t for t in targets if t.format in backend_formats(backend)]
        if not runnable:
            raise RuntimeUnavailable(f"backend {backend} runs none of {', '.join(t.label for t in targets)}")
        return runnable
    return targets


def _reference_probs(bundle: Bundle, inputs: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    ref = bundle.manifest.get("reference")
    if not ref:
        raise DataError(f"{bundle.root} has no fp32 reference model (exported before alnett-edge recorded one); "
                        "re-export it to re-gate on the device")
    with open_file(bundle.file(ref["file"]), bundle.card, ref.get("format", "onnx"), "fp32", threads) as rt:
        return predict_batched(rt.infer, inputs), f"{ref['file']} (fp32, {rt.backend} on the CPU here)"


def _failed(rows: list[VerifyRow] | list[GateRow], path: str | Path) -> list[Any]:
    """The rows that ran and failed; an error when none could run here."""
    ran = [r for r in rows if r.passed is not None]
    if not ran:
        raise RuntimeUnavailable(f"no artifact of {path} can run on this machine: " + "; ".join(r.note for r in rows))
    return [r for r in ran if not r.passed]


def check_regated(rows: list[GateRow], path: str | Path) -> None:
    bad = _failed(rows, path)
    if bad:
        raise VerifyFailed("accuracy gate FAILED on this machine: " + "; ".join(
            f"{r.artifact} on {r.backend}: {', '.join(r.failures)}" for r in bad) + " — do not use this bundle here")


def check_verified(rows: list[VerifyRow], path: str | Path) -> None:
    """Raise when nothing could run here or any artifact that ran disagrees."""
    bad = _failed(rows, path)
    if bad:
        raise VerifyFailed("; ".join(f"{r.artifact} on {r.backend}: max diff {r.max_abs_diff} (tolerance {r.tolerance}), "
                                     f"agreement {r.agreement:.3f} vs {r.compared_with}" for r in bad))


def rows_to_dicts(rows: list[VerifyRow] | list[GateRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
