"""Budgets (budgets.toml) and the check that names every budget a run missed."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

DEFAULT_FILE = Path(__file__).with_name("budgets.toml")
KEYS = ("p50_ms", "p99_ms", "ok_p99_ms", "max_error_rate", "min_throughput_rps", "max_late_sends")


def load(path: Path | str = DEFAULT_FILE) -> dict:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    for profile, scenarios in data.items():
        for scenario, budget in scenarios.items():
            unknown = set(budget) - set(KEYS)
            if unknown:
                raise ValueError(f"{path}: [{profile}.{scenario}] unknown keys {sorted(unknown)}; known: {KEYS}")
    return data


def for_scenario(budgets: dict, profile: str, scenario: str) -> dict:
    table = budgets.get(profile, {})
    return {**table.get("default", {}), **table.get(scenario, {})}


def check(result: dict, budget: dict) -> list[str]:
    """Misses of one scenario's result (the runner's JSON shape), as readable lines."""
    misses = []
    lat = result["latency"]
    for key in ("p50_ms", "p99_ms"):
        if key in budget and not (lat[key] <= budget[key]):  # NaN (no answer) misses
            misses.append(f"{key} {lat[key]} > {budget[key]}")
    if "ok_p99_ms" in budget and not (result["latency_ok"]["p99_ms"] <= budget["ok_p99_ms"]):
        misses.append(f"ok_p99_ms {result['latency_ok']['p99_ms']} > {budget['ok_p99_ms']}")
    if "max_error_rate" in budget and result["error_rate"] > budget["max_error_rate"]:
        misses.append(f"error rate {result['error_rate']:.4g} > {budget['max_error_rate']} "
                      f"({result['errors']})")
    if "min_throughput_rps" in budget and not (result["achieved_rps"] >= budget["min_throughput_rps"]):
        misses.append(f"throughput {result['achieved_rps']} req/s < {budget['min_throughput_rps']}")
    if "max_late_sends" in budget and result["late_sends"] > budget["max_late_sends"]:
        misses.append(f"late sends {result['late_sends']} > {budget['max_late_sends']}")
    return misses


def is_nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)
