"""Sync and async HTTP clients of sidserve (httpx).

Both share the request builders and answer parsers below (`_Call`); they differ only in how a
call is sent and how the retry waits. Every call is idempotent (an upsert of the same content
answers `unchanged`), so every call retries on 503, 429 and connection errors, with exponential
backoff and jitter, honouring the server's Retry-After up to `max_backoff`. `api_key` is sent as
`Authorization: Bearer <key>` on every call (the server needs it for writes, and for reads when
it protects them); it is never part of an error message.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from .models import (
    Features,
    InvalidRequest,
    ItemNotFound,
    ItemSid,
    ItemWrite,
    RateLimited,
    Readiness,
    ServiceUnavailable,
    SidServeError,
    Unauthorized,
    parse_features,
    parse_readiness,
    parse_write,
)

# The server's limit per batch call (sidserve.schemas.MAX_BATCH_ITEMS; a test keeps them equal).
MAX_BATCH_ITEMS = 1_000
_RETRYABLE = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_JSON = {"content-type": "application/json"}
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried. `deadline`: seconds for the whole call, retries and waits included
    (None: `attempts` alone bounds it). A ranking server on a budget of milliseconds sets it: each
    attempt's HTTP timeout is cut to the time left, and a retry whose wait (Retry-After included)
    would end past the deadline is not made; the last error is raised at once instead."""

    attempts: int = 4  # tries in all, the first included
    backoff: float = 0.05  # seconds before the first retry, doubled each time
    max_backoff: float = 2.0
    deadline: float | None = None

    def delay(self, retry: int, retry_after: str | None) -> float:
        wait = min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.5, 1.0)
        if retry_after and retry_after.isdigit():
            wait = max(wait, min(self.max_backoff, float(retry_after)))
        return wait

    def ends(self) -> float | None:
        """The monotonic time by which a call starting now must end; None without a deadline."""
        return None if self.deadline is None else time.monotonic() + self.deadline

    def timeout(self, ends: float | None) -> Any:
        """The HTTP timeout of the next attempt: the time left before `ends`, or the client's own
        (httpx.USE_CLIENT_DEFAULT)."""
        return httpx.USE_CLIENT_DEFAULT if ends is None else max(0.001, ends - time.monotonic())

    def wait(self, attempt: int, retry_after: str | None, ends: float | None) -> float | None:
        """Seconds to wait before retrying after attempt `attempt` (0-based) failed; None: no retry."""
        if attempt + 1 >= self.attempts:
            return None
        wait = self.delay(attempt, retry_after)
        return None if ends is not None and time.monotonic() + wait >= ends else wait


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[dict[str, Any]], T]
    body: bytes | None = None
    content_type: str | None = None  # None: JSON


# Batch uploads use the server's binary body (4 bytes per float instead of ~9 as JSON text, and no
# float parsing on the server): "SIE1", uint32 B, uint32 D, B x uint32 ID byte lengths, the IDs'
# UTF-8 bytes, B x D float32, all little-endian (sidserve.codec, README "Service API").
EMBEDDINGS_MEDIA_TYPE = "application/x-sidserve-embeddings"


def _embeddings_body(item_ids: Sequence[str], x: np.ndarray) -> bytes:
    encoded = [i.encode() for i in item_ids]
    header = b"SIE1" + np.array([len(encoded), x.shape[1]], dtype="<u4").tobytes()
    lengths = np.array([len(e) for e in encoded], dtype="<u4").tobytes()
    return b"".join((header, lengths, *encoded, np.ascontiguousarray(x, dtype="<f4").tobytes()))


def _error(response: httpx.Response) -> SidServeError:
    try:
        detail = orjson.loads(response.content)["detail"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = response.text
    status = response.status_code
    if status == 404:
        return ItemNotFound(status, detail)
    if status == 503:
        return ServiceUnavailable(status, detail)
    if status == 429:
        return RateLimited(status, detail)
    if status in (401, 403):
        return Unauthorized(status, detail)
    if status in (400, 413, 422):
        return InvalidRequest(status, detail)
    return SidServeError(status, detail)


def _item(item_id: str, embedding: Any) -> dict[str, Any]:
    return {"item_id": item_id, "embedding": np.asarray(embedding, dtype=np.float32)}


def _dumps(obj: Any) -> bytes:
    # float32 arrays are written as their shortest round-tripping decimals: the server gets the same floats.
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _upsert_item(item_id: str, embedding: Any) -> _Call[ItemWrite]:
    return _Call("POST", "/v1/items", parse_write, _dumps(_item(item_id, embedding)))


def _upsert_batches(item_ids: Sequence[str], embeddings: Any, batch_size: int) -> list[_Call[list[ItemWrite]]]:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(item_ids):
        raise ValueError(f"embeddings must be [{len(item_ids)}, D], got shape {x.shape}")

    def parse(body: dict[str, Any]) -> list[ItemWrite]:
        return [parse_write(item) for item in body["items"]]

    return [
        _Call("POST", "/v1/items/batch", parse,
              _embeddings_body(item_ids[s : s + batch_size], x[s : s + batch_size]), EMBEDDINGS_MEDIA_TYPE)
        for s in range(0, len(item_ids), batch_size)
    ]  # fmt: skip


def _get_item(item_id: str, version: str | None) -> _Call[ItemSid]:
    def parse(body: dict[str, Any]) -> ItemSid:
        return ItemSid(body["item_id"], tuple(body["sid"]), body["model_version"],
                       collision_index=body.get("collision_index"))  # fmt: skip

    query = "" if version is None else "?version=" + quote(version, safe="")
    return _Call("GET", "/v1/items/" + quote(item_id, safe="") + query, parse)


def _headers(api_key: str | None) -> dict[str, str]:
    return _JSON if api_key is None else {**_JSON, "authorization": f"Bearer {api_key}"}


def _features(candidates: Sequence[str], history: Sequence[str], version: str | None) -> _Call[Features]:
    request: dict[str, Any] = {"candidates": list(candidates), "history": list(history)}
    if version is not None:
        request["version"] = version
    return _Call("POST", "/v1/features", parse_features, _dumps(request))


class SidServeClient:
    """Blocking client. Use as a context manager, or call close().

    >>> with SidServeClient("http://127.0.0.1:8000", api_key=key) as client:
    ...     client.upsert_items(ids, embeddings)
    ...     f = client.features(candidates=["a", "b"], history=["c"])
    ...     f.candidates.rows  # int64 [2, N] embedding-table rows
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = MAX_BATCH_ITEMS,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        self.retry, self.batch_size = retry, batch_size
        self._headers = _headers(api_key)
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> SidServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def upsert_item(self, item_id: str, embedding: Any) -> ItemWrite:
        """Compute and store one item's SID; the answer says created, updated or unchanged."""
        return self._run(_upsert_item(item_id, embedding))

    def upsert_items(self, item_ids: Sequence[str], embeddings: Any) -> list[ItemWrite]:
        """Upload many items, `batch_size` per call. Each call is all-or-nothing (per hash-tag group
        on a Redis Cluster, per Redis call where the service sets SIDSERVE_WRITE_CHUNK_ITEMS); an
        error in a later chunk leaves the earlier chunks written (re-sending them is harmless)."""
        return [w for call in _upsert_batches(item_ids, embeddings, self.batch_size) for w in self._run(call)]

    def get_item(self, item_id: str, version: str | None = None) -> ItemSid:
        """The item's SID under `version` (default: the server's active one); raises ItemNotFound
        when none is stored."""
        return self._run(_get_item(item_id, version))

    def features(self, candidates: Sequence[str], history: Sequence[str] = (), version: str | None = None) -> Features:
        """SIDs and embedding-table rows, aligned with the inputs; unknown items have known=False, rows 0.
        `version`: a model version loaded on the server (default: its active one)."""
        return self._run(_features(candidates, history, version))

    def ready(self) -> Readiness:
        """The server's readiness, asked once (no retry: it reports the state of the moment)."""
        try:
            response = self._http.get("/readyz")
        except _RETRYABLE as e:
            return Readiness(ready=False, detail=f"{type(e).__name__}: {e}")
        return parse_readiness(response.status_code, orjson.loads(response.content))

    def _call_headers(self, call: _Call[Any]) -> dict[str, str]:
        return self._headers if call.content_type is None else {**self._headers, "content-type": call.content_type}

    def _run(self, call: _Call[T]) -> T:
        ends = self.retry.ends()
        for attempt in itertools.count():  # RetryPolicy.wait ends it
            retry_after = None
            try:
                response = self._http.request(
                    call.method, call.path, content=call.body, headers=self._call_headers(call),
                    timeout=self.retry.timeout(ends),
                )  # fmt: skip
            except _RETRYABLE as e:
                error: SidServeError = ServiceUnavailable(None, f"{type(e).__name__}: {e}")
            else:
                if response.status_code == 200:
                    return call.parse(orjson.loads(response.content))
                error = _error(response)
                if not isinstance(error, ServiceUnavailable | RateLimited):
                    raise error
                retry_after = response.headers.get("retry-after")
            wait = self.retry.wait(attempt, retry_after, ends)
            if wait is None:
                break
            time.sleep(wait)
        raise error


class AsyncSidServeClient:
    """The asyncio twin of SidServeClient (same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = MAX_BATCH_ITEMS,
        http: httpx.AsyncClient | None = None,
        api_key: str | None = None,
    ) -> None:
        self.retry, self.batch_size = retry, batch_size
        self._headers = _headers(api_key)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncSidServeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def upsert_item(self, item_id: str, embedding: Any) -> ItemWrite:
        return await self._run(_upsert_item(item_id, embedding))

    async def upsert_items(self, item_ids: Sequence[str], embeddings: Any) -> list[ItemWrite]:
        # Chunks in order, one at a time: a failure stops before later chunks, like the sync client.
        return [w for call in _upsert_batches(item_ids, embeddings, self.batch_size) for w in await self._run(call)]

    async def get_item(self, item_id: str, version: str | None = None) -> ItemSid:
        return await self._run(_get_item(item_id, version))

    async def features(
        self, candidates: Sequence[str], history: Sequence[str] = (), version: str | None = None
    ) -> Features:
        return await self._run(_features(candidates, history, version))

    async def ready(self) -> Readiness:
        try:
            response = await self._http.get("/readyz")
        except _RETRYABLE as e:
            return Readiness(ready=False, detail=f"{type(e).__name__}: {e}")
        return parse_readiness(response.status_code, orjson.loads(response.content))

    def _call_headers(self, call: _Call[Any]) -> dict[str, str]:
        return self._headers if call.content_type is None else {**self._headers, "content-type": call.content_type}

    async def _run(self, call: _Call[T]) -> T:
        ends = self.retry.ends()
        for attempt in itertools.count():  # RetryPolicy.wait ends it
            retry_after = None
            try:
                response = await self._http.request(
                    call.method, call.path, content=call.body, headers=self._call_headers(call),
                    timeout=self.retry.timeout(ends),
                )  # fmt: skip
            except _RETRYABLE as e:
                error: SidServeError = ServiceUnavailable(None, f"{type(e).__name__}: {e}")
            else:
                if response.status_code == 200:
                    return call.parse(orjson.loads(response.content))
                error = _error(response)
                if not isinstance(error, ServiceUnavailable | RateLimited):
                    raise error
                retry_after = response.headers.get("retry-after")
            wait = self.retry.wait(attempt, retry_after, ends)
            if wait is None:
                break
            await asyncio.sleep(wait)
        raise error
