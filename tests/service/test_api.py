"""End to end: the session's trained bundle -> service under uvicorn -> real HTTP (client and raw
httpx) -> real Redis. SIDs must equal onnxruntime run directly on the bundle, feature rows must
equal feature_rows on those SIDs. The tests taking `live_service` run twice: against a single
Redis ([single]) and against a 3-master Redis Cluster ([cluster], SIDSERVE_REDIS_CLUSTER)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import redis
import redis.cluster
from service_fixtures import AUTH, TEST_API_KEY, LiveService, serve, service_settings

from sidserve.features import FeatureConfig, Parameterization, feature_rows
from sidserve.schemas import MAX_BATCH_ITEMS, MAX_CANDIDATES, MAX_HISTORY, MAX_ITEM_ID_BYTES
from sidserve_client import InvalidRequest, ItemNotFound, SidServeClient


@pytest.fixture(scope="module")
def direct_codes(sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]]) -> np.ndarray:
    """onnxruntime on the bundle, without the service."""
    x, _ = sid_bundle_data
    sess = ort.InferenceSession(str(sid_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"embeddings": x})[0]


@pytest.fixture(scope="module", params=["single", "cluster"])
def live_service(request: pytest.FixtureRequest, sid_bundle: Path) -> Iterator[LiveService]:
    """The service on the session's single Redis, or on the session's Redis Cluster."""
    if request.param == "single":
        url, cluster = request.getfixturevalue("redis_url"), False
    else:
        url, cluster = request.getfixturevalue("redis_cluster_url"), True
    with serve(service_settings(sid_bundle, url, redis_cluster=cluster)) as service:
        yield service


@pytest.fixture
def client(live_service: LiveService) -> SidServeClient:
    with SidServeClient(live_service.url, api_key=TEST_API_KEY) as c:
        yield c


@pytest.fixture
def http(live_service: LiveService) -> httpx.Client:
    with httpx.Client(base_url=live_service.url, timeout=5, headers=AUTH) as c:
        yield c


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


def _stored_keys(live_service: LiveService, item_ids: list[str]) -> int:
    """How many of the items have a SID in Redis (looked up directly, layout from the store)."""
    store = live_service.app.state.sidserve.serving.store
    keys, fields = store.locate(item_ids)
    url = live_service.settings.redis_url
    r = redis.cluster.RedisCluster.from_url(url) if live_service.settings.redis_cluster else redis.Redis.from_url(url)
    width = len(fields) // len(item_ids)
    return sum(r.hexists(k, fields[i * width : (i + 1) * width]) for i, k in enumerate(keys))


def _post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    # json.dumps writes NaN/Infinity (httpx refuses to): what a careless caller may send.
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def test_sids_equal_onnxruntime_and_rows_equal_feature_rows(
    client: SidServeClient, sid_bundle_data: tuple[np.ndarray, list[str]], direct_codes: np.ndarray
) -> None:
    x, _ = sid_bundle_data
    ids = _ids(len(x))
    written = client.upsert_items(ids, x)  # 2,000 items: two batch calls
    assert [w.item_id for w in written] == ids
    assert {w.status for w in written} == {"created"}
    assert np.array_equal(np.array([w.sid for w in written]), direct_codes)

    ready = client.ready()
    assert all(w.model_version == ready.model_version for w in written)
    assert client.get_item(ids[7]).sid == tuple(direct_codes[7])

    cand, hist = np.arange(0, 2000, 7), np.arange(1, 2000, 13)
    f = client.features([ids[i] for i in cand], [ids[i] for i in hist])
    cfg = f.feature_config
    assert (cfg.parameterization, cfg.ngram, cfg.table_size, cfg.levels, cfg.codebook_size) == (
        "prefix_ngram", 3, 1_000_004, 3, 16
    )
    config = FeatureConfig(Parameterization.PREFIX_NGRAM, 16, 3, 3, 1_000_004)
    for block, idx in ((f.candidates, cand), (f.history, hist)):
        assert block.known.all()
        assert block.sids == [tuple(c) for c in direct_codes[idx]]
        assert np.array_equal(block.rows, feature_rows(direct_codes[idx], config))


def test_idempotent_upserts(client: SidServeClient, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    [item] = _ids(1)
    first = client.upsert_item(item, x[0])
    assert first.status == "created"
    assert client.upsert_item(item, x[0]) == first.__class__(item, first.sid, first.model_version, "unchanged")
    # New content with a different SID replaces it.
    other = next(i for i in range(1, len(x)) if client.upsert_item(f"probe-{i}", x[i]).sid != first.sid)
    changed = client.upsert_item(item, x[other])
    assert changed.status == "updated" and changed.sid != first.sid
    assert client.get_item(item).sid == changed.sid
    assert [w.status for w in client.upsert_items([item], x[other : other + 1])] == ["unchanged"]


def test_batch_is_all_or_nothing(
    http: httpx.Client, live_service: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    x, _ = sid_bundle_data
    ids = _ids(6)
    good = [{"item_id": i, "embedding": x[n].tolist()} for n, i in enumerate(ids)]
    cases = {
        3: ({"item_id": ids[3], "embedding": x[3].tolist()[:31]}, "expects D=32"),
        4: ({"item_id": ids[4], "embedding": [float("nan")] + x[4].tolist()[1:]}, "finite number"),
        5: ({"item_id": ids[5], "embedding": [1e39] + x[5].tolist()[1:]}, "float32"),
        2: ({"item_id": "", "embedding": x[2].tolist()}, "at least 1 character"),
        1: ({"item_id": "x" * (MAX_ITEM_ID_BYTES + 1), "embedding": x[1].tolist()}, "256"),
    }
    for index, (bad, message) in cases.items():
        items = good[:index] + [bad] + good[index + 1 :]
        r = _post(http, "/v1/items/batch", {"items": items})
        assert r.status_code == 422, r.text
        [error, *_] = r.json()["detail"]
        assert error["loc"][:3] == ["body", "items", index], error
        assert message in error["msg"], error
        assert _stored_keys(live_service, ids) == 0  # nothing of the batch was written


def test_item_errors_name_field_and_problem(
    http: httpx.Client, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    x, _ = sid_bundle_data
    e = x[0].tolist()
    cases = [
        ({"item_id": "a", "embedding": e[:5]}, ["body", "embedding"], "embedding has 5 values, the model expects D=32"),
        ({"item_id": "a", "embedding": e[:-1] + [float("inf")]}, ["body", "embedding", 31], "finite number"),
        ({"item_id": "a", "embedding": e[:-1] + [float("-inf")]}, ["body", "embedding", 31], "finite number"),
        ({"item_id": "a", "embedding": e[:-1] + [-1e300]}, ["body", "embedding"], "float32"),
        ({"item_id": "", "embedding": e}, ["body", "item_id"], "at least 1 character"),
        ({"item_id": "é" * 129, "embedding": e}, ["body", "item_id"], "longer than 256 bytes"),
        ({"item_id": "a", "embedding": e, "extra": 1}, ["body", "extra"], "Extra inputs"),
        ({"embedding": e}, ["body", "item_id"], "Field required"),
        ({"item_id": "a", "embedding": ["x"] * 32}, ["body", "embedding", 0], "valid number"),
    ]
    for body, loc, message in cases:
        r = _post(http, "/v1/items", body)
        assert r.status_code == 422, (body, r.text)
        [error, *_] = r.json()["detail"]
        assert error["loc"] == loc and message in error["msg"], (loc, error)

    r = http.post("/v1/items", content=b'{"item_id": "a", "embedding": [1,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    assert r.json()["detail"][0]["loc"] == ["body", 33]  # where the text ends
    r = http.post("/v1/items", content=b'{"item_id": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 400  # not UTF-8 (or -16/-32) text
    utf16 = json.dumps({"item_id": "utf-16 item", "embedding": e}).encode("utf-16")
    r = http.post("/v1/items", content=utf16, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["item_id"] == "utf-16 item"
    utf16 = json.dumps({"items": [{"item_id": "utf-16 body", "embedding": e}]}).encode("utf-16")
    r = http.post("/v1/items/batch", content=utf16, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["items"][0]["item_id"] == "utf-16 body"  # JSON may be UTF-16/32
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than any parser's stack: an error, not a 500
    r = http.post("/v1/items/batch", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    # NaN everywhere: the error list is capped, and never echoes NaN (not JSON).
    r = _post(http, "/v1/items/batch", {"items": [{"item_id": "n", "embedding": [float("nan")] * 32}] * 5})
    assert r.status_code == 422 and len(r.json()["detail"]) == 21
    assert r.json()["detail"][-1]["type"] == "too_many_errors"


def test_limits(http: httpx.Client, live_service: LiveService) -> None:
    r = _post(http, "/v1/items/batch", {"items": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items"]
    too_many = [{"item_id": f"i{i}", "embedding": [0.0] * 32} for i in range(MAX_BATCH_ITEMS + 1)]
    r = _post(http, "/v1/items/batch", {"items": too_many})
    assert r.status_code == 422 and "at most 1000" in r.json()["detail"][0]["msg"]
    r = _post(http, "/v1/features", {"candidates": ["a"] * (MAX_CANDIDATES + 1)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "candidates"]
    r = _post(http, "/v1/features", {"candidates": [], "history": ["a"] * (MAX_HISTORY + 1)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "history"]
    r = _post(http, "/v1/features", {"candidates": ["ok", ""]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "candidates", 1]
    big = live_service.settings.max_body_bytes + 1
    r = http.post("/v1/items", content=b" " * big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_features_duplicates_unknowns_and_404(
    client: SidServeClient, sid_bundle_data: tuple[np.ndarray, list[str]], direct_codes: np.ndarray
) -> None:
    x, _ = sid_bundle_data
    a, b, unknown = _ids(3)
    client.upsert_items([a, b], x[10:12])
    f = client.features([a, unknown, a, b, a], [unknown, b, b])
    assert f.candidates.known.tolist() == [True, False, True, True, True]
    assert f.candidates.sids == [tuple(direct_codes[10]), None, tuple(direct_codes[10]), tuple(direct_codes[11]),
                                 tuple(direct_codes[10])]  # fmt: skip
    assert f.candidates.rows[1].tolist() == [0, 0, 0] and (f.candidates.rows[[0, 2, 3, 4]] > 0).all()
    assert np.array_equal(f.candidates.rows[0], f.candidates.rows[4])
    assert f.history.known.tolist() == [False, True, True] and f.history.rows[0].tolist() == [0, 0, 0]

    empty = client.features([], [])
    assert len(empty.candidates) == 0 and empty.candidates.rows.shape == (0, 3)

    with pytest.raises(ItemNotFound, match="has no SID"):
        client.get_item(unknown)
    with pytest.raises(InvalidRequest) as e:
        client.upsert_item("x", x[0][:4])
    assert e.value.status == 422 and "D=32" in e.value.detail[0]["msg"]


def test_odd_item_ids_round_trip(client: SidServeClient, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    tag = uuid.uuid4().hex[:6]
    odd = [f"{tag}/a b", f"{tag}:{{slot}}", f"{tag}-ünïcödé-🙂", tag + "é" * 100, f"{tag}?q=1#f"]
    written = client.upsert_items(odd, x[:5])
    for item, w in zip(odd, written):
        assert client.get_item(item).sid == w.sid
    assert client.features(odd).candidates.known.all()


def test_readme_worked_example_config(
    sid_bundle: Path, redis_url: str, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    """A deployment with N = 3, H = 1000 (the README's config): rows = 1 + (g_n mod 999), g_n by hand."""
    x, _ = sid_bundle_data
    with serve(service_settings(sid_bundle, redis_url, ngram=3, table_size=1000)) as service:
        with SidServeClient(service.url, api_key=TEST_API_KEY) as c:
            [item] = _ids(1)
            sid = c.upsert_item(item, x[3]).sid
            f = c.features([item])
    k = 16
    g = [sum(k ** (n - t) * (sid[t - 1] + 1) for t in range(1, n + 1)) - 1 for n in (1, 2, 3)]
    assert f.candidates.rows[0].tolist() == [1 + gn % 999 for gn in g]
    assert (f.feature_config.ngram, f.feature_config.table_size) == (3, 1000)


def _loop_lag_count(http: httpx.Client, within_s: float) -> float:
    """sidserve_event_loop_lag_seconds_count, polled until it is > 0 or within_s passed (the watcher
    records its first round 50 ms after startup)."""
    deadline = time.monotonic() + within_s
    while True:
        text = http.get("/metrics").text
        [count] = [float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("sidserve_event_loop_lag_seconds_count")]  # fmt: skip
        if count > 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_health_readiness_metrics_and_docs(http: httpx.Client, client: SidServeClient) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["input_dim"], body["levels"], body["codebook_size"], len(body["model_version"])) == (32, 3, 16, 16)
    assert body["feature_config"]["table_size"] == 1_000_004

    client.features(["whatever"])
    text = http.get("/metrics").text
    assert 'sidserve_requests_total{endpoint="/v1/features",method="POST",status="200"}' in text
    assert 'sidserve_request_duration_seconds_bucket{endpoint="/v1/features",le="0.00025",method="POST"}' in text
    assert "sidserve_items_written_total" in text and "sidserve_redis_errors_total" in text
    assert _loop_lag_count(http, within_s=2.0) > 0  # the loop-lag watcher runs (sidserve.looplag)
    assert 'sidserve_feature_lookups_total{known="false"}' in text

    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/v1/items/batch"]["post"]["responses"]) >= {"200", "413", "422", "503"}
    assert set(paths["/v1/items"]["post"]["responses"]) >= {"200", "400", "413", "422", "503"}
    item_body = paths["/v1/items"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert item_body == {"$ref": "#/components/schemas/ItemIn"}  # the handler reads the body itself
    assert spec["components"]["schemas"]["ItemIn"]["required"] == ["item_id", "embedding"]
    assert set(paths["/v1/items/{item_id}"]["get"]["responses"]) >= {"200", "404", "422", "503"}
    assert set(paths["/v1/features"]["post"]["responses"]) >= {"200", "413", "422", "503"}
    assert "Retry-After" in paths["/v1/features"]["post"]["responses"]["503"]["headers"]
    for name, component in spec["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):  # FastAPI's own
            continue
        for field, schema in component["properties"].items():
            assert schema.get("description") or "$ref" in schema, f"{name}.{field} is undocumented"


def test_no_model_means_not_ready(redis_url: str) -> None:
    with serve(service_settings(None, redis_url)) as service, httpx.Client(base_url=service.url, headers=AUTH) as http:
        assert http.get("/healthz").status_code == 200
        for r in (http.get("/readyz"), _post(http, "/v1/features", {"candidates": ["a"]}),
                  _post(http, "/v1/items", {"item_id": "a", "embedding": [0.0]})):  # fmt: skip
            assert r.status_code == 503 and "No model bundle" in r.json()["detail"]
            assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_instrumentation_is_opt_in(redis_url: str, monkeypatch: pytest.MonkeyPatch, enabled: bool) -> None:
    """Off by default: FastAPI's instrumentation otherwise looks up the tracer provider on every request."""
    pytest.importorskip("fastapi.telemetry", reason="this FastAPI has no built-in instrumentation")
    from opentelemetry import trace

    lookups = []
    provider = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: lookups.append(1) or provider())
    with serve(service_settings(None, redis_url, opentelemetry=enabled)) as service:
        lookups.clear()  # count the requests' lookups, not the startup's
        for _ in range(3):
            assert httpx.get(f"{service.url}/healthz").status_code == 200
    assert (len(lookups) >= 3) == enabled and (not lookups) == (not enabled)


def test_startup_warns_about_feature_config(
    sid_bundle: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # H - 1 = 1024 shares factors with K = 16 and the 4,368 prefixes do not fit: modulo hash, uneven.
    with caplog.at_level("WARNING", logger="sidserve"):
        with serve(service_settings(sid_bundle, redis_url, table_size=1025)):
            pass
    assert any("coprime with K" in r.getMessage() for r in caplog.records)
