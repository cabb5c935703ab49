"""POST /v1/items/batch with the binary embeddings body: same SIDs and statuses as JSON, same
checks (4xx naming the item), all or nothing."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest
from service_fixtures import AUTH, LiveService

from sidserve.codec import EMBEDDINGS_MEDIA_TYPE, encode_embeddings

BINARY = {**AUTH, "content-type": EMBEDDINGS_MEDIA_TYPE}


@pytest.fixture
def http(live_service: LiveService) -> httpx.Client:
    with httpx.Client(base_url=live_service.url, timeout=10, headers=AUTH) as c:
        yield c


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


def test_binary_equals_json(http: httpx.Client, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    ids = _ids(50)
    r = http.post("/v1/items/batch", content=encode_embeddings(ids, x[:50]), headers=BINARY)
    assert r.status_code == 200, r.text
    binary = r.json()
    assert [i["status"] for i in binary["items"]] == ["created"] * 50
    assert [i["item_id"] for i in binary["items"]] == ids
    again = http.post("/v1/items/batch", json={"items": [{"item_id": i, "embedding": e.tolist()}
                                                         for i, e in zip(ids, x[:50], strict=True)]}).json()
    assert [i["status"] for i in again["items"]] == ["unchanged"] * 50
    assert [i["sid"] for i in again["items"]] == [i["sid"] for i in binary["items"]]
    assert again["model_version"] == binary["model_version"]
    assert http.get(f"/v1/items/{ids[7]}").json()["sid"] == binary["items"][7]["sid"]


def test_binary_errors_are_4xx_and_write_nothing(http: httpx.Client, live_service: LiveService) -> None:
    dim = live_service.app.state.sidserve.serving.model.input_dim
    x = np.ones((3, dim), dtype=np.float32)
    ids = _ids(3)
    good = encode_embeddings(ids, x)
    nan = x.copy()
    nan[1, 0] = np.nan

    def post(body: bytes, **headers: str) -> httpx.Response:
        return http.post("/v1/items/batch", content=body, headers={**BINARY, **headers})

    cases = [
        (b"nope" + good[4:], 422, ["body"]),
        (good[:-1], 422, ["body"]),
        (good + b"\0", 422, ["body"]),
        (encode_embeddings(ids, np.ones((3, dim + 1))), 422, ["body", "items"]),
        (encode_embeddings([], np.ones((0, dim))), 422, ["body", "items"]),
        (encode_embeddings([ids[0], "", ids[2]], x), 422, ["body", "items", 1, "item_id"]),
        (encode_embeddings([ids[0], "é" * 129, ids[2]], x), 422, ["body", "items", 1, "item_id"]),
        (encode_embeddings(ids, nan), 422, ["body", "items", 1, "embedding"]),
    ]
    for body, status, loc in cases:
        r = post(body)
        assert r.status_code == status, (loc, r.text)
        assert r.json()["detail"][0]["loc"] == loc, r.text
    assert post(good, **{"content-type": "text/plain"}).status_code == 415
    assert http.post("/v1/items/batch", content=b"{", headers={**AUTH, "content-type": "application/json"}
                     ).json()["detail"][0]["type"] == "json_invalid"
    assert all(http.get(f"/v1/items/{i}").status_code == 404 for i in ids)  # nothing was written
    assert post(good).status_code == 200


def test_binary_body_documented(http: httpx.Client) -> None:
    body = http.get("/openapi.json").json()["paths"]["/v1/items/batch"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", EMBEDDINGS_MEDIA_TYPE}
    assert "float32" in body["content"][EMBEDDINGS_MEDIA_TYPE]["schema"]["description"]
