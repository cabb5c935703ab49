"""API keys and rate limits (sidserve.security) against the live service: real HTTP, real Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import LiveService, serve, service_settings

from sidserve import keys, security
from sidserve.admission import Admission
from sidserve.security import RateLimiter
from sidserve_client import RateLimited, RetryPolicy, SidServeClient, Unauthorized

OLD_KEY, NEW_KEY, WRONG_KEY = "old-key-aaaaaaaaaaaaaaaa", "new-key-bbbbbbbbbbbbbbbb", "wrong-key-cccccccccccccc"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def protected(sid_bundle: Path, redis_url: str) -> Iterator[LiveService]:
    """Two valid keys at once (a rotation in progress), reads protected too."""
    with serve(service_settings(sid_bundle, redis_url, api_keys=f"{OLD_KEY}, {NEW_KEY}", protect_reads=True)) as s:
        yield s


def test_writes_need_a_valid_key(
    live_service: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    x, _ = sid_bundle_data
    item = {"item_id": "auth-probe", "embedding": x[0].tolist()}
    with caplog.at_level(logging.DEBUG), httpx.Client(base_url=live_service.url) as http:
        for path, body in (("/v1/items", item), ("/v1/items/batch", {"items": [item]})):
            r = http.post(path, json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert "Authorization: Bearer" in r.json()["detail"]
            r = http.post(path, json=body, headers={"authorization": f"Basic {live_service.api_key}"})
            assert r.status_code == 401, r.text  # another scheme is no bearer key
            r = http.post(path, json=body, headers=bearer(WRONG_KEY))
            assert r.status_code == 403 and r.json() == {"detail": "API key not accepted"}
            assert http.post(path, json=body, headers=bearer(live_service.api_key)).status_code == 200
        # Checked before the body is even parsed: no key + broken JSON is 401, not 422.
        r = http.post("/v1/items", content=b'{"item_id": ', headers={"content-type": "application/json"})
        assert r.status_code == 401
        # Reads are open by default.
        assert http.post("/v1/features", json={"candidates": ["auth-probe"]}).json()["candidates"]["known"] == [True]
        assert http.get("/v1/items/auth-probe").status_code == 200
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert WRONG_KEY not in logged and live_service.api_key not in logged


def test_rotation_and_protected_reads(protected: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    for key in (OLD_KEY, NEW_KEY):
        with SidServeClient(protected.url, api_key=key) as client:
            assert client.upsert_item("rotated", x[1]).sid
            assert client.features(["rotated"]).candidates.known.all()
            assert client.get_item("rotated").sid
    with httpx.Client(base_url=protected.url) as http:
        assert http.post("/v1/features", json={"candidates": ["rotated"]}).status_code == 401
        assert http.get("/v1/items/rotated").status_code == 401
        r = http.get("/v1/items/rotated", headers=bearer(WRONG_KEY))
        assert r.status_code == 403 and WRONG_KEY not in r.text
        assert http.get("/readyz").status_code == 200 and http.get("/healthz").status_code == 200
    with SidServeClient(protected.url, api_key=WRONG_KEY) as client, pytest.raises(Unauthorized) as e:
        client.features(["rotated"])
    assert e.value.status == 403 and WRONG_KEY not in str(e.value)


def test_openapi_shows_the_scheme_and_answers(protected: LiveService, live_service: LiveService) -> None:
    spec = httpx.get(protected.url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": security._bearer.model.description,
    }  # fmt: skip
    for path, method in (("/v1/items", "post"), ("/v1/items/batch", "post"), ("/v1/features", "post"),
                         ("/v1/items/{item_id}", "get")):  # fmt: skip
        op = spec["paths"][path][method]
        assert op["security"] == [{"HTTPBearer": []}], path
        assert {"401", "403", "429"} <= set(op["responses"]), path
        assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "security" not in spec["paths"]["/readyz"]["get"]
    open_spec = httpx.get(live_service.url + "/openapi.json").json()  # reads open: no lock on them
    assert "security" not in open_spec["paths"]["/v1/features"]["post"]
    assert "429" in open_spec["paths"]["/v1/features"]["post"]["responses"]
    assert open_spec["paths"]["/v1/items"]["post"]["security"] == [{"HTTPBearer": []}]


def test_rate_limit_per_key(sid_bundle: Path, redis_url: str) -> None:
    settings = service_settings(sid_bundle, redis_url, api_keys=f"{OLD_KEY},{NEW_KEY}", rate_limit_per_s=0.5,
                                rate_limit_burst=3)  # fmt: skip
    with serve(settings) as service, httpx.Client(base_url=service.url) as http:
        body = {"candidates": ["a"]}
        codes = [http.post("/v1/features", json=body).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # reads without a key: bucket per client address
        codes = [http.post("/v1/items", json={}, headers=bearer(OLD_KEY)).status_code for _ in range(4)]
        assert codes == [422, 422, 422, 429]  # each key has its own bucket; the 4th is refused before parsing
        r = http.post("/v1/items", json={}, headers=bearer(OLD_KEY))
        assert r.status_code == 429 and r.headers["retry-after"] == "2" and "requests/s per key" in r.json()["detail"]
        assert http.post("/v1/items", json={}, headers=bearer(NEW_KEY)).status_code == 422  # the other key: fresh
        # The client retries 429s honouring Retry-After, then raises RateLimited.
        policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05)
        with SidServeClient(service.url, api_key=OLD_KEY, retry=policy) as client, pytest.raises(RateLimited):
            client.features(["a"])


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(2)] == [0, 0]
    assert limiter.acquire("a") == pytest.approx(0.1)
    assert limiter.acquire("b") == 0
    now[0] = 0.15
    assert limiter.acquire("a") == 0 and limiter.acquire("a") > 0
    assert RateLimiter(rate=0, burst=1).acquire("a") == 0  # disabled


def test_keys_file_is_reloaded(
    sid_bundle: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security, "KEYS_FILE_CHECK_S", 0.0)
    keys = tmp_path / "api_keys"
    keys.write_text(f"{OLD_KEY}\n")
    settings = service_settings(sid_bundle, redis_url, api_keys=None, api_keys_file=keys)
    with serve(settings) as service, httpx.Client(base_url=service.url) as http:
        assert http.post("/v1/items", json={}, headers=bearer(OLD_KEY)).status_code == 422
        assert http.post("/v1/items", json={}, headers=bearer(NEW_KEY)).status_code == 403
        keys.write_text(f"# rotated\n{NEW_KEY}\n")
        assert http.post("/v1/items", json={}, headers=bearer(NEW_KEY)).status_code == 422
        assert http.post("/v1/items", json={}, headers=bearer(OLD_KEY)).status_code == 403
        keys.write_text("")  # emptied by mistake: keep the last good keys rather than lock everyone out
        assert http.post("/v1/items", json={}, headers=bearer(NEW_KEY)).status_code == 422


def test_key_configuration_errors(tmp_path: Path) -> None:
    from sidserve.settings import Settings

    with pytest.raises(keys.SecurityConfigError, match="no API key configured"):
        keys.configured_keys(Settings())
    assert keys.configured_keys(Settings(allow_unauthenticated=True)) == []
    with pytest.raises(keys.SecurityConfigError, match="entry 2 is not a usable key") as e:
        keys.configured_keys(Settings(api_keys=f"{OLD_KEY},tooshort"))
    assert "tooshort" not in str(e.value)
    with pytest.raises(keys.SecurityConfigError, match="cannot read"):
        keys.configured_keys(Settings(api_keys_file=tmp_path / "missing"))
    assert OLD_KEY not in repr(Settings(api_keys=OLD_KEY))  # SecretStr: not in reprs or tracebacks


def test_unauthenticated_mode_is_open(sid_bundle: Path, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sidserve"):
        settings = service_settings(sid_bundle, redis_url, api_keys=None, allow_unauthenticated=True)
        with serve(settings) as service:
            assert httpx.post(service.url + "/v1/items", json={}).status_code == 422  # no 401: open
    assert any("NO AUTHENTICATION" in r.getMessage() for r in caplog.records)


def test_a_direct_route_refuses_what_it_would_skip() -> None:
    """DirectRoute calls its endpoint without FastAPI's dependency solving: any other dependency
    or parameter would be silently skipped, so declaring one fails at startup."""
    from fastapi import APIRouter, Depends, Request, Response

    from sidserve.settings import Settings

    _, read_access = security.Guard(Settings(allow_unauthenticated=True), Admission(0, 0, 1)).dependencies()
    router = APIRouter(route_class=security.DirectRoute)

    async def endpoint(request: Request) -> Response:
        return Response()

    async def extra() -> None:
        return None

    async def with_query(request: Request, limit: int) -> Response:
        return Response()

    with pytest.raises(TypeError, match="one dependency is the guard"):
        router.add_api_route("/a", endpoint, methods=["POST"], dependencies=[Depends(read_access), Depends(extra)])
    with pytest.raises(TypeError, match="one dependency is the guard"):
        router.add_api_route("/b", endpoint, methods=["POST"])
    with pytest.raises(TypeError, match="takes only `request`"):
        router.add_api_route("/c", with_query, methods=["POST"], dependencies=[Depends(read_access)])
    router.add_api_route("/d", endpoint, methods=["POST"], dependencies=[Depends(read_access)])
    assert [r.path for r in router.routes] == ["/d"]
