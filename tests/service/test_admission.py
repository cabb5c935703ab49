"""Load shedding (sidserve.admission): a route with its bound of requests in flight answers the next
one 503 at once; other routes and the probes are not held back; the bounds fall while the event loop
runs late. Real HTTP, real Redis: CLIENT PAUSE holds the first request in its Redis call."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi import HTTPException
from service_fixtures import AUTH, serve, service_settings

from sidserve.admission import SUSTAINED, Admission, InFlightLimit
from sidserve.testing import RedisProcess

PAUSE_MS = 1_500
FEATURES_BOUND = re.compile(r'^sidserve_in_flight_limit\{endpoint="/v1/features",method="POST"\} (\S+)$', re.M)
HELD_AFTER_S = 0.3  # the first request is in its Redis call by then


def test_a_route_at_its_bound_sheds_at_once(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_process: RedisProcess
) -> None:
    x, ids = sid_bundle_data
    # No SID cache: every features call goes to Redis. A reply timeout beyond the pause.
    settings = service_settings(
        sid_bundle, redis_process.url, max_in_flight=1, cache_ttl_s=0, cache_max_age_s=0, redis_socket_timeout=5.0
    )
    with serve(settings) as service, httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as http, \
            ThreadPoolExecutor(2) as pool:  # fmt: skip
        items = [{"item_id": i, "embedding": v.tolist()} for i, v in zip(ids[:2], x[:2], strict=True)]
        assert http.post("/v1/items/batch", json={"items": items}).status_code == 200

        redis.Redis.from_url(redis_process.url).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        # One request held in each of two routes (a DirectRoute and a plain GuardedRoute): each
        # route has its own bound, so the second is admitted although the first is in flight.
        held_features = pool.submit(http.post, "/v1/features", json={"candidates": [ids[0]]})
        held_get = pool.submit(http.get, f"/v1/items/{ids[1]}")
        time.sleep(HELD_AFTER_S)

        start = time.monotonic()
        shed = {
            "POST /v1/features": http.post("/v1/features", json={"candidates": [ids[1]]}),
            "GET /v1/items/{item_id:path}": http.get(f"/v1/items/{ids[0]}"),
        }
        elapsed = time.monotonic() - start
        assert not held_features.done() and not held_get.done(), "the first requests should still be held"
        for route, answer in shed.items():
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == str(settings.retry_after_s)
            detail = answer.json()["detail"]
            assert detail.startswith(f"overloaded: {route} already has 1 requests in flight"), detail
            assert "SIDSERVE_MAX_IN_FLIGHT" in detail
        assert elapsed < PAUSE_MS / 1000 / 2, f"the refusals took {elapsed:.2f} s: they waited"
        assert http.get("/healthz").status_code == 200  # probes are never bounded

        # The held requests complete once Redis answers, and free their slots.
        assert held_features.result().status_code == 200
        assert held_features.result().json()["candidates"]["known"] == [True]
        assert held_get.result().status_code == 200
        assert http.post("/v1/features", json={"candidates": [ids[1]]}).status_code == 200
        assert http.get(f"/v1/items/{ids[0]}").status_code == 200
        metrics = http.get("/metrics").text
        assert 'sidserve_requests_shed_total{endpoint="/v1/features"} 1.0' in metrics
        assert 'sidserve_requests_shed_total{endpoint="/v1/items/{item_id:path}"} 1.0' in metrics


def _features_bound(http: httpx.Client) -> float:
    return float(FEATURES_BOUND.findall(http.get("/metrics").text)[0])


def test_a_late_event_loop_lowers_the_bounds_until_it_runs_on_time(sid_bundle: Path, redis_process: RedisProcess) -> None:
    settings = service_settings(sid_bundle, redis_process.url)  # default ceiling 32, lag target 5 ms
    with serve(settings) as service, httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as http:
        assert _features_bound(http) == settings.max_in_flight == 32
        for _ in range(8):  # synchronous work holds the server's loop for 100 ms of every ~110 ms
            service.loop.call_soon_threadsafe(time.sleep, 0.1)
            time.sleep(0.11)
        lowered = _features_bound(http)
        # Each 50 ms sample is due within a hold: ~8 late in a row, the bound down a quarter from the
        # SUSTAINED-th on (to ~7); a sample on time in a gap would only slow the fall.
        assert 1 <= lowered <= 24, lowered
        answer = http.post("/v1/features", json={"candidates": ["never-stored"]})  # below the bound: served
        assert answer.status_code == 200 and answer.json()["candidates"]["known"] == [False]

        deadline = time.monotonic() + 10  # back by one per on-time sample: ~1.7 s from 1 to 32
        while _features_bound(http) < 32 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _features_bound(http) == 32


def test_in_flight_limit_counts_and_releases() -> None:
    shed: list[int] = []
    limit = InFlightLimit("POST", "/v1/x", ceiling=2, retry_after_s=3, on_shed=lambda: shed.append(1))
    with limit, limit:
        assert limit.in_flight == 2
        with pytest.raises(HTTPException) as refused, limit:
            pass
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "3"}
        assert limit.in_flight == 2 and shed == [1]  # a refusal takes no slot
    assert limit.in_flight == 0
    with pytest.raises(ValueError), limit:  # a failing handler gives its slot back
        raise ValueError("handler failed")
    assert limit.in_flight == 0

    unbounded = InFlightLimit("POST", "/v1/x", ceiling=0, retry_after_s=1, on_shed=lambda: shed.append(1))
    with unbounded, unbounded, unbounded:
        assert unbounded.in_flight == 3
    assert shed == [1]


def test_bounds_fall_while_the_loop_stays_late_and_recover_one_by_one() -> None:
    changes: list[tuple[str, int]] = []
    admission = Admission(
        32, lag_target_s=0.010, retry_after_s=1, on_limit=lambda bound: changes.append((bound.route, bound.limit))
    )
    features, items = admission.bound("POST", "/v1/features"), admission.bound("GET", "/v1/items/{id}")
    assert (features.limit, items.limit) == (32, 32) and changes == [("POST /v1/features", 32), ("GET /v1/items/{id}", 32)]

    # A stall and the burst behind it: fewer than SUSTAINED late samples in a row move nothing.
    for lag in [0.200, 0.030, 0.010, 0.030, 0.030, 0.030, 0.001]:  # 10 ms is on time (the target)
        admission.observe_loop_lag(lag)
    assert features.limit == 32 and len(changes) == 2  # no change, no report

    bounds = []
    for _ in range(SUSTAINED - 1 + 12):
        admission.observe_loop_lag(0.030)
        bounds.append(features.limit)
    # From the SUSTAINED-th late sample in a row, a quarter off each time, never below 1.
    assert bounds == [32] * (SUSTAINED - 1) + [24, 18, 13, 9, 6, 4, 3, 2, 1, 1, 1, 1]
    assert items.limit == 1 and changes[-1] == ("GET /v1/items/{id}", 1)

    # Below its bound a lowered route still admits; at it, it refuses with the lowered bound named.
    with features:
        with pytest.raises(HTTPException) as refused, features:
            pass
    detail = refused.value.detail
    assert detail.startswith("overloaded: POST /v1/features already has 1 requests in flight"), detail
    assert "SIDSERVE_MAX_IN_FLIGHT = 32, is down to 1" in detail and "SIDSERVE_SHED_LOOP_LAG_MS" in detail

    for _ in range(SUSTAINED - 1 + 40):
        admission.observe_loop_lag(0.001)
    assert features.limit == items.limit == 32  # one more per sample on time, up to the ceiling
    assert [n for r, n in changes if r == "POST /v1/features"][-32:] == list(range(1, 33))


def test_fixed_bounds_when_adaptation_is_off_or_unbounded() -> None:
    fixed = Admission(8, lag_target_s=0, retry_after_s=1)  # SIDSERVE_SHED_LOOP_LAG_MS=0
    unbounded = Admission(0, lag_target_s=0.010, retry_after_s=1)  # SIDSERVE_MAX_IN_FLIGHT=0
    limits = [fixed.bound("POST", "/v1/features"), unbounded.bound("POST", "/v1/features")]
    for admission in (fixed, unbounded):
        admission.observe_loop_lag(1.0)
    assert [limit.limit for limit in limits] == [8, 0]
