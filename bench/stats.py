"""Latency summaries: percentiles in milliseconds of a list of durations in seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


def summary(durations: Sequence[float]) -> dict[str, Any]:
    """n, mean, p50, p95, p99 and max of `durations` (seconds), in milliseconds."""
    values = sorted(durations)
    if not values:
        return {"n": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "max_ms": None}
    return {
        "n": len(values),
        "mean_ms": round(1000 * sum(values) / len(values), 3),
        "p50_ms": round(1000 * percentile(values, 0.50), 3),
        "p95_ms": round(1000 * percentile(values, 0.95), 3),
        "p99_ms": round(1000 * percentile(values, 0.99), 3),
        "max_ms": round(1000 * values[-1], 3),
    }
