"""What this machine is: CPU model, SIMD, and which int8 kernels its runtimes use (bottom layer, no torch).

The int8 line matters because int8 results depend on it. On x86, ONNX Runtime's u8 x s8 kernels for
CPUs **without VNNI** (AVX2 only, e.g. AMD EPYC Zen 2/3, older Xeons) multiply pairs of activation x
weight bytes into one 16-bit lane (``vpmaddubsw``) that *saturates* at +-32767: a pair of 8-bit values
can reach 2 x 255 x 127 = 64770, so such a CPU can compute another answer than a VNNI CPU (AVX-512 VNNI,
AVX-VNNI, AMX), ARM (dot-product or NEON) or a GPU, all of which accumulate exactly in int32.
``calibrate.int8_safety`` proves per layer that an artifact cannot hit that limit.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
from collections.abc import Iterator
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


#: aarch64 feature bits of the ELF auxiliary vector (Linux's asm/hwcap.h): AT_HWCAP, then AT_HWCAP2
_ARM_HWCAP = {0: "fp", 1: "asimd", 20: "asimddp", 22: "sve"}
_ARM_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}


def arm_hwcaps(auxv: bytes | None = None) -> set[str]:
    """The Arm features the kernel (or qemu-user, under emulation) gives this process, from
    ``/proc/self/auxv``: /proc/cpuinfo under emulation is the host's, not the emulated CPU's."""
    if auxv is None:
        try:
            auxv = Path("/proc/self/auxv").read_bytes()
        except OSError:
            return set()
    import struct

    caps: set[str] = set()
    for i in range(0, len(auxv) - 15, 16):
        key, value = struct.unpack_from("<QQ", auxv, i)
        table = _ARM_HWCAP if key == 16 else _ARM_HWCAP2 if key == 26 else None
        if table:
            caps |= {name for bit, name in table.items() if value >> bit & 1}
    return caps


def emulated(info: str | None = None, machine: str | None = None) -> bool:
    """An Arm process whose /proc/cpuinfo describes an x86 host: running under qemu-user."""
    info = _cpuinfo() if info is None else info
    arm = (machine or platform.machine()).lower() in ("aarch64", "arm64")
    return arm and bool(re.search(r"^(vendor_id|flags)\s*:", info, re.M))


def cpu_flags(info: str | None = None) -> set[str]:
    info = _cpuinfo() if info is None else info
    if emulated(info):  # the host's x86 flags would be a lie here
        return arm_hwcaps()
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", info, re.M)
    return set(m.group(2).split()) if m else set()


def cpu_model(info: str | None = None) -> str:
    info = _cpuinfo() if info is None else info
    m = re.search(r"^(model name|Model)\s*:\s*(.*)$", info, re.M)
    model = m.group(2).strip() if m else (platform.processor() or platform.machine())
    return f"emulated aarch64 (qemu-user on {model})" if emulated(info) else model


def simd(flags: set[str], machine: str | None = None) -> tuple[str, int]:
    """(name, fp32 FLOPs per cycle per core)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "NEON" + "".join(f"+{n}" for f, n in (("asimddp", "dotprod"), ("i8mm", "i8mm"), ("sve", "SVE"))
                                if f in flags), 16
    if "avx512f" in flags:
        return "AVX-512", 64
    if "avx2" in flags and "fma" in flags:
        return "AVX2+FMA", 32
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


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool | None = None) -> Iterator[None]:
    """File descriptor 2 sent to /dev/null meanwhile: a native library's own lines at import (ONNX
    Runtime's "Error in cpuinfo: failed to parse ..." on Arm, where its cpuinfo cannot read the CPU;
    seen under qemu-user). By default only on Arm; a Python exception still reaches the user."""
    if enabled is None:
        enabled = platform.machine().lower() in ("aarch64", "arm64")
    if not enabled:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_onnxruntime():  # noqa: ANN201 - the onnxruntime module
    """``import onnxruntime`` without its native lines on Arm (:func:`quiet_native_stderr`)."""
    with quiet_native_stderr():
        import onnxruntime

    return onnxruntime
