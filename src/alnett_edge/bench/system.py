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

from alnett_edge.machine import _cpuinfo, cpu_flags, isa_line, isa_summary, simd

__all__ = ["clock_ghz", "machine_info", "peak_rss_mb", "rss_mb", "simd"]


def clock_ghz(info: str | None = None) -> float | None:
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    info = _cpuinfo() if info is None else info
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    return float(m.group(1)) / 1e3 if m else None


def machine_info(peak_gflops: float | None = None) -> dict[str, Any]:
    """CPU, SIMD, int8 kernel kind (see ``alnett_edge.machine``), clock, fp32 peak estimate and load."""
    info = _cpuinfo()
    _, per_cycle = simd(cpu_flags(info))
    isa = isa_summary()
    ghz = clock_ghz(info)
    est = round(isa["cores"] * ghz * per_cycle, 1) if ghz else None
    return {
        **isa, "isa": isa_line(isa),
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
