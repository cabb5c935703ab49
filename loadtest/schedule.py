"""Arrival schedules of the open model: each request's intended send time, fixed in advance.

The driver sends request i at start + offsets[i] whatever earlier responses do, and measures
its latency from that intended time, so a stall in the service (or the generator) shows as
latency instead of silently lowering the request rate (no coordinated omission).
"""

from __future__ import annotations

import numpy as np


def constant_offsets(rate: float, duration: float) -> np.ndarray:
    """Evenly spaced arrivals: i / rate for i = 0 .. floor(rate * duration) - 1 (seconds)."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0, got rate={rate}, duration={duration}")
    n = int(np.floor(rate * duration + 1e-9))
    return np.arange(n, dtype=np.float64) / rate


def poisson_offsets(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    """Poisson arrivals (exponential gaps, mean 1 / rate) within [0, duration)."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0, got rate={rate}, duration={duration}")
    rng = np.random.default_rng(seed)
    n_guess = int(rate * duration + 10 * np.sqrt(rate * duration) + 10)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n_guess))
    while t[-1] < duration:  # vanishingly rare: extend
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n_guess))])
    return t[t < duration]


def offsets(kind: str, rate: float, duration: float, seed: int = 0) -> np.ndarray:
    if kind == "constant":
        return constant_offsets(rate, duration)
    if kind == "poisson":
        return poisson_offsets(rate, duration, seed)
    raise ValueError(f"unknown arrival schedule {kind!r} (constant, poisson)")
