"""What the benchmark ran on: CPU model, cores, SIMD, an fp32 peak estimate, load, and peak RSS.

The peak is ``cores x GHz x fp32 FLOPs per cycle per core``, with FLOPs/cycle from the SIMD the CPU
reports (two FMA units assumed: AVX-512 64, AVX2+FMA 32, ARMv8 NEON 16) and the clock from cpufreq's
maximum, else /proc/cpuinfo's current MHz. It is an estimate; ``--peak-gflops`` overrides it.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from pathlib import Path
from typing import Any


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags(info: str | None = None) -> set[str]:
    info = _cpuinfo() if info is None else info
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", info, re.M)
    return set(m.group(2).split()) if m else set()


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


def clock_ghz(info: str | None = None) -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    info = _cpuinfo() if info is None else info
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    return float(m.group(1)) / 1e3 if m else None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(peak_gflops: float | None = None) -> dict[str, Any]:
    info = _cpuinfo()
    flags = cpu_flags(info)
    isa, per_cycle = simd(flags)
    ghz = clock_ghz(info)
    cores = cpu_count()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    int8 = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    est = round(cores * ghz * per_cycle, 1) if ghz else None
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "machine": platform.machine(), "cores": cores, "simd": isa, "int8_dot_product": int8 or None,
        "clock_ghz": round(ghz, 3) if ghz else None, "fp32_flops_per_cycle_per_core": per_cycle,
        "peak_gflops": peak_gflops if peak_gflops else est,
        "peak_source": "given (--peak-gflops)" if peak_gflops else "estimate: cores x clock x FLOPs/cycle",
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }  # fmt: skip


def rss_mb() -> float:
    """This process's resident set size now (VmRSS on Linux; the peak elsewhere), in MiB."""
    return peak_rss_mb("VmRSS")


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident set size (VmHWM on Linux), in MiB."""
    try:
        m = re.search(rf"^{field}:\s*(\d+)\s*kB", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1)) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
