"""Medians, p95 and ratios of interleaved measurements."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Sample:
    """Durations in milliseconds of one variant, measured interleaved with the others."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p95(self) -> float:
        if len(self.values) < 2:
            return self.values[0]
        return statistics.quantiles(self.values, n=20, method="inclusive")[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"median_ms": round(self.median, 4), "p95_ms": round(self.p95, 4), "runs": len(self.values)}


def interleave(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, Sample]:
    """Run each variant once per round, in turn (the order rotates every round so no variant
    always follows another), and time each run with a monotonic clock."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            started = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: Sample(values) for name, values in samples.items()}
