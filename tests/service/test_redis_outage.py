"""Redis going away and coming back, with real processes: the service answers 503 + Retry-After
quickly while Redis is down, /readyz turns 503, and it recovers by itself when Redis returns on
the same port (no service restart)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
from service_fixtures import AUTH, TEST_API_KEY, serve, service_settings

from sidserve.testing import RedisProcess
from sidserve_client import RetryPolicy, ServiceUnavailable, SidServeClient


def test_redis_down_then_back(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_process: RedisProcess
) -> None:
    x, _ = sid_bundle_data
    with serve(service_settings(sid_bundle, redis_process.url)) as service, httpx.Client(
        base_url=service.url, timeout=10, headers=AUTH
    ) as http:
        item = {"item_id": "before", "embedding": x[0].tolist()}
        assert http.post("/v1/items", json=item).status_code == 200
        assert http.get("/readyz").status_code == 200

        redis_process.stop()
        calls = {
            "features": lambda: http.post("/v1/features", json={"candidates": ["before"]}),
            "upsert": lambda: http.post("/v1/items", json=item),
            "batch": lambda: http.post("/v1/items/batch", json={"items": [item]}),
            "get": lambda: http.get("/v1/items/before"),
            "readyz": lambda: http.get("/readyz"),
        }
        for name, call in calls.items():
            start = time.monotonic()
            r = call()
            elapsed = time.monotonic() - start
            assert r.status_code == 503, (name, r.text)
            assert r.headers["retry-after"] == "1"
            assert "Redis unavailable" in r.json()["detail"], r.text
            assert elapsed < 2.0, f"{name} took {elapsed:.2f}s to fail"
        assert http.get("/healthz").status_code == 200  # alive, just not ready
        assert 'sidserve_redis_errors_total{operation="read"}' in http.get("/metrics").text

        # The client retries 503s, then surfaces the server's message.
        policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05)
        with SidServeClient(service.url, retry=policy, api_key=TEST_API_KEY) as client:
            try:
                client.features(["before"])
                raise AssertionError("expected ServiceUnavailable")
            except ServiceUnavailable as e:
                assert e.status == 503 and "Redis unavailable" in e.detail

        redis_process.start()  # same port, empty data (no persistence in tests)
        assert http.get("/readyz").status_code == 200
        assert http.post("/v1/items", json=item).json()["status"] == "created"
        body = http.post("/v1/features", json={"candidates": ["before"]}).json()
        assert body["candidates"]["known"] == [True]


def test_client_retries_until_redis_returns(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_process: RedisProcess
) -> None:
    x, _ = sid_bundle_data
    with serve(service_settings(sid_bundle, redis_process.url)) as service:
        redis_process.stop()
        restart = threading.Timer(0.5, redis_process.start)
        restart.start()
        # Retry-After is 1 s: the client waits it out (max_backoff 1.5 s) and succeeds.
        policy = RetryPolicy(attempts=5, backoff=0.05, max_backoff=1.5)
        with SidServeClient(service.url, retry=policy, api_key=TEST_API_KEY) as client:
            assert client.upsert_item("late", x[1]).status == "created"
        restart.join()


def test_starts_without_redis_and_becomes_ready_when_it_appears(sid_bundle: Path, tmp_path: Path) -> None:
    redis_later = RedisProcess(tmp_path)  # port chosen, server not started yet
    with serve(service_settings(sid_bundle, redis_later.url)) as service, httpx.Client(base_url=service.url) as http:
        r = http.get("/readyz")
        assert r.status_code == 503 and "Redis unavailable" in r.json()["detail"]
        redis_later.start()
        try:
            assert http.get("/readyz").status_code == 200
        finally:
            redis_later.stop()
