"""sidserve_client against the live service (real HTTP, real Redis): sync and async."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from service_fixtures import TEST_API_KEY, LiveService

from sidserve.features import FeatureConfig, feature_rows
from sidserve.schemas import MAX_BATCH_ITEMS as SERVER_MAX_BATCH_ITEMS
from sidserve.testing import free_port
from sidserve_client import (
    MAX_BATCH_ITEMS,
    AsyncSidServeClient,
    InvalidRequest,
    ItemNotFound,
    RetryPolicy,
    ServiceUnavailable,
    SidServeClient,
)


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


def test_batch_limit_matches_server() -> None:
    assert MAX_BATCH_ITEMS == SERVER_MAX_BATCH_ITEMS


def test_upsert_items_chunks(live_service: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    requests: list[httpx.Request] = []
    http = httpx.Client(base_url=live_service.url, event_hooks={"request": [requests.append]})
    ids = _ids(25)
    with SidServeClient(live_service.url, batch_size=10, http=http, api_key=TEST_API_KEY) as client:
        written = client.upsert_items(ids, x[:25])
        assert [w.item_id for w in written] == ids
        assert [r.url.path for r in requests] == ["/v1/items/batch"] * 3
        assert client.upsert_items([], np.zeros((0, 32))) == []
        with pytest.raises(ValueError, match="embeddings must be"):
            client.upsert_items(ids[:2], x[:3])


def test_async_client(
    live_service: LiveService, sid_bundle: object, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    x, _ = sid_bundle_data
    ids = _ids(30)
    direct = ort.InferenceSession(str(sid_bundle / "encoder.onnx")).run(None, {"embeddings": x[:30]})[0]

    async def main() -> None:
        async with AsyncSidServeClient(live_service.url, batch_size=16, api_key=TEST_API_KEY) as client:
            ready = await client.ready()
            assert ready.ready and ready.input_dim == 32
            written = await client.upsert_items(ids, x[:30])
            assert np.array_equal(np.array([w.sid for w in written]), direct)
            assert (await client.upsert_item(ids[0], x[0])).status == "unchanged"
            assert (await client.get_item(ids[5])).sid == tuple(direct[5])
            # Concurrent feature fetches, as a ranking server would issue them.
            answers = await asyncio.gather(*[client.features(ids[i : i + 5], ids[:2]) for i in range(0, 30, 5)])
            config = FeatureConfig(**{k: v for k, v in vars(answers[0].feature_config).items() if k != "num_tokens"})
            for i, f in zip(range(0, 30, 5), answers):
                assert np.array_equal(f.candidates.rows, feature_rows(direct[i : i + 5], config))
            with pytest.raises(ItemNotFound):
                await client.get_item("never-stored-" + ids[0])
            with pytest.raises(InvalidRequest, match="D=32"):
                await client.upsert_item("bad", x[0][:3])

    asyncio.run(main())


def test_connection_errors_are_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    policy = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.1)
    requests: list[httpx.Request] = []
    http = httpx.Client(base_url=url, event_hooks={"request": [requests.append]})
    with SidServeClient(url, retry=policy, http=http) as client:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="ConnectError") as e:
            client.features(["a"])
        assert e.value.status is None and len(requests) == 3
        assert 0.05 <= time.monotonic() - start < 2
        readiness = client.ready()
        assert not readiness.ready and "ConnectError" in readiness.detail

    async def main() -> None:
        async with AsyncSidServeClient(url, retry=policy) as client:
            with pytest.raises(ServiceUnavailable):
                await client.get_item("a")

    asyncio.run(main())


def test_retry_policy_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.01, max_backoff=2.0)
    assert 0.005 <= policy.delay(0, None) <= 0.01
    assert policy.delay(0, "1") >= 1.0
    assert RetryPolicy(max_backoff=0.5).delay(0, "30") <= 0.5  # capped


def test_a_deadline_bounds_the_whole_call() -> None:
    """RetryPolicy(deadline=...): no retry waits past it (Retry-After included), and an attempt's
    HTTP timeout is cut to the time left, so a server that never answers costs the deadline only."""
    policy = RetryPolicy(attempts=100, backoff=0.01, max_backoff=2.0, deadline=0.3)
    ends = policy.ends()
    assert ends is not None and policy.wait(0, "1", ends) is None  # a 1 s Retry-After does not fit
    assert 0.005 <= policy.wait(0, None, ends) <= 0.01
    assert RetryPolicy(attempts=2).wait(1, None, None) is None and RetryPolicy().ends() is None

    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: retried until the deadline
    requests: list[httpx.Request] = []
    http = httpx.Client(base_url=refused, event_hooks={"request": [requests.append]})
    with SidServeClient(refused, retry=policy, http=http) as client:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="ConnectError"):
            client.features(["a"])
        assert 0.15 <= time.monotonic() - start < 0.6 and 3 <= len(requests) < 100

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with SidServeClient(url, retry=policy, timeout=5.0) as client:
            start = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="Timeout"):
                client.features(["a"])
            assert time.monotonic() - start < 1.0  # the deadline, not the 5 s timeout

        async def main() -> float:
            async with AsyncSidServeClient(url, retry=policy, timeout=5.0) as client:
                start = time.monotonic()
                with pytest.raises(ServiceUnavailable, match="Timeout"):
                    await client.features(["a"])
                return time.monotonic() - start

        assert asyncio.run(main()) < 1.0
