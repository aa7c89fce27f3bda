"""``alnett-edge export``: checkpoint -> a gated bundle for a device profile.

For each format the profile runs (primary first) the chosen precision is built (a secondary format
that lacks it gets fp32), every artifact that runs here is gated against the fp32 PyTorch model,
golden inputs and host outputs are stored for the on-device parity check, and the manifest is written.
The bundle is assembled in ``<out>.partial`` and renamed to ``<out>`` only when every gated artifact
passed; otherwise it becomes ``<out>.failed`` (status "failed") and export exits non-zero.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge import __version__
from alnett_edge.timing import interleaved_ms, relative_to
from alnett_edge.devices import DeviceProfile, resolve_target
from alnett_edge.errors import AlnettError, ConfigError
from alnett_edge.card import ModelCard
from alnett_edge.bundle import CARD, guard_output, make_archive, remove_own_staging, sha256_file, write_manifest
from alnett_edge.export.formats import ExportJob, get_format
from alnett_edge.export.formats.base import KERNELS
from alnett_edge.export.gate import DEFAULT_ALLOW_DROP, DEFAULT_MIN_AGREEMENT, gate_artifact, load_gate_set, predict_batched
from alnett_edge.model.to_onnx import export_onnx
from alnett_edge.machine import isa_line, isa_summary
from alnett_edge.model.checkpoint import load_checkpoint
from alnett_edge.model.profile import profile_model
from alnett_edge.runtime.loader import open_file

log = logging.getLogger(__name__)

GOLDEN_IMAGES = 8
REFERENCE_FILE = "reference.fp32.onnx"
_LIBS = ("torch", "onnx", "onnxruntime", "onnxslim", "litert-torch", "ai-edge-litert", "torchao", "numpy", "opencv-python-headless")


class GateFailed(AlnettError):
    """At least one artifact failed the accuracy gate."""


def host_is(profile: DeviceProfile) -> bool:
    machine = platform.machine().lower()
    return (profile.family == "x86" and machine in ("x86_64", "amd64")) or (profile.family == "rpi" and machine == "aarch64")


def _versions() -> dict[str, str]:
    out = {"alnett-edge": __version__, "python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def precisions_to_build(profile: DeviceProfile, precision: str) -> list[str]:
    if precision == "default":
        return [profile.default_precision]
    if precision == "auto":
        return list(profile.precisions) if host_is(profile) else [profile.default_precision]
    profile.check_precision(precision)
    return [precision]


def _saturation_failures(extra: dict[str, Any], profile: DeviceProfile) -> list[str]:
    """An int8 artifact for a profile that covers x86 CPUs without VNNI must be proven exact there."""
    sat = extra.get("int8_saturation")
    if not sat or sat.get("exact_on_x86_without_vnni") or not profile.int8_fits_avx2:
        return []
    return [f"int8 weights up to {sat['max_weight']} may saturate on x86 CPUs without VNNI "
            f"({len(sat['layers_that_may_saturate'])} layers; worst pair {sat['worst_pair']} > 32767)"]


#: a lower precision is selected by ``--precision auto`` only when at least this much faster (its
#: round-by-round latency / the most precise passing artifact's, median over rounds): within timing noise
#: the more exact artifact is kept
AUTO_MIN_GAIN = 0.05
_BITS = {"fp32": 32, "fp16": 16, "int8": 8}


def _time_here(artifacts: list[dict[str, Any]], timers: dict[str, Any]) -> None:
    """Batch-1 latency of every artifact that runs here, in interleaved rounds (``timing.interleaved_ms``):
    ``latency_b1_ms_here`` (median of the rounds' medians) and ``latency_vs_first_here`` (round by round,
    against the first one built)."""
    if not timers:
        return
    rounds = interleaved_ms(timers)
    rel = relative_to(rounds, next(iter(timers)))
    for a in artifacts:
        if a["file"] in rounds:
            a["latency_b1_ms_here"] = round(float(np.median(rounds[a["file"]])), 4)
            a["latency_vs_first_here"] = round(rel[a["file"]], 4)


def fastest(passed: list[dict[str, Any]]) -> str:
    """What ``--precision auto`` selects among the artifacts that passed the gate: the fastest here, by
    their latency compared round by round; a lower precision only when ``AUTO_MIN_GAIN`` faster than
    the most precise one."""
    timed = [a for a in passed if "latency_vs_first_here" in a]
    if not timed:
        return passed[0]["file"]
    exact = max(timed, key=lambda a: _BITS.get(a["precision"], 0))
    best = min(timed, key=lambda a: a["latency_vs_first_here"])
    if best["latency_vs_first_here"] <= exact["latency_vs_first_here"] * (1 - AUTO_MIN_GAIN):
        return best["file"]
    return exact["file"]


def _reference_model(model: Any, card: ModelCard, staging: Path, artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """The fp32 model ``verify --gate-images`` compares with on the device: an fp32 ONNX artifact of the
    bundle, else a ``reference.fp32.onnx`` added for that purpose (never selected or run by predict)."""
    fp32 = next((a for a in artifacts if a["precision"] == "fp32" and a["file"].endswith(".onnx")), None)
    if fp32 is not None:
        return {"file": fp32["file"], "precision": "fp32", "added": False}
    export_onnx(model, card, staging / REFERENCE_FILE)
    return {"file": REFERENCE_FILE, "precision": "fp32", "added": True}


def export_bundle(checkpoint: str | Path, target: str, out: str | Path | None = None, precision: str = "default",
                  qat: str | Path | None = None, calib_images: str | Path | None = None,
                  gate_images: str | Path | None = None, allow_drop: float = DEFAULT_ALLOW_DROP,
                  archive: bool = False, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                  force: bool = False, layout: str = "auto") -> dict[str, Any]:
    profile, alias_note = resolve_target(target)
    if alias_note:
        log.warning(alias_note)
    wanted = precisions_to_build(profile, precision)
    model, card = load_checkpoint(checkpoint)
    model.eval()
    if qat:
        from alnett_edge.model.checkpoint import read_card

        qcard = read_card(qat)
        if qcard.arch != card.arch or qcard.input != card.input:
            raise ConfigError(f"{qat} was not made from {checkpoint} (architecture or input differ); "
                              "pass the fp32 checkpoint the QAT run started from")
    out = Path(out) if out else Path("runs") / "export" / profile.name
    guard_output(out, force)  # before any work: an unrelated folder is never replaced
    tarball = out.with_name(out.name + ".tar.gz")
    if archive and (tarball.is_dir() or (tarball.exists() and not os.access(tarball, os.W_OK))):
        raise ConfigError(f"--archive writes {tarball}, which is a folder or not writable; move it or pick another --out")
    gate = load_gate_set(card, gate_images, layout)  # an empty or missing gate folder fails here, before any file
    staging = out.with_name(out.name + ".partial")
    failed_dir = out.with_name(out.name + ".failed")
    for d in (staging, failed_dir):
        remove_own_staging(d)
    (staging / "golden").mkdir(parents=True)

    prof = profile_model(model, card.input.size)
    with open_file(checkpoint, card, "checkpoint") as rt:  # the training framework's fp32 reference backend
        ref = predict_batched(rt.infer, gate.inputs)  # batched: a whole gate set would need GBs of activations
    golden = gate.inputs[:GOLDEN_IMAGES]
    np.save(staging / "golden" / "inputs.npy", golden)
    np.save(staging / "golden" / "fp32_reference.probs.npy", ref[:GOLDEN_IMAGES])

    job = ExportJob(model, card, staging, Path(qat) if qat else None, Path(calib_images) if calib_images else None, profile,
                    layout=layout)
    artifacts: list[dict[str, Any]] = []
    built: set[tuple[str, str]] = set()
    timers: dict[str, Any] = {}  # file -> one batch-1 call on this machine, timed once all are built
    try:
        for rank, fmt_name in enumerate(profile.formats):
            fmt = get_format(fmt_name)
            for p in wanted:
                # the preferred runtime's format gets the asked precision; fallback runtimes get fp32
                prec = p if rank == 0 and p in fmt.precisions else "fp32"
                if (fmt_name, prec) in built:
                    continue
                built.add((fmt_name, prec))
                art = fmt.build(job, prec)
                entry = art.to_dict()
                runners = fmt.gate_predictors(staging / art.file, art, card)
                if not runners:
                    entry["gate"] = {"passed": None, "reason": "this format cannot run on this machine"}
                else:
                    entry["gate"] = gate_artifact(runners, ref, gate, allow_drop, min_agreement, fmt.proxy,
                                                  _saturation_failures(art.extra, profile))
                    predict = runners.get(KERNELS) or next(iter(runners.values()))
                    timers[art.file] = lambda p=predict, x=gate.inputs[:1]: p(x)
                    np.save(staging / "golden" / f"{art.file}.probs.npy", predict(golden))
                entry["bytes"] = (staging / art.file).stat().st_size
                artifacts.append(entry)
                log.info("built %s (%s): gate %s", art.file, prec, entry["gate"].get("passed"))
    except AlnettError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as exc:  # converters raise many types; never leave a half-written bundle
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    _time_here(artifacts, timers)
    rejected: list[dict[str, Any]] = []
    if precision == "auto":
        # auto tries every precision: a candidate that fails the gate is left out, not fatal
        for a in [a for a in artifacts if a["gate"].get("passed") is False]:
            artifacts.remove(a)
            rejected.append(a)
            (staging / a["file"]).unlink()
            (staging / "golden" / f"{a['file']}.probs.npy").unlink(missing_ok=True)
    passed = [a for a in artifacts if a["gate"].get("passed")]
    failed = [a for a in artifacts if a["gate"].get("passed") is False]
    if not artifacts:
        failed = rejected
    selected = None
    if precision == "auto" and host_is(profile) and passed:
        selected = fastest(passed)
    elif artifacts:
        primary = [a for a in artifacts if a["format"] == profile.formats[0] and a["precision"] in wanted]
        selected = (primary or artifacts)[0]["file"]
    (staging / CARD).write_text(card.to_json())
    reference = _reference_model(model, card, staging, artifacts)
    manifest = {
        "status": "failed" if failed else "ok",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "toolkit": _versions(),
        "source_checkpoint": {"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint)},
        "options": {"target": target, "precision": precision, "qat": str(qat) if qat else None,
                    "calib_images": str(calib_images) if calib_images else None, "allow_drop": allow_drop,
                    "min_agreement": min_agreement},
        "target": profile.to_dict(),
        "model": {"variant": card.variant, "macs": prof.macs, "params": prof.params},
        "gate_set": {"source": gate.source, "n": int(len(gate.labels))},
        "gate_host": {**isa_summary(), "isa": isa_line()},
        "reference": reference,
        "artifacts": artifacts,
        "rejected_by_gate": rejected,
        "selected": selected,
        "golden": {"inputs": "golden/inputs.npy", "count": int(len(golden))},
        "notes": ([alias_note] if alias_note else []) + job.notes,
    }  # fmt: skip
    write_manifest(staging, manifest)
    if failed:
        staging.rename(failed_dir)
        msgs = "; ".join(f"{a['file']}: {', '.join(a['gate']['failures'])}" for a in failed)
        raise GateFailed(f"accuracy gate failed ({msgs}); bundle marked failed at {failed_dir} (--allow-drop / --min-agreement to accept)")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    manifest["bundle"] = str(out)
    if archive:
        manifest["archive"] = str(make_archive(out))
    return manifest
