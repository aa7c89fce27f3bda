"""Open what a user points at — a bundle (folder or .tar.gz), a card-carrying ``.onnx`` or an fp32
checkpoint — on the best backend this machine has, or the one asked for.

Bundles are verified (every sha256) before anything runs. Without ``backend`` the artifact the
export selected is tried first, then the rest in the device profile's format order, each on the
profile's runtimes in order; the first backend that is installed here wins. With ``backend`` the
first artifact that backend runs is used, and a backend that cannot run here is a one-line error.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alnett_edge.card import CARD_KEY, InputSpec, ModelCard
from alnett_edge.errors import CheckpointError, ConfigError
from alnett_edge.machine import import_onnxruntime
from alnett_edge.bundle import Bundle, load_bundle
from alnett_edge.runtime.base import (BACKENDS, Runtime, RuntimeUnavailable, backend_class, backend_formats, backend_options,
                                      backend_spec, backends_for_format, unavailable_reason)

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One runnable model file with its card and manifest entry."""

    path: Path
    card: ModelCard
    artifact: dict[str, Any]
    bundle: Bundle | None = None

    @property
    def format(self) -> str:
        return str(self.artifact["format"])

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.artifact.get('precision', 'fp32')})"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch needed)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
            meta = header.get("__metadata__") if isinstance(header, dict) else None
            if not isinstance(header, dict) or not isinstance(meta or {}, dict):
                raise ValueError("its header or __metadata__ is not a JSON object")
            return {str(k): v for k, v in (meta or {}).items() if isinstance(v, str)}
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc


def onnx_card(path: Path) -> ModelCard:
    ort = import_onnxruntime()

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        raise CheckpointError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from exc
    meta = sess.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise CheckpointError(f"{path} has no alnett-edge model card (export it with alnett-edge)")
    return ModelCard.from_json(meta[CARD_KEY])


def targets_of(path: str | Path) -> list[Target]:
    """Every runnable model in ``path``; for a bundle the selected artifact comes first."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"not found: {path}")
    if path.is_dir() or path.name.endswith((".tar.gz", ".tgz")):
        bundle = load_bundle(path)
        order = list(bundle.manifest.get("target", {}).get("formats", []))
        arts = sorted(bundle.artifacts, key=lambda a: (a["file"] != bundle.manifest.get("selected"),
                                                       order.index(a["format"]) if a["format"] in order else 99))
        return [Target(bundle.artifact_path(a), bundle.card, a, bundle) for a in arts]
    if path.suffix == ".onnx":
        card = onnx_card(path)
        precision = "int8" if card.quantization else "fp32"
        return [Target(path, card, {"file": path.name, "format": "onnx", "precision": precision})]
    if path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
        if CARD_KEY not in meta:
            raise CheckpointError(f"{path} has no alnett-edge model card (not an alnett-edge checkpoint)")
        return [Target(path, ModelCard.from_json(meta[CARD_KEY]), {"file": path.name, "format": "checkpoint", "precision": "fp32"})]
    if path.suffix == ".tflite":
        raise CheckpointError(f"{path} carries no model card; run it from the bundle it was exported in")
    raise CheckpointError(f"{path}: expected a bundle folder or .tar.gz, an .onnx or a .safetensors checkpoint")


def backend_order(target: Target) -> list[str]:
    """Backends that run this target, in the device profile's order of preference."""
    prefs = list((target.bundle.manifest.get("target", {}).get("runtimes", []) if target.bundle else []))
    order = prefs + [b for b in BACKENDS if b not in prefs]  # then the registry's default order
    return [b for b in order if b in BACKENDS and target.format in backend_formats(b)]


def choose(path: str | Path, backend: str | None = None, artifact: str | None = None) -> tuple[Target, str]:
    """The (target, backend) :func:`open_runtime` would use, without loading anything."""
    targets = targets_of(path)
    if artifact:
        picked = [t for t in targets if artifact in (t.path.name, t.artifact.get("precision"), t.format)]
        if not picked:
            raise ConfigError(f"{path} has no artifact {artifact!r}; it has {', '.join(t.label for t in targets)}")
        targets = picked
    if backend:
        backend_spec(backend)  # an unknown name is a one-line error
        runnable = [t for t in targets if t.format in backend_formats(backend)]
        if not runnable:
            raise RuntimeUnavailable(f"backend {backend} runs none of {', '.join(t.label for t in targets)}")
        reason = unavailable_reason(backend)
        if reason:
            raise RuntimeUnavailable(f"backend {backend} cannot run on this machine: {reason}")
        return runnable[0], backend
    tried = []
    for t in targets:
        for b in backend_order(t):
            reason = unavailable_reason(b)
            if reason is None:
                return t, b
            tried.append(f"{t.label} on {b}: {reason}")
    raise RuntimeUnavailable("nothing in " + str(path) + " can run here (" + "; ".join(tried) + ")")


def open_runtime(path: str | Path, backend: str | None = None, artifact: str | None = None, threads: int = 0,
                 **options: Any) -> Runtime:
    """Load a model on a backend (see the module doc for the choice)."""
    target, name = choose(path, backend, artifact)
    return open_target(target, name, threads, **options)


def open_target(target: Target, backend: str, threads: int = 0, cpu: bool = False, **options: Any) -> Runtime:
    """Open one target on one backend. ``options`` the backend does not take are dropped (its spec
    says which); ``cpu``: add the backend's CPU pinning (the gate and the fp32 reference)."""
    cls = backend_class(backend)
    rt = cls(target.path, target.card, target.artifact, threads, **backend_options(backend, options, cpu))
    rt.bundle = target.bundle  # the verified bundle it came from (None for a bare file)
    log.info("opened %s", rt.describe())
    return rt


def open_file(path: str | Path, card: ModelCard, fmt: str, precision: str = "fp32", threads: int = 0,
              cpu: bool = True, **options: Any) -> Runtime:
    """A model file of format ``fmt`` on the first backend that runs it here (the registry's order),
    pinned to the CPU by default: the one classify path for reference models and reports."""
    names = backends_for_format(fmt)
    usable = [b for b in names if unavailable_reason(b) is None]
    if not usable:
        raise RuntimeUnavailable(f"no backend runs {fmt} here: "
                                 + ("; ".join(f"{b}: {unavailable_reason(b)}" for b in names) or "none registered"))
    target = Target(Path(path), card, {"file": Path(path).name, "format": fmt, "precision": precision})
    return open_target(target, usable[0], threads, cpu=cpu, **options)


def anchor_target(path: str | Path) -> Target:
    """A plain classifier file without a model card — a speed anchor such as MobileNetV3-Small, as
    ONNX or .tflite (any backend's ``plain_files``) — as a target for latency only: its card is made
    from its input and output shapes (no preprocessing contract, no labels)."""
    path = Path(path)
    names = [n for n, spec in BACKENDS.items() if path.suffix in spec.plain_files]
    if not path.is_file() or not names:
        known = sorted({x for spec in BACKENDS.values() for x in spec.plain_files})
        raise ConfigError(f"--anchor takes a model file ({', '.join(known)}), got {path}")
    usable = [n for n in names if unavailable_reason(n) is None]
    if not usable:
        raise RuntimeUnavailable(f"no backend here opens {path.name}: "
                                 + "; ".join(f"{n}: {unavailable_reason(n)}" for n in names))
    try:
        shape, out = backend_class(usable[0]).io_shapes(path)
    except RuntimeUnavailable as exc:
        raise CheckpointError(f"{path} is not a loadable model ({exc})") from exc
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or 3 not in (shape[1], shape[3]):
        raise ConfigError(f"{path.name}: an anchor needs an image input N x 3 x H x W (or N x H x W x 3), got {shape}")
    nchw = shape[1] == 3
    size = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    classes = out[-1] if isinstance(out[-1], int) and out[-1] >= 2 else 2
    card = ModelCard(variant=f"anchor:{path.stem}", arch={}, class_names=tuple(f"class{i}" for i in range(classes)),
                     input=InputSpec(size=size, layout="NCHW" if nchw else "NHWC", mask_background=False))
    fmt = backend_formats(usable[0])[0]
    precision = backend_class(usable[0]).plain_precision(path)
    return Target(path, card, {"file": path.name, "format": fmt, "precision": precision, "anchor": True})
