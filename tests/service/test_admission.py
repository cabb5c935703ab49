"""Load shedding (sidserve.admission): a route with SIDSERVE_MAX_IN_FLIGHT requests in flight answers
the next one 503 at once; other routes and the probes are not held back. Real HTTP, real Redis:
CLIENT PAUSE holds the first request in its Redis call."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi import HTTPException
from service_fixtures import AUTH, serve, service_settings

from sidserve.admission import InFlightLimit
from sidserve.testing import RedisProcess

PAUSE_MS = 1_500
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


def test_in_flight_limit_counts_and_releases() -> None:
    shed: list[int] = []
    limit = InFlightLimit("POST /v1/x", limit=2, retry_after_s=3, on_shed=lambda: shed.append(1))
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

    unbounded = InFlightLimit("POST /v1/x", limit=0, retry_after_s=1, on_shed=lambda: shed.append(1))
    with unbounded, unbounded, unbounded:
        assert unbounded.in_flight == 3
    assert shed == [1]
