"""What a Jetson is set to while it is profiled: power mode, clock locking, and tegrastats sampling.

Everything here degrades to "absent" off a Jetson (or without the tools): `device_state()` then says
``{"jetson": False}`` and `TegrastatsSampler` records nothing, so `edge-digr profile` runs the same
everywhere. The sysfs root and the tool names are parameters so the tests can fake a board.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edge_digr.runtime.tegrastats import TegrastatsSample, parse_line

# devfreq device names of the integrated GPU: Nano/TX1 (gpu), TX2 (gp10b), Xavier (gv11b), Orin (ga10b, gpu).
_GPU_DEVFREQ = re.compile(r"gpu|gp10b|gv11b|ga10b", re.IGNORECASE)
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S.*?)\s*$", re.MULTILINE)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def is_jetson(root: str = "/") -> bool:
    base = Path(root)
    if (base / "etc/nv_tegra_release").exists():
        return True
    model = _read(base / "proc/device-tree/model") or ""
    return "jetson" in model.lower()


@dataclass(frozen=True)
class PowerMode:
    name: str
    mode_id: Optional[int]


def parse_nvpmodel(text: str) -> Optional[PowerMode]:
    """`nvpmodel -q` prints ``NV Power Mode: MAXN`` then the mode number on the next line."""
    match = _POWER_MODE.search(text)
    if match is None:
        return None
    rest = text[match.end():].split()
    return PowerMode(match.group(1), int(rest[0]) if rest and rest[0].isdigit() else None)


def power_mode(nvpmodel: str = "nvpmodel") -> Optional[PowerMode]:
    exe = shutil.which(nvpmodel)
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvpmodel(done.stdout)


def _min_max_pairs(sysfs: Path) -> Dict[str, Tuple[int, int]]:
    """(min, max) frequency of every online CPU and of the GPU, as the kernel governs them."""
    pairs: Dict[str, Tuple[int, int]] = {}
    for cpufreq in sorted(sysfs.glob("devices/system/cpu/cpu[0-9]*/cpufreq")):
        lo, hi = _read(cpufreq / "scaling_min_freq"), _read(cpufreq / "scaling_max_freq")
        if lo and hi and lo.isdigit() and hi.isdigit():
            pairs[cpufreq.parent.name] = (int(lo), int(hi))
    for dev in sorted(sysfs.glob("class/devfreq/*")):
        if _GPU_DEVFREQ.search(dev.name):
            lo, hi = _read(dev / "min_freq"), _read(dev / "max_freq")
            if lo and hi and lo.isdigit() and hi.isdigit():
                pairs[f"gpu:{dev.name}"] = (int(lo), int(hi))
    return pairs


def clocks_locked(sysfs_root: str = "/sys") -> Optional[bool]:
    """Whether `jetson_clocks` pinned the clocks: every CPU's and the GPU's minimum equals its maximum.

    Read from sysfs rather than `jetson_clocks --show`, which needs root. None if nothing is readable.
    """
    pairs = _min_max_pairs(Path(sysfs_root))
    if not pairs:
        return None
    return all(lo == hi for lo, hi in pairs.values())


def device_state(root: str = "/", nvpmodel: str = "nvpmodel") -> Dict[str, Any]:
    """The board, its power mode and clock state (``{"jetson": False}`` anywhere else)."""
    if not is_jetson(root):
        return {"jetson": False}
    mode = power_mode(nvpmodel)
    base = Path(root)
    release = (_read(base / "etc/nv_tegra_release") or "").splitlines()
    return {
        "jetson": True,
        "model": (_read(base / "proc/device-tree/model") or "").rstrip("\x00") or None,
        "l4t": release[0] if release else None,
        "power_mode": mode.name if mode else None,
        "power_mode_id": mode.mode_id if mode else None,
        "clocks_locked": clocks_locked(str(base / "sys")),
    }


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps every parsed line with its read time.

    Use as a context manager around the measured work; `between(t0, t1)` gives the samples of a window
    measured with `time.monotonic()`. Without tegrastats on the PATH it is inert (`available` is False).
    """

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats"):
        self.interval_ms = interval_ms
        self.exe = shutil.which(command)
        self.samples: List[TegrastatsSample] = []
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.exe is not None

    def start(self) -> "TegrastatsSampler":
        if self.exe is None or self._proc is not None:
            return self
        self._proc = subprocess.Popen([self.exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read_lines, name="tegrastats", daemon=True)
        self._reader.start()
        return self

    def _read_lines(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_line(line, time.monotonic())
            if sample is not None:
                with self._lock:
                    self.samples.append(sample)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._proc = None

    def between(self, t0: float, t1: float) -> Sequence[TegrastatsSample]:
        with self._lock:
            return [s for s in self.samples if s.time_s is not None and t0 <= s.time_s <= t1]

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
