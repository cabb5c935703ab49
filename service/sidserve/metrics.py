"""Prometheus metrics of one app instance, exposed at GET /metrics.

Each app gets its own registry, so several apps can live in one process (tests). With several
uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to an empty directory so /metrics aggregates
all worker processes (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# Features answers take a fraction of a millisecond to a few: the default buckets start at 5 ms.
# 50-100 us steps up to 1 ms, so a histogram_quantile (linear within a bucket) of a 0.3 ms p50
# is off by tens of microseconds, not by the width of a 0.25 ms bucket. Batch uploads take
# 50-300 ms: steps of at most ~1.5x there (100 -> 250 ms steps put an interpolated p50 of 173 ms
# above the client's own 117 ms).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009,
    0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.015, 0.025, 0.035, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5,
)  # fmt: skip


# Event-loop lag (sidserve.looplag): below ~2 ms it is timer resolution; above, the loop was held.
LOOP_LAG_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sidserve_requests_total", "HTTP requests by route template, method and status code.",
            ["endpoint", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "sidserve_request_duration_seconds", "Server-side request handling time by route template.",
            ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "sidserve_event_loop_lag_seconds",
            "How much later than due this worker's event loop woke a timer set every 50 ms: time in which it "
            "served no request (long synchronous work, a GC pass, CPU starvation). Below ~2 ms: timer resolution.",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests_shed = Counter(
            "sidserve_requests_shed_total",
            "Requests answered 503 at once because their route already had its bound of requests in flight "
            "in this process (load shedding; sidserve.admission).",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.in_flight_limit = Gauge(
            "sidserve_in_flight_limit",
            "Each API route's in-flight bound in each process now: SIDSERVE_MAX_IN_FLIGHT, lower while that "
            "process's event loop runs late (adaptive load shedding; sidserve.admission).",
            ["endpoint", "method"], registry=r, multiprocess_mode="liveall",
        )  # fmt: skip
        self.redis_errors = Counter(
            "sidserve_redis_errors_total", "Redis calls that failed (unreachable, timeout, refused).",
            ["operation"], registry=r,
        )  # fmt: skip
        self.items_written = Counter(
            "sidserve_items_written_total", "Items stored by item uploads, by model version and outcome.",
            ["model_version", "status"], registry=r,
        )
        self.feature_lookups = Counter(
            "sidserve_feature_lookups_total", "Item IDs answered by /v1/features, by whether a SID was stored.",
            ["known"], registry=r,
        )  # fmt: skip
        self.sid_cache = Counter(
            "sidserve_sid_cache_lookups_total", "Item IDs of reads answered by the per-process SID cache or Redis.",
            ["result"], registry=r,
        )  # fmt: skip
        # The features route counts on every request: children bound once skip labels()' lock and
        # lookup (1.7 -> 0.5 us per count in-process; 2.5 -> 1.3 us in multiprocess mode).
        self.ids_known, self.ids_unknown = self.feature_lookups.labels("true"), self.feature_lookups.labels("false")
        self.cache_hits, self.cache_misses = self.sid_cache.labels("hit"), self.sid_cache.labels("miss")
        self.notices = Counter(
            "sidserve_update_notices_total",
            "Update notices (sidserve.notices): subscriptions made (each empties the SID cache), times they "
            "were lost (entries then live SIDSERVE_CACHE_TTL_S), and cached items dropped by notices.",
            ["event"], registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "sidserve_model_info", "1 for each loaded model bundle (0 once retired).",
            ["model_version", "levels", "codebook_size"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.active_model = Gauge(
            "sidserve_active_model_info", "1 for the model version served when a request names none.",
            ["model_version"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.retired_keys = Counter(
            "sidserve_retired_keys_deleted_total", "Redis keys deleted by retiring a model version.",
            ["model_version"], registry=r,
        )  # fmt: skip
        self.collision_index = Counter(
            "sidserve_collision_index_assigned_total",
            "Collision indexes k assigned to uploaded items (created, or whose SID changed), by whether "
            "k > 0 (another item already had the same full SID). Collision rate = the true share.",
            ["model_version", "collision"], registry=r,
        )  # fmt: skip

    def close(self) -> None:
        """At this process's exit: drop its per-process gauges (sidserve_in_flight_limit) from the
        multiprocess view, so /metrics of the other workers stops listing a process that is gone."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            mark_process_dead(os.getpid())

    def render(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            _forget_dead_processes(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def _forget_dead_processes(directory: Path) -> None:
    """Drop the per-process gauges of processes that no longer run. A worker that exits cleanly
    drops its own (Metrics.close); one that was killed or crashed cannot, and prometheus-client
    would list its last values on every scrape until the directory is wiped. Pids are checked on
    this host: the directory must not be shared across hosts or PID namespaces (prometheus-client's
    multiprocess mode assumes that too)."""
    for pid in {int(m.group(1)) for f in directory.iterdir() if (m := _LIVE_GAUGE_FILE.fullmatch(f.name))}:
        if not _running(pid):
            mark_process_dead(pid, str(directory))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True
