"""Latency histograms: HdrHistogram (PyPI `hdrhistogram`) in microseconds, 3 significant digits.

Values are recorded as integer microseconds from 1 us to 60 s, so any latency below 1 ms is
resolved to 1 us and larger ones to 0.1 % of their value. Summaries are reported in ms.

Also here: Prometheus-style quantiles from cumulative histogram buckets, for the server-side
handler time the service exports (`histogram_quantile` semantics: linear within a bucket).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


class LatencyHistogram:
    """Records latencies (seconds or microseconds); reports percentiles in milliseconds."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record_us(self, us: float) -> None:
        v = int(round(us))
        self._h.record_value(LOWEST_US if v < LOWEST_US else HIGHEST_US if v > HIGHEST_US else v)

    def record_s(self, seconds: float) -> None:
        self.record_us(seconds * 1e6)

    def merge(self, other: LatencyHistogram) -> None:
        self._h.add(other._h)

    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def percentile_ms(self, p: float) -> float:
        """Value at percentile p (0-100] in ms: the smallest recorded value v with >= p % of
        the samples <= v (HDR semantics, equivalent up to the histogram's resolution)."""
        if self.count == 0:
            return math.nan
        return self._h.get_value_at_percentile(p) / 1000.0

    def max_ms(self) -> float:
        return self._h.get_max_value() / 1000.0 if self.count else math.nan

    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1000.0 if self.count else math.nan

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"count": self.count}
        for name, p in PERCENTILES.items():
            out[name] = round(self.percentile_ms(p), 4)
        out["max_ms"] = round(self.max_ms(), 4)
        out["mean_ms"] = round(self.mean_ms(), 4)
        return out


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus `histogram_quantile`: q in [0, 1] from cumulative (upper_bound, count) pairs,
    sorted by bound, the last one +Inf. Linear interpolation inside the bucket; a quantile in
    the +Inf bucket returns the highest finite bound (the true value is unknown above it).
    Returns NaN when there are no observations."""
    if not buckets:
        return math.nan
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
