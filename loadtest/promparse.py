"""Server-side latency from the service's Prometheus histogram (scraped before and after)."""

from __future__ import annotations

import math
import re

from .hist import bucket_quantile

METRIC = "sidserve_request_duration_seconds"
_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def buckets(text: str, endpoint: str | None, method: str = "POST", metric: str = METRIC) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one endpoint (summed over label sets/processes);
    endpoint None: a histogram without endpoint labels."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or m["name"] != metric + "_bucket":
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        if endpoint is not None and (labels.get("endpoint") != endpoint or labels.get("method", method) != method):
            continue
        le = math.inf if labels["le"] in ("+Inf", "Inf") else float(labels["le"])
        out[le] = out.get(le, 0.0) + float(m["value"])
    return out


def delta_summary(before: str, after: str, endpoint: str, method: str = "POST") -> dict | None:
    """p50/p90/p99 (ms, interpolated within buckets) of requests served between two scrapes."""
    b0, b1 = buckets(before, endpoint, method), buckets(after, endpoint, method)
    if not b1:
        return None
    pairs = [(le, b1[le] - b0.get(le, 0.0)) for le in sorted(b1)]
    n = pairs[-1][1]
    finite = [le for le, _ in pairs if not math.isinf(le)]
    out = {"count": int(n), "bucket_bounds_ms": [round(le * 1000, 4) for le in finite]}
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
        v = bucket_quantile(q, pairs)
        out[name] = round(v * 1000, 4) if not math.isnan(v) else math.nan
    return out


CACHE_METRIC = "sidserve_sid_cache_lookups_total"


def counter_by_label(text: str, metric: str, label: str) -> dict[str, float]:
    """A counter's value per value of one label (summed over the other labels and processes)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or m["name"] != metric:
            continue
        key = dict(_LABEL.findall(m["labels"] or "")).get(label, "")
        out[key] = out.get(key, 0.0) + float(m["value"])
    return out


def cache_hit_rate(before: str, after: str) -> float | None:
    """Share of looked-up IDs the service's per-process cache answered between two scrapes."""
    b0, b1 = counter_by_label(before, CACHE_METRIC, "result"), counter_by_label(after, CACHE_METRIC, "result")
    hits = b1.get("hit", 0.0) - b0.get("hit", 0.0)
    total = hits + b1.get("miss", 0.0) - b0.get("miss", 0.0)
    return round(hits / total, 4) if total else None


LOOP_LAG_METRIC = "sidserve_event_loop_lag_seconds"


def loop_stalls(before: str, after: str) -> dict | None:
    """Between two scrapes, summed over the workers: rounds of the service's event-loop lag watcher
    (one per worker every 50 ms) and how many woke more than 10 / 100 ms late (the loop was held)."""
    b0, b1 = buckets(before, None, metric=LOOP_LAG_METRIC), buckets(after, None, metric=LOOP_LAG_METRIC)
    if not b1:
        return None
    rounds = b1[math.inf] - b0.get(math.inf, 0.0)
    out = {"rounds": int(rounds)}
    for name, le in (("over_10ms", 0.01), ("over_100ms", 0.1)):
        out[name] = int(rounds - (b1.get(le, 0.0) - b0.get(le, 0.0))) if le in b1 else None
    return out
