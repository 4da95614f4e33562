"""The machine a figure was measured on: CPU model, cache sizes, cores, and a fixed single-core speed probe.

Machines of one kind differ 2–3× in speed, so every timing in docs/RESULTS.md and the demo's report
carries this line. The probe is a fixed pure-Python loop (no BLAS, no threads): its best-of-five time
scales with the single-core speed that the environments and small-batch inference depend on.

    python -m edge_digr.machine
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Dict, Optional

PROBE_ITERATIONS = 500_000


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_sizes() -> Dict[str, str]:
    """L2 and L3 sizes as the kernel reports them for CPU 0 (empty where sysfs is absent)."""
    sizes: Dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            if level in ("2", "3"):
                sizes[f"L{level}"] = (index / "size").read_text().strip()
        except OSError:
            continue
    return sizes


def speed_probe_ms(repeats: int = 5) -> float:
    """Best of `repeats` timings of a fixed pure-Python loop, in ms (lower is faster)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(PROBE_ITERATIONS):
            total += i * i
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def machine_info(probe: bool = True) -> Dict[str, object]:
    info: Dict[str, object] = {"cpu": _cpu_model(), "cores": os.cpu_count(), **_cache_sizes(),
                               "python": platform.python_version()}
    if probe:
        info["probe_ms"] = round(speed_probe_ms(), 1)
    return info


def machine_line(info: Optional[Dict[str, object]] = None) -> str:
    """One line for reports: 'AMD EPYC, 2 cores, L2 512K, L3 32768K, probe 95.1 ms'."""
    info = info or machine_info()
    caches = ", ".join(f"{k} {info[k]}" for k in ("L2", "L3") if k in info)
    probe = f", probe {info['probe_ms']} ms" if "probe_ms" in info else ""
    return f"{info['cpu']}, {info['cores']} cores" + (f", {caches}" if caches else "") + probe


if __name__ == "__main__":
    print(machine_line())
