"""The HTTP service: item upload (SIDs computed by the bundle's ONNX encoder, stored in Redis) and
the ranking servers' batch feature fetch.

Run it with the `sidserve` console script, or under uvicorn directly:
    uvicorn sidserve.app:app                      (settings from SIDSERVE_* environment variables)
    uvicorn --factory sidserve.app:create_app
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import codec, storage
from .features import FeatureConfig
from .lookup import FeatureLookup
from .metrics import Metrics
from .responses import features_json
from .model import SidModel
from .schemas import (
    MAX_ITEM_ID_BYTES,
    ErrorOut,
    FeatureConfigOut,
    FeaturesIn,
    FeaturesOut,
    HealthOut,
    MAX_BATCH_ITEMS,
    ItemBatchIn,
    ItemBatchOut,
    ItemId,
    ItemIn,
    ItemOut,
    ItemRead,
    NoopOut,
    ReadyOut,
)
from .security import Guard, GuardedRoute
from .settings import Settings
from .storage import SidStore, StorageUnavailable

log = logging.getLogger("sidserve")


class NotReady(Exception):
    """No model bundle is loaded, so nothing can be encoded or served."""


@dataclass
class Serving:
    """What a loaded bundle brings: the model, its SID store and the served feature config."""

    model: SidModel
    store: SidStore
    lookup: FeatureLookup  # the store behind the per-process cache of hot items
    features: FeatureConfig
    features_out: dict[str, Any]


class ServiceState:
    """Per-app resources, opened in the lifespan and closed after the last request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.serving: Serving | None = None
        self.redis: Redis | RedisCluster | None = None

    async def open(self) -> None:
        s = self.settings
        self.redis = storage.connect(
            s.redis_url, s.redis_connect_timeout, s.redis_socket_timeout, s.redis_max_connections, s.redis_cluster
        )
        if s.bundle is None:
            log.warning("no model bundle configured (SIDSERVE_BUNDLE): not ready")
            return
        # A broken bundle stops the startup here with BundleError's message: fail fast, not at first request.
        model = SidModel.load(s.bundle, s.onnx_intra_op_threads, s.onnx_spinning)
        features = FeatureConfig(
            s.parameterization, model.codebook_size, model.levels, s.ngram or model.levels, s.table_size
        )
        for warning in features.warnings():
            log.warning("feature config: %s", warning)
        features_out = FeatureConfigOut(
            parameterization=features.parameterization.value, ngram=features.ngram,
            table_size=features.table_size, codebook_size=features.codebook_size,
            levels=features.levels, num_tokens=features.num_tokens,
        ).model_dump()  # fmt: skip
        store = SidStore(
            self.redis, model.version, model.levels, model.codebook_size, s.key_prefix, s.store_bucket_bits
        )
        lookup = FeatureLookup(store, features, s.cache_ttl_s, s.cache_max_items, on_lookup=self._count_cache)
        try:  # load the Redis functions now (two round trips, no key scan); else on first use
            await store.prepare()
        except RedisError as e:
            log.warning("Redis unreachable at startup (%s): the storage functions load on first use", e)
        self.serving = Serving(model, store, lookup, features, features_out)
        self.metrics.model_info.labels(model.version, str(model.levels), str(model.codebook_size)).set(1)
        log.info(
            "model %s loaded from %s: D=%d L=%d K=%d; features %s",
            model.version, s.bundle, model.input_dim, model.levels, model.codebook_size, features_out,
        )  # fmt: skip

    def _count_cache(self, hits: int, misses: int) -> None:
        self.metrics.sid_cache.labels("hit").inc(hits)
        self.metrics.sid_cache.labels("miss").inc(misses)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


async def get_state(request: Request) -> ServiceState:
    return request.app.state.sidserve


async def get_serving(state: Annotated[ServiceState, Depends(get_state)]) -> Serving:
    if state.serving is None:
        raise NotReady()
    return state.serving


Ready = Annotated[Serving, Depends(get_serving)]


def _retry_after_header(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description,
            "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                        "schema": {"type": "integer"}}}}  # fmt: skip


_E400 = {"model": ErrorOut, "description": "The body could not be read as JSON text (e.g. not UTF-8)."}
_E415 = {"model": ErrorOut, "description": "Content-Type is neither JSON nor the binary embeddings format."}
_E422 = {"description": "Validation Error (the index of a bad item is in `loc`).",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
_E413 = {"model": ErrorOut, "description": "Request body larger than the configured limit (SIDSERVE_MAX_BODY_BYTES)."}
_E503 = _retry_after_header("Redis unreachable or no model loaded; retry after Retry-After seconds.")
_E404 = {"model": ErrorOut, "description": "No SID stored for this item under the loaded model version."}


def _embeddings(items: list[ItemIn], dim: int, batch: bool) -> np.ndarray:
    """Items' embeddings as float32 [B, D]; 422 naming every bad item (its index in loc) otherwise."""

    def loc(i: int) -> tuple[str | int, ...]:
        return ("body", "items", i, "embedding") if batch else ("body", "embedding")

    errors = [
        {"type": "embedding_length", "loc": loc(i),
         "msg": f"embedding has {len(item.embedding)} values, the model expects D={dim}"}
        for i, item in enumerate(items) if len(item.embedding) != dim
    ]  # fmt: skip
    if errors:
        raise RequestValidationError(errors)
    with np.errstate(over="ignore"):
        x = np.array([item.embedding for item in items], dtype=np.float32).reshape(len(items), dim)
    # pydantic rejected NaN/Inf; values beyond float32's range only become inf here.
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise RequestValidationError([
            {"type": "finite_number", "loc": loc(int(i)),
             "msg": "embedding has values outside float32's finite range (|x| > 3.4e38)"}
            for i in bad
        ])  # fmt: skip
    return x


def _parse_json_body(raw: bytes, model: type[ItemBatchIn]) -> ItemBatchIn:
    """What FastAPI does with a JSON body (same errors), for a route that also takes other types."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        obj = json.loads(raw)  # stdlib, like FastAPI: NaN is then refused by the model, with its index
    except json.JSONDecodeError as e:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": e.msg}}]) from e  # fmt: skip
    except ValueError as e:  # not UTF-8 (or -16/-32) text
        raise HTTPException(400, "There was an error parsing the body") from e
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from e


def _parse_features_body(raw: bytes) -> FeaturesIn:
    """The features body, parsed and validated in one pass by pydantic's JSON parser (no stdlib
    json, no FastAPI body machinery: ~25 us less per call, measured in-process). Errors have
    FastAPI's shape, `loc` starting with "body"."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return FeaturesIn.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from e


def _features_openapi() -> dict[str, Any]:
    """The request body of the features and no-op routes (their handlers read the body themselves)."""
    schema = FeaturesIn.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _batch_openapi() -> dict[str, Any]:
    """Both request bodies of POST /v1/items/batch (the handler reads the body itself)."""
    schema = ItemBatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # ItemIn is in components already (POST /v1/items)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        codec.EMBEDDINGS_MEDIA_TYPE: {
            "schema": {"type": "string", "format": "binary", "description": codec.EMBEDDINGS_FORMAT_DOC}},
    }}}  # fmt: skip


async def _upsert(serving: Serving, state: ServiceState, items: list[ItemIn], x: np.ndarray) -> list[ItemOut]:
    codes = await run_in_threadpool(serving.model.encode, x)  # CPU-bound: keep the event loop free
    ids = [item.item_id for item in items]
    statuses = await serving.store.write(ids, codes)
    serving.lookup.forget(ids)  # this process's readers see its own writes at once
    for status in statuses:
        state.metrics.items_written.labels(status).inc()
    version = serving.model.version
    return [
        ItemOut(item_id=item.item_id, sid=sid, model_version=version, status=status)
        for item, sid, status in zip(items, codes.tolist(), statuses, strict=True)
    ]


MAX_REPORTED_ERRORS = 20


def _public_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's validation error list, made safe to send: the offending `input` is echoed only
    when it is a small finite scalar (NaN is not JSON; echoing a 384-float list helps nobody), and
    at most MAX_REPORTED_ERRORS entries (one NaN-filled batch would otherwise list every float)."""
    public = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        entry = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
        value = error.get("input")
        if (isinstance(value, bool | int | str) and len(str(value)) <= 100) or (
            isinstance(value, float) and math.isfinite(value)
        ):
            entry["input"] = value
        if "ctx" in error:
            entry["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        public.append(entry)
    if len(errors) > MAX_REPORTED_ERRORS:
        public.append({"type": "too_many_errors", "loc": ["body"],
                       "msg": f"{len(errors) - MAX_REPORTED_ERRORS} more errors not shown"})  # fmt: skip
    return public


def _configure_logging(level: str) -> None:
    log.setLevel(level.upper())
    if not log.handlers and not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    state = ServiceState(settings)
    guard = Guard(settings)  # no key and no SIDSERVE_ALLOW_UNAUTHENTICATED: SecurityConfigError, no start
    write_access, read_access = guard.dependencies()
    writes = {"dependencies": [Depends(write_access)], "responses": guard.responses(protected=True)}
    reads = {"dependencies": [Depends(read_access)], "responses": guard.responses(protected=settings.protect_reads)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        # Move everything built at startup (app, schemas, model, key tables) out of the cyclic
        # GC's reach: a full collection over it paused a worker 11-23 ms (measured in-process),
        # a latency spike at a random request; after freeze() it takes ~0 ms.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="sidserve",
        version="0.1.0",
        summary="Semantic-ID features for recommendation ranking.",
        description="Upload items (their content embeddings are encoded to Semantic IDs by the loaded "
        "model bundle and stored in Redis), then fetch SIDs and embedding-table rows of candidate and "
        "history items in one call. Validation errors use FastAPI's shape: `{\"detail\": [{\"loc\", "
        "\"msg\", \"type\"}]}`, with the item's index in `loc` for batch items; other errors are "
        "`{\"detail\": \"message\"}`.",
        lifespan=lifespan,
    )
    app.state.sidserve = state
    app.router.route_class = GuardedRoute  # auth and rate limit before the body is read

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _public_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StorageUnavailable)
    async def _storage_unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
        state.metrics.redis_errors.labels(exc.operation).inc()
        log.warning("%s", exc)
        return JSONResponse(
            {"detail": f"{exc}. Retry later."}, status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )  # fmt: skip

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse(
            {"detail": "No model bundle is loaded (set SIDSERVE_BUNDLE)."}, status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )  # fmt: skip

    @app.post(
        "/v1/items", response_model=ItemOut, tags=["items"],
        responses={400: _E400, 413: _E413, 503: _E503, **writes["responses"]}, dependencies=writes["dependencies"],
        summary="Create or update one item",
    )  # fmt: skip
    async def upsert_item(item: ItemIn, serving: Ready) -> ItemOut:
        """Compute the item's SID from its embedding and store it. Idempotent: re-sending the same
        item answers `unchanged`; new content for a stored item replaces its SID (`updated`)."""
        x = _embeddings([item], serving.model.input_dim, batch=False)
        return (await _upsert(serving, state, [item], x))[0]

    @app.post(
        "/v1/items/batch", response_model=ItemBatchOut, tags=["items"],
        responses={400: _E400, 413: _E413, 415: _E415, 422: _E422, 503: _E503, **writes["responses"]},
        dependencies=writes["dependencies"], openapi_extra=_batch_openapi(),
        summary="Create or update a batch of items, all or nothing (per hash-tag group on a Redis Cluster)",
    )  # fmt: skip
    async def upsert_items(request: Request, serving: Ready) -> Response:
        """Validate every item, encode them in one ONNX run, write them in one Redis call. One
        invalid item rejects the call (422, its index in `loc`) and nothing is written. An ID
        repeated in the batch is written in order: its last occurrence wins.

        On a Redis Cluster (SIDSERVE_REDIS_CLUSTER) the write is one call per hash-tag group:
        each group's items are written all or nothing, the batch as a whole is not. If a node
        fails mid-batch the answer is 503 and some groups may already be stored; re-sending the
        same batch (idempotent) completes it, those items then answer `unchanged`.

        Two request bodies: JSON (`{"items": [{"item_id", "embedding"}]}`), or the compact binary
        `application/x-sidserve-embeddings` (float32, no per-float parsing; the Python client
        sends it), with the same checks and answer."""
        raw = await request.body()
        media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        dim = serving.model.input_dim
        if media == codec.EMBEDDINGS_MEDIA_TYPE:
            try:
                ids, x = codec.decode_embeddings(raw, dim, MAX_BATCH_ITEMS, MAX_ITEM_ID_BYTES)
            except codec.BodyError as e:
                raise RequestValidationError(e.errors) from e
        elif media == "application/json" or media.endswith("+json"):
            batch = _parse_json_body(raw, ItemBatchIn)
            ids, x = [item.item_id for item in batch.items], _embeddings(batch.items, dim, batch=True)
        else:
            raise HTTPException(415, f"Content-Type must be application/json or {codec.EMBEDDINGS_MEDIA_TYPE}")
        codes = await run_in_threadpool(serving.model.encode, x)  # CPU-bound: keep the event loop free
        statuses = await serving.store.write(ids, codes)
        serving.lookup.forget(ids)  # this process's readers see its own writes at once
        for status in set(statuses):
            state.metrics.items_written.labels(status).inc(statuses.count(status))
        version = serving.model.version
        # Built as plain dicts for orjson: ItemOut models cost ~10 ms per 1,000 items.
        items = [{"item_id": i, "sid": sid, "model_version": version, "status": st}
                 for i, sid, st in zip(ids, codes.tolist(), statuses, strict=True)]  # fmt: skip
        return Response(orjson.dumps({"model_version": version, "items": items}), media_type="application/json")

    @app.get(
        "/v1/items/{item_id:path}", response_model=ItemRead, tags=["items"],
        responses={404: _E404, 503: _E503, **reads["responses"]}, dependencies=reads["dependencies"],
        summary="Read an item's SID",
    )  # fmt: skip
    async def get_item(
        item_id: Annotated[ItemId, PathParam(description=f"Item ID, 1 to {MAX_ITEM_ID_BYTES} bytes, URL-encoded.")],
        serving: Ready,
    ) -> ItemRead:
        found = await serving.lookup.fetch([item_id])
        if not found.known[0]:
            raise HTTPException(404, f"item {item_id!r} has no SID under model {serving.model.version}")
        return ItemRead(item_id=item_id, sid=found.codes[0].tolist(), model_version=serving.model.version)

    @app.post(
        "/v1/features", response_model=FeaturesOut, tags=["features"],
        responses={413: _E413, 422: _E422, 503: _E503, **reads["responses"]}, dependencies=reads["dependencies"],
        openapi_extra=_features_openapi(), summary="SIDs and embedding-table rows of candidates and history, in one call",
    )  # fmt: skip
    async def features(request: Request, serving: Ready) -> Response:
        """Answers aligned with the request order; duplicates are answered at each position. Unknown
        items are not an error: `known` is false, `sids` null and `rows` all 0 (the reserved row)."""
        body = _parse_features_body(await request.body())
        ids = body.candidates + body.history
        found = await serving.lookup.fetch(ids)
        unknown = int(len(ids) - found.known.sum())
        state.metrics.feature_lookups.labels("true").inc(len(ids) - unknown)
        state.metrics.feature_lookups.labels("false").inc(unknown)
        content = features_json(serving.model.version, serving.features_out, found, len(body.candidates))
        return Response(content, media_type="application/json")

    @app.post(
        "/v1/_noop", response_model=NoopOut, tags=["benchmark"],
        responses={413: _E413, 422: _E422, 503: _E503, **reads["responses"]}, dependencies=reads["dependencies"],
        openapi_extra=_features_openapi(), summary="Benchmark aid: the features request without Redis or features (HTTP + framework floor)",
    )  # fmt: skip
    async def noop(request: Request, serving: Ready) -> Response:
        """Takes the features endpoint's body through the same route class, guard, body limit,
        parsing and validation, then answers a constant-size JSON without touching Redis. The
        difference between /v1/features and this endpoint is the cost of the lookup itself
        (`python -m loadtest bench`). Harmless in production: it reads nothing and writes nothing."""
        body = _parse_features_body(await request.body())
        return Response(orjson.dumps({"ids": len(body.candidates) + len(body.history)}), media_type="application/json")

    @app.get("/healthz", response_model=HealthOut, tags=["health"], summary="Liveness")
    async def healthz() -> HealthOut:
        """200 while the process serves HTTP; says nothing about Redis or the model (see /readyz)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz", response_model=ReadyOut, tags=["health"], summary="Readiness",
        responses={503: _retry_after_header("No model loaded, or Redis unreachable.")},
    )  # fmt: skip
    async def readyz(serving: Ready) -> ReadyOut:
        """200 when a model is loaded and Redis answers a PING; shows what this instance serves."""
        await serving.store.ping()
        m = serving.model
        return ReadyOut(
            status="ready", model_version=m.version, method=str(m.manifest.get("method", "")),
            input_dim=m.input_dim, levels=m.levels, codebook_size=m.codebook_size,
            feature_config=FeatureConfigOut(**serving.features_out),
        )  # fmt: skip

    @app.get(
        "/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
    )  # fmt: skip
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(_Instrument, metrics=state.metrics)  # added last = outermost: times everything
    return app


class _BodyLimit:
    """413 for request bodies over `limit` bytes, before they are parsed.

    Starlette's own limit answers in plain text; this one keeps the API's `{"detail": ...}` JSON.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse(self._detail, status_code=413)(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # chunked upload: no declared length to check up front
                raise HTTPException(413, self._detail["detail"])  # FastAPI answers it as JSON
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _detail(self) -> dict[str, str]:
        return {"detail": f"request body larger than the limit of {self.limit} bytes (SIDSERVE_MAX_BODY_BYTES)"}


class _Instrument:
    """Request count and latency per route template (not raw path: bounded label values).

    Pure ASGI rather than BaseHTTPMiddleware, which adds a task and a stream per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(endpoint, scope["method"]).observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()


def __getattr__(name: str) -> Any:
    # `uvicorn sidserve.app:app` looks up `app`: build it on first access, not at import.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
