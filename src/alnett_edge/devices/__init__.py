"""Device profiles: what each target can run, shipped as TOML data files in ``devices/profiles/``.

A profile names its runtimes in preference order, the formats it runs, the precisions it supports
(with the reason for each one it does not), threads, maximum batch, input size, camera kind, the
ONNX opset its TensorRT parses, its int8 scheme, the int8 kernels of the CPUs it covers (an x86
profile that includes CPUs without VNNI gets int8 weights that cannot saturate them) and, for Jetsons, the TensorRT workspace
and the CSI camera's GStreamer pipeline. Adding a device is adding one TOML file.

``--target`` takes a profile name or a family alias (``jetson`` -> ``jetson-orin-nano``,
``rpi`` -> ``rpi5``, ``x86`` -> ``x86-cpu``); asking for something the device cannot do is an
:class:`UnsupportedOnDevice` error naming the reason, never a silent fallback. Torch-free.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alnett_edge.errors import ConfigError
from alnett_edge.machine import INT8_KERNELS

PRECISIONS = ("fp32", "fp16", "int8")
ALIASES = {"jetson": "jetson-orin-nano", "rpi": "rpi5", "raspberry-pi": "rpi5", "x86": "x86-cpu", "cpu": "x86-cpu"}


class UnsupportedOnDevice(ConfigError):
    """The target device cannot run what was asked (precision, format, batch)."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    family: str
    description: str
    runtimes: tuple[str, ...]
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    default_precision: str
    threads: int
    max_batch: int
    camera: str
    onnx_opset: int
    int8_scheme: str = "asymmetric"  # "symmetric": zero-point 0 everywhere (TensorRT)
    cpu_int8: tuple[str, ...] = ()  # int8 kernel kinds of the CPUs it covers (machine.int8_kernel)
    unsupported: dict[str, str] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    gstreamer: dict[str, str] = field(default_factory=dict)

    def check_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if precision not in self.precisions:
            reason = self.unsupported.get(precision, f"it supports {', '.join(self.precisions)}")
            raise UnsupportedOnDevice(f"{self.name} cannot run {precision}: {reason}")

    @property
    def int8_fits_avx2(self) -> bool:
        """Whether int8 weights must be fitted to the int16 pairs of x86 CPUs without VNNI (the
        profile covers such CPUs; see ``calibrate.int8_safety``)."""
        return "x86-avx2" in self.cpu_int8

    def check_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise UnsupportedOnDevice(f"{self.name} runs batches of 1..{self.max_batch}, not {batch}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _parse(text: str, source: str) -> DeviceProfile:
    try:
        d = tomllib.loads(text)
        profile = DeviceProfile(
            name=d["name"], family=d["family"], description=d["description"], runtimes=tuple(d["runtimes"]),
            formats=tuple(d["formats"]), precisions=tuple(d["precisions"]), default_precision=d["default_precision"],
            threads=int(d["threads"]), max_batch=int(d["max_batch"]),
            camera=d["camera"], onnx_opset=int(d["onnx_opset"]), int8_scheme=str(d.get("int8_scheme", "asymmetric")),
            cpu_int8=tuple(d.get("cpu_int8", ())), unsupported=dict(d.get("unsupported", {})),
            tensorrt=dict(d.get("tensorrt", {})), gstreamer=dict(d.get("gstreamer", {})),
        )  # fmt: skip
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"device profile {source} is invalid: {exc}") from exc
    if profile.default_precision not in profile.precisions or any(p not in PRECISIONS for p in profile.precisions):
        raise ConfigError(f"device profile {source}: precisions {profile.precisions} / default {profile.default_precision}")
    if profile.int8_scheme not in ("symmetric", "asymmetric"):
        raise ConfigError(f"device profile {source}: int8_scheme must be symmetric or asymmetric")
    if not set(profile.cpu_int8) <= set(INT8_KERNELS):
        raise ConfigError(f"device profile {source}: cpu_int8 takes {', '.join(INT8_KERNELS)}")
    return profile


def load_profiles() -> dict[str, DeviceProfile]:
    folder = resources.files("alnett_edge.devices") / "profiles"
    profiles = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            p = _parse(entry.read_text(), entry.name)
            profiles[p.name] = p
    return profiles


def resolve_target(target: str) -> tuple[DeviceProfile, str | None]:
    """The profile for ``target`` (a name, an alias, or the path of a profile ``.toml`` of your own
    device) and, when an alias was resolved, a sentence saying which."""
    if target.endswith(".toml"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"device profile not found: {path}")
        return _parse(path.read_text(encoding="utf-8"), path.name), None
    profiles = load_profiles()
    key = target.strip().lower()
    if key in profiles:
        return profiles[key], None
    if key in ALIASES:
        p = profiles[ALIASES[key]]
        return p, f"--target {target} means {p.name} ({p.description}); name another profile to change it"
    raise ConfigError(f"unknown target {target!r}; devices: {', '.join(profiles)} (aliases: {', '.join(ALIASES)})")
