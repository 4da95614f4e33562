"""click parameter types shared by the commands (torch-free): numbers that must be finite and in range.

click's FloatRange lets NaN through (every comparison with NaN is false) and accepts inf; these do not,
so that `--lam nan` or `--fps inf` is a usage error (exit 2) instead of a NaN written into a result.
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
