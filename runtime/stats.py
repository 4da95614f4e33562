"""Bounded-memory statistics of a run: latency percentiles that do not grow with the number of steps."""
from __future__ import annotations

from typing import Optional

import numpy as np


class Reservoir:
    """A uniform random sample of at most `capacity` values of a stream (Vitter's algorithm R).

    Percentiles are exact while the stream is no longer than `capacity`, and estimated from an unbiased
    sample after that, in constant memory: a 24-hour run at 30 fps (2.6M steps) keeps 80 KB of latencies.
    """

    def __init__(self, capacity: int = 10_000, seed: int = 0):
        self._values = np.empty(capacity, np.float64)
        self.count = 0  # values seen
        self._rng = np.random.default_rng(seed)

    def add(self, value: float) -> None:
        capacity = len(self._values)
        if self.count < capacity:
            self._values[self.count] = value
        else:
            slot = int(self._rng.integers(0, self.count + 1))
            if slot < capacity:
                self._values[slot] = value
        self.count += 1

    def percentile(self, q: float) -> Optional[float]:
        kept = self._values[:min(self.count, len(self._values))]
        return float(np.percentile(kept, q)) if len(kept) else None
