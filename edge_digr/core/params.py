"""click parameter types and options shared by the commands (torch-free at import).

click's FloatRange lets NaN through (every comparison with NaN is false) and accepts inf; these do not,
so that `--lam nan` or `--fps inf` is a usage error (exit 2) instead of a NaN written into a result.
`--device` and `--ray` are defined once here, for every command that takes them (the device they name is
resolved by the desktop side, `edge_digr.devices`, which imports torch).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import click


class FiniteFloat(click.FloatRange):
    """A float that is neither NaN nor ±inf, optionally within [min, max] (open ends with min_open/max_open)."""

    name = "finite float"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def positive_float() -> FiniteFloat:
    return FiniteFloat(min=0, min_open=True)


DEVICES = ("auto", "cpu", "cuda")
device_option = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                             help="Where torch runs: auto (CUDA when present, else CPU), cpu, or cuda.")

# `--ray` alone starts a local Ray instance on this machine's cores ("local" is ray.init's own word for it);
# `--ray auto` joins the cluster this machine belongs to; `--ray ray://HOST:10001` a remote one.
RAY_LOCAL = "local"
ray_option = click.option("--ray", "ray_address", is_flag=False, flag_value=RAY_LOCAL, default=None,
                          metavar="[ADDRESS]",
                          help="Run the perturbation maps as Ray tasks: alone, a local Ray instance on this "
                               "machine's cores; `auto` or `ray://HOST:10001`, an existing cluster "
                               "(needs the ray extra).")
