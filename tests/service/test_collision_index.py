"""TIGER's collision index (SIDSERVE_COLLISION_INDEX) through the live service: real bundles, real
HTTP, real Redis, a private key prefix per test (the layout of a version written with k differs)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import AUTH, LiveService, serve, service_settings

from sidserve.model import SidModel
from sidserve_client import SidServeClient


@pytest.fixture(scope="module")
def x(sid_bundle_data: tuple[np.ndarray, list[str]]) -> np.ndarray:
    return sid_bundle_data[0]


def _prefix() -> str:
    return "ci" + uuid.uuid4().hex[:8]


def _upload(http: httpx.Client, ids: list[str], x: np.ndarray) -> list[dict]:
    r = http.post("/v1/items/batch", json={"items": [{"item_id": i, "embedding": e.tolist()} for i, e in zip(ids, x)]})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_k_counts_items_per_sid_and_is_served_beside_it(
    sid_bundle: Path, sid_bundle_b: Path, redis_url: str, x: np.ndarray
) -> None:
    a, b = SidModel.load(sid_bundle), SidModel.load(sid_bundle_b)
    sid0 = a.encode(x[:1])[0]
    other = next(i for i in range(1, len(x)) if (a.encode(x[i : i + 1])[0] != sid0).any())
    settings = service_settings(sid_bundle, redis_url, bundles=[sid_bundle_b], key_prefix=_prefix(), collision_index=True)
    with serve(settings) as service, httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as http:
        # Exact duplicate content -> the same SID under both models -> k = 0, 1, 2 under each.
        items = _upload(http, ["d0", "d1", "o", "d2"], x[[0, 0, other, 0]])
        assert [it["collision_index"] for it in items] == [0, 1, 0, 2]
        assert [it["other_versions"][0]["collision_index"] for it in items][:2] == [0, 1]
        assert items[3]["other_versions"][0]["collision_index"] == 2
        # Re-sent unchanged: the same k (stable), single or batch.
        again = _upload(http, ["d2", "d0"], x[[0, 0]])
        assert [(it["status"], it["collision_index"]) for it in again] == [("unchanged", 2), ("unchanged", 0)]
        single = http.post("/v1/items", json={"item_id": "d1", "embedding": x[0].tolist()}).json()
        assert (single["status"], single["collision_index"]) == ("unchanged", 1)
        # New content with another SID takes that SID's next k.
        moved = http.post("/v1/items", json={"item_id": "d1", "embedding": x[other].tolist()}).json()
        assert (moved["status"], moved["collision_index"]) == ("updated", 1)

        f = http.post("/v1/features", json={"candidates": ["d0", "nope", "d2"], "history": ["d1"]}).json()
        assert f["candidates"]["collision_index"] == [0, None, 2] and f["history"]["collision_index"] == [1]
        f = http.post("/v1/features", json={"candidates": ["d2"], "version": b.version}).json()
        assert f["candidates"]["collision_index"] == [2]
        assert http.get("/v1/items/d2").json()["collision_index"] == 2
        with SidServeClient(service.url, api_key=service.api_key) as client:
            assert client.features(["d0", "nope", "d2"]).candidates.collision_index == [0, None, 2]
            assert client.get_item("d2", version=b.version).collision_index == 2
            assert client.upsert_item("d0", x[0]).collision_index == 0
        assert http.get("/readyz").json()["collision_index"] is True
        assert http.get("/v1/models").json()["collision_index"] is True
        metrics = http.get("/metrics").text
        # Under model a: 5 k's assigned (d0, d1, o, d2, then d1 again), 3 of them > 0.
        assert f'sidserve_collision_index_assigned_total{{collision="true",model_version="{a.version}"}} 3.0' in metrics
        assert f'sidserve_collision_index_assigned_total{{collision="false",model_version="{a.version}"}} 2.0' in metrics


def test_concurrent_creates_with_one_sid_get_distinct_k(sid_bundle: Path, redis_url: str, x: np.ndarray) -> None:
    settings = service_settings(sid_bundle, redis_url, key_prefix=_prefix(), collision_index=True)
    with serve(settings) as service:

        def create(worker: int) -> list[int]:
            with httpx.Client(base_url=service.url, headers=AUTH, timeout=10) as http:
                ks = []
                for i in range(10):
                    body = {"item_id": f"w{worker}-{i}", "embedding": x[3].tolist()}
                    ks.append(http.post("/v1/items", json=body).json()["collision_index"])
                ks += [it["collision_index"] for it in _upload(http, [f"w{worker}-b{j}" for j in range(5)], x[[3] * 5])]
                return ks

        with ThreadPoolExecutor(8) as pool:
            ks = [k for part in pool.map(create, range(8)) for k in part]
    assert sorted(ks) == list(range(8 * 15))  # distinct, and dense on a single Redis


def test_off_by_default(live_service: LiveService, x: np.ndarray) -> None:
    with httpx.Client(base_url=live_service.url, headers=AUTH, timeout=10) as http:
        [item] = _upload(http, ["ci-off-" + uuid.uuid4().hex[:6]], x[:1])
        assert set(item) == {"item_id", "sid", "model_version", "status"}  # nor other_versions: one bundle
        assert "collision_index" not in http.get(f"/v1/items/{item['item_id']}").json()
        f = http.post("/v1/features", json={"candidates": [item["item_id"]]}).json()
        assert set(f["candidates"]) == {"known", "sids", "rows"}
        assert http.get("/readyz").json()["collision_index"] is False
