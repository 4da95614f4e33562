"""Parse `tegrastats` lines (Jetson Nano, TX2, Xavier, Orin; JetPack 4 to 6) into power, load and temperatures.

Rail readings look like ``NAME instant/average`` in milliwatts, with a ``mW`` suffix from JetPack 5 on
(``VDD_IN 5251mW/8535mW``) and without it before (``POM_5V_IN 2132/2132``); newer releases append a
third figure (``VDD_IN 9761mW/9761mW/9761mW``). Only the instantaneous figure is used: the others average
over the whole life of the tegrastats process, which would smear the profiled window.

The *input rail* is the module's own supply measurement: ``VDD_IN`` (Orin NX/Nano, Xavier NX, TX2) or
``POM_5V_IN`` (Nano, TX1). AGX Orin (``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ``VDDQ_VDD2_1V8AO``)
and AGX Xavier (``GPU``, ``CPU``, ``SOC``, ``CV``, ``VDDRQ``, ``SYS5V``) print no input rail; their rails
are sub-supplies that overlap and miss regulator losses, so they are never summed into one: the input
power is then reported as absent, each rail's mean is still given, and a rail can be chosen explicitly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# Module input rails, in the order they are looked for.
INPUT_RAILS: Tuple[str, ...] = ("VDD_IN", "POM_5V_IN")

# NAME instant[/average[/third]], each optionally suffixed mW; the lookahead rejects "RAM 2513/7620MB".
_RAIL = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMP = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C")


@dataclass(frozen=True)
class TegrastatsSample:
    rails_mw: Dict[str, float]  # instantaneous power per rail
    gpu_load_pct: Optional[float] = None
    ram_used_mb: Optional[int] = None
    ram_total_mb: Optional[int] = None
    temperatures_c: Dict[str, float] = field(default_factory=dict)
    time_s: Optional[float] = None  # when the line was read (monotonic clock), if known

    @property
    def input_rail(self) -> Optional[str]:
        return next((r for r in INPUT_RAILS if r in self.rails_mw), None)


def parse_line(line: str, time_s: Optional[float] = None) -> Optional[TegrastatsSample]:
    """One tegrastats line as a sample, or None for a line that holds neither rails nor RAM (e.g. a banner)."""
    rails = {name: float(instant) for name, instant, _ in _RAIL.findall(line)}
    ram = _RAM.search(line)
    if not rails and ram is None:
        return None
    gpu = _GPU.search(line)
    # Disconnected sensors read -256C on Orin; they are not temperatures.
    temps = {name: float(v) for name, v in _TEMP.findall(line) if float(v) > -100.0}
    return TegrastatsSample(
        rails_mw=rails,
        gpu_load_pct=float(gpu.group(1)) if gpu else None,
        ram_used_mb=int(ram.group(1)) if ram else None,
        ram_total_mb=int(ram.group(2)) if ram else None,
        temperatures_c=temps,
        time_s=time_s,
    )


def parse_lines(lines: Iterable[str]) -> List[TegrastatsSample]:
    return [s for s in (parse_line(line) for line in lines) if s is not None]


@dataclass(frozen=True)
class PowerSummary:
    rail: Optional[str]  # the rail the power and energy figures refer to; None if the board prints no input rail
    mean_w: Optional[float]
    energy_per_inference_j: Optional[float]
    samples: int
    rail_means_w: Dict[str, float]  # every rail's mean, never summed
    mean_gpu_load_pct: Optional[float]
    note: str = ""

    def to_dict(self) -> Dict[str, object]:
        return {"rail": self.rail, "mean_w": self.mean_w, "energy_per_inference_j": self.energy_per_inference_j,
                "samples": self.samples, "rail_means_w": self.rail_means_w,
                "mean_gpu_load_pct": self.mean_gpu_load_pct, "note": self.note}


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def summarize(samples: Sequence[TegrastatsSample], duration_s: float, inferences: int,
              rail: Optional[str] = None) -> PowerSummary:
    """Mean power of `rail` (default: the input rail) over the samples, and energy per inference.

    Energy per inference = mean power × `duration_s` / `inferences`: the whole module's energy over the
    window (idle draw included), shared out over the inferences run in it.
    """
    names = sorted({n for s in samples for n in s.rails_mw})
    rail_means = {n: _mean([s.rails_mw[n] for s in samples if n in s.rails_mw]) / 1e3 for n in names}
    gpu = _mean([s.gpu_load_pct for s in samples if s.gpu_load_pct is not None])
    chosen = rail or next((r for r in INPUT_RAILS if r in names), None)
    if chosen is None:
        note = ("this board prints no input rail (VDD_IN / POM_5V_IN); sub-rails are not summed, pick one with "
                "--power-rail to report it" if names else "no power rails in the tegrastats output")
        return PowerSummary(None, None, None, len(samples), rail_means, gpu, note)
    if chosen not in rail_means:
        return PowerSummary(chosen, None, None, len(samples), rail_means, gpu,
                            f"rail {chosen} is not in the tegrastats output (it has: {', '.join(names) or 'none'})")
    mean_w = rail_means[chosen]
    energy = mean_w * duration_s / inferences if inferences > 0 and duration_s > 0 else None
    note = "" if chosen in INPUT_RAILS else f"{chosen} is a sub-rail, not the module input"
    return PowerSummary(chosen, mean_w, energy, len(samples), rail_means, gpu, note)
