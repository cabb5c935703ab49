"""Benchmark aids and hot-path details: the no-op endpoint, sub-millisecond latency buckets."""

from __future__ import annotations

import httpx
from service_fixtures import AUTH, LiveService

from sidserve.metrics import LATENCY_BUCKETS


def test_noop_takes_the_features_body_and_touches_nothing(live_service: LiveService) -> None:
    with httpx.Client(base_url=live_service.url, timeout=5, headers=AUTH) as http:
        r = http.post("/v1/_noop", json={"candidates": ["a", "b"], "history": ["c"]})
        assert r.status_code == 200 and r.json() == {"ids": 3}
        # Same validation as /v1/features.
        assert http.post("/v1/_noop", json={"candidates": ["a"], "extra": 1}).status_code == 422
        assert http.post("/v1/_noop", json={"candidates": [""]}).status_code == 422
        spec = http.get("/openapi.json").json()
        assert "/v1/_noop" in spec["paths"]  # `python -m loadtest bench` looks for it there
        text = http.get("/metrics").text
        assert 'sidserve_request_duration_seconds_bucket{endpoint="/v1/_noop",le="0.0002",method="POST"}' in text


def test_latency_buckets_resolve_sub_millisecond() -> None:
    below_1ms = [b for b in LATENCY_BUCKETS if b < 0.001]
    assert len(below_1ms) >= 10 and min(LATENCY_BUCKETS) <= 0.0001
    assert max(b - a for a, b in zip(below_1ms, below_1ms[1:], strict=False)) <= 0.0001 + 1e-12
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
