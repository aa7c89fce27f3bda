"""What this machine is: CPU model, SIMD, and which int8 kernels its runtimes use (bottom layer, no torch).

The int8 line matters because int8 results depend on it. On x86, ONNX Runtime's u8 x s8 kernels for
CPUs **without VNNI** (AVX2 only, e.g. AMD EPYC Zen 2/3, older Xeons) multiply pairs of activation x
weight bytes into one 16-bit lane (``vpmaddubsw``) that *saturates* at +-32767: a pair of 8-bit values
can reach 2 x 255 x 127 = 64770, so such a CPU can compute another answer than a VNNI CPU (AVX-512 VNNI,
AVX-VNNI, AMX), ARM (dot-product or NEON) or a GPU, all of which accumulate exactly in int32.
``calibrate.int8_safety`` proves per layer that an artifact cannot hit that limit.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

#: CPU flags that give x86 an exact (non-saturating) int8 dot product in ONNX Runtime's kernels
X86_EXACT_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
#: the kinds :func:`int8_kernel` names (device profiles list the ones their CPUs have)
INT8_KERNELS = ("x86-avx2", "x86-vnni", "arm", "other")
#: int8 dot-product flags reported, x86 and ARM
INT8_FLAGS = (*X86_EXACT_INT8, "asimddp", "i8mm")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(info: str | None = None) -> set[str]:
    info = _cpuinfo() if info is None else info
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", info, re.M)
    return set(m.group(2).split()) if m else set()


def cpu_model(info: str | None = None) -> str:
    info = _cpuinfo() if info is None else info
    m = re.search(r"^(model name|Model)\s*:\s*(.*)$", info, re.M)
    return m.group(2).strip() if m else (platform.processor() or platform.machine())


def simd(flags: set[str], machine: str | None = None) -> tuple[str, int]:
    """(name, fp32 FLOPs per cycle per core)."""
    machine = (machine or platform.machine()).lower()
    if "avx512f" in flags:
        return "AVX-512", 64
    if "avx2" in flags and "fma" in flags:
        return "AVX2+FMA", 32
    if machine in ("aarch64", "arm64"):
        return "NEON", 16
    if "avx" in flags:
        return "AVX", 16
    return "SSE", 8


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "x86")


def int8_kernel(flags: set[str], machine: str | None = None) -> str:
    """The kind of int8 dot product ONNX Runtime uses here.

    ``x86-vnni``: exact int32 accumulation. ``x86-avx2``: u8 x s8 pairs saturate in int16.
    ``arm``: exact (NEON / dot-product). ``other``: unknown, treated as exact by nothing.
    """
    if is_x86(machine):
        return "x86-vnni" if any(f in flags for f in X86_EXACT_INT8) else "x86-avx2"
    if (machine or platform.machine()).lower() in ("aarch64", "arm64"):
        return "arm"
    return "other"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def isa_summary() -> dict[str, Any]:
    """CPU model, architecture, SIMD, int8 dot-product flags and int8 kernel kind of this machine."""
    info = _cpuinfo()
    flags = cpu_flags(info)
    kernel = int8_kernel(flags)
    return {
        "cpu": cpu_model(info), "machine": platform.machine(), "cores": cpu_count(), "simd": simd(flags)[0],
        "int8_dot_product": [f for f in INT8_FLAGS if f in flags] or None, "int8_kernel": kernel,
    }  # fmt: skip


def isa_line(summary: dict[str, Any] | None = None) -> str:
    """One line for tables and logs, e.g. ``AMD EPYC | x86_64 AVX2+FMA | int8: no VNNI (saturating u8s8)``."""
    s = summary or isa_summary()
    int8 = {"x86-vnni": "VNNI (" + ",".join(s.get("int8_dot_product") or []) + ")",
            "x86-avx2": "no VNNI (u8s8 pairs saturate in int16)", "arm": "ARM (" + ",".join(s.get("int8_dot_product") or ["NEON"]) + ")"}
    return f"{s['cpu']} | {s['machine']} {s['simd']} | int8: {int8.get(s['int8_kernel'], s['int8_kernel'])}"


def inference_threads(asked: int) -> int:
    """``asked``, or every core this process may use but one: the capture thread decodes and the main
    thread detects while the runtime infers. On 2 AVX2 cores (BCCD 640x480, alnett-s, ONNX Runtime)
    one inference thread gave 51-52 fps unpaced against 42-48 with two, p99 frame-to-decision 65-67
    against 90-100 ms; at a paced 30 fps both kept up with the same p99 (55-60 ms)."""
    if asked:
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1)
