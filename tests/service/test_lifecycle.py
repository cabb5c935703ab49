"""Model lifecycle (sidserve.versions) end to end: two real bundles (two model versions) loaded by
real services over real HTTP, real Redis. Each test uses its own key prefix, so its active
version and retirements touch no other test's keys."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.cluster
from service_fixtures import AUTH, LiveService, serve, service_settings

from sidserve.model import BundleError, SidModel
from sidserve.settings import Settings
from sidserve.versions import STALLED_RETIREMENT_S, load_servings
from sidserve_client import SidServeClient

REFRESH_S = 0.2


@pytest.fixture(scope="module")
def models(sid_bundle: Path, sid_bundle_b: Path) -> tuple[SidModel, SidModel]:
    return SidModel.load(sid_bundle), SidModel.load(sid_bundle_b)


@pytest.fixture(scope="module")
def x(sid_bundle_data: tuple[np.ndarray, list[str]]) -> np.ndarray:
    return sid_bundle_data[0][:200]


def _settings(sid_bundle: Path, sid_bundle_b: Path, url: str, prefix: str, **kw: object) -> Settings:
    kw.setdefault("bundles", [sid_bundle, sid_bundle_b])
    return service_settings(None, url, key_prefix=prefix, active_refresh_s=REFRESH_S, **kw)


@pytest.fixture
def prefix() -> str:
    return "lc" + uuid.uuid4().hex[:8]


@pytest.fixture
def pair(sid_bundle: Path, sid_bundle_b: Path, redis_url: str, prefix: str) -> Iterator[LiveService]:
    """A service with both bundles, under a private key prefix."""
    with serve(_settings(sid_bundle, sid_bundle_b, redis_url, prefix)) as service:
        yield service


def _http(service: LiveService, **kw: object) -> httpx.Client:
    return httpx.Client(base_url=service.url, timeout=10, headers=AUTH, **kw)


def _upload(http: httpx.Client, ids: list[str], x: np.ndarray) -> list[dict]:
    r = http.post("/v1/items/batch", json={"items": [{"item_id": i, "embedding": e.tolist()} for i, e in zip(ids, x)]})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _features(http: httpx.Client, ids: list[str], version: str | None = None) -> dict:
    body: dict = {"candidates": ids}
    if version is not None:
        body["version"] = version
    r = http.post("/v1/features", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(condition, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until condition() is true (polled every 10 ms); fails after timeout."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - start


def test_two_versions_upload_writes_both_and_reads_pick_one(
    pair: LiveService, models: tuple[SidModel, SidModel], x: np.ndarray, redis_url: str, prefix: str
) -> None:
    a, b = models
    codes_a, codes_b = a.encode(x), b.encode(x)
    ids = [f"{prefix}-{i}" for i in range(len(x))]
    with _http(pair) as http:
        listing = http.get("/v1/models").json()
        assert [m["model_version"] for m in listing["models"]] == [a.version, b.version]
        assert [m["active"] for m in listing["models"]] == [True, False]
        assert listing["active_version"] == listing["active_version_in_redis"] == a.version  # the first bundle
        assert (listing["models"][1]["levels"], listing["models"][1]["codebook_size"]) == (4, 8)
        assert listing["retired"] == [] and listing["warnings"] == []

        items = _upload(http, ids, x)
        assert [it["sid"] for it in items] == codes_a.tolist()
        assert {it["model_version"] for it in items} == {a.version} and {it["status"] for it in items} == {"created"}
        assert [it["other_versions"] for it in items] == [
            [{"model_version": b.version, "sid": sid, "status": "created"}] for sid in codes_b.tolist()
        ]
        single = http.post("/v1/items", json={"item_id": ids[0], "embedding": x[0].tolist()}).json()
        assert single == {**items[0], "status": "unchanged",
                          "other_versions": [{**items[0]["other_versions"][0], "status": "unchanged"}]}  # fmt: skip

        default = _features(http, ids)
        assert default["model_version"] == a.version and default["candidates"]["sids"] == codes_a.tolist()
        by_b = _features(http, ids, b.version)
        assert by_b["model_version"] == b.version and by_b["candidates"]["sids"] == codes_b.tolist()
        assert by_b["feature_config"]["levels"] == 4 and len(by_b["candidates"]["rows"][0]) == 4
        assert _features(http, ids, a.version)["candidates"]["sids"] == codes_a.tolist()

        item = http.get(f"/v1/items/{ids[5]}", params={"version": b.version}).json()
        assert item == {"item_id": ids[5], "sid": codes_b[5].tolist(), "model_version": b.version}
        assert http.get(f"/v1/items/{ids[5]}").json()["model_version"] == a.version

        with SidServeClient(pair.url, api_key=pair.api_key) as client:  # the Python client's version=
            [written] = client.upsert_items(ids[:1], x[:1])  # re-sent: unchanged under both versions
            assert (written.model_version, written.sid, written.status) == (a.version, tuple(codes_a[0]), "unchanged")
            assert [(o.model_version, o.sid, o.status) for o in written.other_versions] == [
                (b.version, tuple(codes_b[0]), "unchanged")
            ]
            assert client.features(ids[:3], version=b.version).candidates.sids == [tuple(c) for c in codes_b[:3]]
            assert client.get_item(ids[5], version=b.version).sid == tuple(codes_b[5])
            assert client.get_item(ids[5]).model_version == a.version

        metrics = http.get("/metrics").text  # uploads are counted under each version they wrote
        for version in (a.version, b.version):
            assert f'sidserve_items_written_total{{model_version="{version}",status="created"}}' in metrics

        ready = http.get("/readyz").json()
        assert ready["model_version"] == a.version and ready["loaded_versions"] == [a.version, b.version]
        assert ready["active_version_in_redis"] == a.version and ready["warnings"] == []
    assert redis.Redis.from_url(redis_url).hget(f"{prefix}:models", "active") == a.version.encode()


def test_unknown_or_malformed_versions_are_422_naming_the_field(
    pair: LiveService, models: tuple[SidModel, SidModel]
) -> None:
    with _http(pair) as http:
        cases = [
            (http.post("/v1/features", json={"candidates": ["a"], "version": "0000000000000000"}), ["body", "version"]),
            (http.get("/v1/items/a", params={"version": "0000000000000000"}), ["query", "version"]),
            (http.put("/v1/models/active", json={"version": "0000000000000000"}), ["body", "version"]),
            (http.post("/v1/features", json={"candidates": ["a"], "version": "a b*"}), ["body", "version"]),
            (http.put("/v1/models/active", json={}), ["body", "version"]),
        ]
        for r, loc in cases:
            assert r.status_code == 422, r.text
            [error] = r.json()["detail"]
            assert error["loc"] == loc, error
        assert "is not loaded here" in cases[0][0].json()["detail"][0]["msg"]
        assert http.delete("/v1/models/0000000000000000").status_code == 404  # nowhere: nothing to retire
        assert http.delete("/v1/models/a*b").status_code == 422  # never a SCAN pattern


def test_model_routes_need_the_write_key(pair: LiveService) -> None:
    with httpx.Client(base_url=pair.url) as http:
        for method, path, body in (("GET", "/v1/models", None), ("PUT", "/v1/models/active", {"version": "x"}),
                                   ("DELETE", "/v1/models/x", None)):  # fmt: skip
            assert http.request(method, path, json=body).status_code == 401
            assert http.request(method, path, json=body, headers={"authorization": "Bearer wrong-key-000000000000"}).status_code == 403


def test_switch_is_atomic_and_reaches_another_replica_within_the_refresh(
    sid_bundle: Path, sid_bundle_b: Path, redis_url: str, prefix: str, models: tuple[SidModel, SidModel],
    x: np.ndarray,
) -> None:  # fmt: skip
    a, b = models
    expected = {a.version: a.encode(x).tolist(), b.version: b.encode(x).tolist()}
    ids = [f"{prefix}-{i}" for i in range(len(x))]
    settings = _settings(sid_bundle, sid_bundle_b, redis_url, prefix)
    with serve(settings) as one, serve(settings) as two, _http(one) as h1, _http(two) as h2:
        _upload(h1, ids, x)
        assert _features(h2, ids)["model_version"] == a.version
        r = h1.put("/v1/models/active", json={"version": b.version})
        assert r.status_code == 200 and r.json()["active_version"] == r.json()["active_version_in_redis"] == b.version
        switched_at = time.monotonic()
        assert _features(h1, ids)["model_version"] == b.version  # the replica that switched: at once
        seen = []

        def two_switched() -> bool:
            answer = _features(h2, ids)
            seen.append(answer)
            return answer["model_version"] == b.version

        _wait(two_switched)
        assert time.monotonic() - switched_at < REFRESH_S + 1.0  # the other replica: within its refresh
        # No answer mixed versions: each one's SIDs are all of the version it names.
        assert all(ans["candidates"]["sids"] == expected[ans["model_version"]] for ans in seen)
        assert redis.Redis.from_url(redis_url).hget(f"{prefix}:models", "active") == b.version.encode()


def test_a_replica_without_the_active_version_keeps_serving_its_own(
    sid_bundle: Path, sid_bundle_b: Path, redis_url: str, prefix: str, models: tuple[SidModel, SidModel],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    a, b = models
    with serve(_settings(sid_bundle, sid_bundle_b, redis_url, prefix)) as both, _http(both) as h_both:
        with serve(_settings(sid_bundle, sid_bundle_b, redis_url, prefix, bundles=[sid_bundle])) as old, _http(old) as h_old:
            with caplog.at_level(logging.WARNING, logger="sidserve"):
                assert h_both.put("/v1/models/active", json={"version": b.version}).status_code == 200
                _wait(lambda: h_old.get("/readyz").json()["active_version_in_redis"] == b.version)
            ready = h_old.get("/readyz")
            assert ready.status_code == 200 and ready.json()["model_version"] == a.version
            assert b.version in ready.json()["warnings"][0] and "has not loaded" in ready.json()["warnings"][0]
            assert _features(h_old, ["x"])["model_version"] == a.version
            assert any("has not loaded" in r.getMessage() and b.version in r.getMessage() for r in caplog.records)
            # Switching back clears it.
            assert h_both.put("/v1/models/active", json={"version": a.version}).status_code == 200
            _wait(lambda: h_old.get("/readyz").json()["warnings"] == [])


def _keys(client: redis.Redis | redis.cluster.RedisCluster, pattern: str) -> set[bytes]:
    if isinstance(client, redis.cluster.RedisCluster):
        return set(client.scan_iter(match=pattern, target_nodes=redis.cluster.RedisCluster.PRIMARIES))
    return set(client.scan_iter(match=pattern))


@pytest.mark.parametrize("backend", ["single", "cluster"])
def test_retire_deletes_exactly_that_versions_keys(
    backend: str, request: pytest.FixtureRequest, sid_bundle: Path, sid_bundle_b: Path, prefix: str,
    models: tuple[SidModel, SidModel], x: np.ndarray,
) -> None:  # fmt: skip
    a, b = models
    cluster = backend == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    client = redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    ids = [f"{prefix}-{i}" for i in range(len(x))]
    settings = _settings(sid_bundle, sid_bundle_b, url, prefix, redis_cluster=cluster, retire_batch_keys=20)
    bystander = _settings(sid_bundle, sid_bundle_b, url, prefix + "x", redis_cluster=cluster)  # another prefix
    with serve(settings) as one, serve(settings) as two, serve(bystander) as other:
        with _http(one) as h1, _http(two) as h2, _http(other) as h3:
            _upload(h1, ids, x)
            _upload(h3, ids, x)
            r = h1.delete(f"/v1/models/{a.version}")
            assert r.status_code == 409 and "active" in r.json()["detail"]
            before = _keys(client, f"{prefix}*")
            b_keys = _keys(client, f"{prefix}:{{{b.version}:*") | {f"{prefix}:{b.version}:layout".encode()}
            assert len(b_keys) > 16

            r = h1.delete(f"/v1/models/{b.version}")
            assert r.status_code == 202 and r.json()["state"] == "draining", r.text
            # Not served any more: here at once, on the other replica after its refresh.
            r = h1.post("/v1/features", json={"candidates": ids[:3], "version": b.version})
            assert r.status_code == 422 and "retired" in r.json()["detail"][0]["msg"]
            _wait(lambda: h2.post("/v1/features", json={"candidates": ids[:3], "version": b.version}).status_code == 422)
            assert "other_versions" not in _upload(h2, ids[:5], x[:5])[0]  # nor written
            assert h1.put("/v1/models/active", json={"version": b.version}).status_code == 422

            _wait(lambda: h2.get("/v1/models").json()["retired"][0]["state"] == "done", timeout=30)
            [retired] = h2.get("/v1/models").json()["retired"]  # every replica sees the progress
            assert retired["model_version"] == b.version and retired["keys_deleted"] == len(b_keys)
            assert [m["model_version"] for m in h2.get("/v1/models").json()["models"]] == [a.version]
            metrics = h1.get("/metrics").text
            assert f'sidserve_retired_keys_deleted_total{{model_version="{b.version}"}} {float(len(b_keys))}' in metrics

            assert _keys(client, f"{prefix}*") == before - b_keys  # exactly B's keys went
            assert _keys(client, f"{prefix}:{{{b.version}:*") == set()
            assert _keys(client, f"{prefix}x:{{{b.version}:*")  # the other prefix keeps its copy of B
            assert _features(h1, ids)["candidates"]["known"] == [True] * len(ids)  # A is intact
            assert _features(h3, ids, b.version)["candidates"]["known"] == [True] * len(ids)


def test_a_stalled_retirement_is_taken_over_by_a_running_replica(
    sid_bundle: Path, sid_bundle_b: Path, redis_url: str, prefix: str, models: tuple[SidModel, SidModel],
    x: np.ndarray,
) -> None:
    """The process deleting a retired version died mid-way (its progress stopped): another replica
    resumes the deletion, and only B's keys go."""
    a, b = models
    client = redis.Redis.from_url(redis_url)
    ids = [f"{prefix}-{i}" for i in range(len(x))]
    settings = _settings(sid_bundle, sid_bundle_b, redis_url, prefix, retire_batch_keys=20)
    with serve(settings) as first, _http(first) as h:
        _upload(h, ids, x)  # under both versions
    a_keys = _keys(client, f"{prefix}:{{{a.version}:*")
    assert _keys(client, f"{prefix}:{{{b.version}:*") and a_keys
    stalled_at = (datetime.now(UTC) - timedelta(seconds=2 * STALLED_RETIREMENT_S)).isoformat(timespec="seconds")
    record = {"state": "deleting", "keys_deleted": 3, "requested_at": stalled_at, "updated_at": stalled_at, "error": None}
    client.hset(f"{prefix}:models", f"retired:{b.version}", json.dumps(record))

    with serve(settings) as second, _http(second) as h:
        _wait(lambda: h.get("/v1/models").json()["retired"][0]["state"] == "done", timeout=30)
        [retired] = h.get("/v1/models").json()["retired"]
        assert retired["model_version"] == b.version and retired["keys_deleted"] > 3
        assert _features(h, ids)["candidates"]["known"] == [True] * len(ids)  # A is served as before
    assert _keys(client, f"{prefix}:{{{b.version}:*") == set() and not client.exists(f"{prefix}:{b.version}:layout")
    assert _keys(client, f"{prefix}:{{{a.version}:*") == a_keys
    assert not client.exists(f"{prefix}:retiring:{b.version}")  # the lease is released when done


def test_a_restarted_replica_does_not_serve_a_retired_version(
    sid_bundle: Path, sid_bundle_b: Path, redis_url: str, prefix: str, models: tuple[SidModel, SidModel]
) -> None:
    a, b = models
    settings = _settings(sid_bundle, sid_bundle_b, redis_url, prefix)
    with serve(settings) as one, _http(one) as http:
        assert http.delete(f"/v1/models/{b.version}").status_code == 202
    with serve(settings) as again, _http(again) as http:  # still configured with both bundles
        listing = http.get("/v1/models").json()
        assert [m["model_version"] for m in listing["models"]] == [a.version]
        assert [r["model_version"] for r in listing["retired"]] == [b.version]
        assert http.post("/v1/features", json={"candidates": ["x"], "version": b.version}).status_code == 422
    # No active version recorded and the first configured bundle retired: the next one is the default.
    client = redis.Redis.from_url(redis_url)
    client.hdel(f"{prefix}:models", "active")
    with serve(_settings(sid_bundle, sid_bundle_b, redis_url, prefix, bundles=[sid_bundle_b, sid_bundle])) as third:
        with _http(third) as http:
            assert http.get("/v1/models").json()["active_version"] == a.version
            _wait(lambda: client.hget(f"{prefix}:models", "active") == a.version.encode())


def test_bundles_setting_and_incompatible_bundles(sid_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDSERVE_BUNDLES", "/a, /b c")
    assert Settings().bundle_paths == [Path("/a"), Path("/b c")]
    monkeypatch.setenv("SIDSERVE_BUNDLES", '["/b", "/c"]')
    monkeypatch.setenv("SIDSERVE_BUNDLE", "/a")
    assert Settings().bundle_paths == [Path("/a"), Path("/b"), Path("/c")]
    monkeypatch.delenv("SIDSERVE_BUNDLE")
    monkeypatch.delenv("SIDSERVE_BUNDLES")
    with pytest.raises(BundleError, match="is already loaded"):
        load_servings(service_settings(sid_bundle, "redis://127.0.0.1:1/0", bundles=[sid_bundle]), None, print)  # type: ignore[arg-type]


def test_redis_down_at_startup_serves_the_first_bundle(
    sid_bundle: Path, sid_bundle_b: Path, redis_process, models: tuple[SidModel, SidModel], prefix: str  # type: ignore[no-untyped-def]
) -> None:
    a, b = models
    redis_process.stop()
    with serve(_settings(sid_bundle, sid_bundle_b, redis_process.url, prefix)) as service, _http(service) as http:
        listing = http.get("/v1/models").json()
        assert listing["active_version"] == a.version and "cannot read the active model version" in listing["warnings"][0]
        _wait(lambda: any("update notices not received" in w for w in http.get("/v1/models").json()["warnings"]))
        redis_process.start()
        redis.Redis.from_url(redis_process.url).hset(f"{prefix}:models", "active", b.version)
        _wait(lambda: http.get("/v1/models").json()["active_version"] == b.version)
        _wait(lambda: http.get("/v1/models").json()["warnings"] == [])  # the notices' subscription recovers too
