"""The HTTP service: item upload (SIDs computed by the bundle's ONNX encoder, stored in Redis) and
the ranking servers' batch feature fetch.

Run it with the `sidserve` console script, or under uvicorn directly:
    uvicorn sidserve.app:app                      (settings from SIDSERVE_* environment variables)
    uvicorn --factory sidserve.app:create_app
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from . import bodies, codec, looplag, redis_client
from .admission import Admission
from .metrics import Metrics
from .middleware import BodyLimit, Instrument
from .responses import INDEX, SID
from .schemas import (
    MAX_BATCH_ITEMS,
    MAX_ITEM_ID_BYTES,
    ActiveIn,
    ErrorOut,
    FeatureConfigOut,
    FeaturesIn,
    FeaturesOut,
    HealthOut,
    ItemBatchIn,
    ItemBatchOut,
    ItemId,
    ItemIn,
    ItemOut,
    ItemRead,
    ModelsOut,
    ModelVersion,
    NoopOut,
    ReadyOut,
    RetirementOut,
)
from .security import DirectRoute, Guard, GuardedRoute, RouteHandler
from .settings import Settings
from .storage import StorageUnavailable
from .versions import (
    LifecycleConflict,
    ModelRegistry,
    NotReady,
    Serving,
    UnknownVersion,
    VersionNotServed,
    VersionWrite,
    load_servings,
)

log = logging.getLogger("sidserve")


class ServiceState:
    """Per-app resources, opened in the lifespan and closed after the last request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.admission = Admission(
            settings.max_in_flight, settings.shed_loop_lag_ms / 1000, settings.retry_after_s,
            on_shed=lambda path: self.metrics.requests_shed.labels(path).inc(),
            on_limit=lambda bound: self.metrics.in_flight_limit.labels(bound.path, bound.method).set(bound.limit),
        )  # fmt: skip
        self.registry: ModelRegistry | None = None
        self.redis: Redis | RedisCluster | None = None
        self._loop_lag: asyncio.Task[None] | None = None
        self.json_parser = bodies.JsonBatchParser(
            settings.json_parse_processes, settings.json_parse_offload_min_bytes, settings.ingest_nice
        )

    async def open(self) -> None:
        s = self.settings
        self.redis = redis_client.connect(
            s.redis_url, s.redis_connect_timeout, s.redis_socket_timeout, s.redis_max_connections, s.redis_cluster
        )
        if not s.bundle_paths:
            log.warning("no model bundle configured (SIDSERVE_BUNDLE / SIDSERVE_BUNDLES): not ready")
        # A broken bundle stops the startup here with BundleError's message: fail fast, not at first request.
        self.registry = ModelRegistry(load_servings(s, self.redis, self._count_cache), self.redis, s, self.metrics)
        await self.registry.start()
        self._loop_lag = asyncio.create_task(looplag.watch(self._observe_loop_lag))
        self.json_parser.start()

    def ready_registry(self) -> ModelRegistry:
        """The model registry; NotReady (503) until the lifespan has opened it."""
        if self.registry is None:
            raise NotReady()
        return self.registry

    @property
    def serving(self) -> Serving | None:
        """The active version's Serving; None while none can be served."""
        try:
            return self.registry.resolve(None) if self.registry is not None else None
        except NotReady:
            return None

    def _observe_loop_lag(self, lag_s: float) -> None:
        self.metrics.loop_lag.observe(lag_s)
        self.admission.observe_loop_lag(lag_s)

    def _count_cache(self, hits: int, misses: int) -> None:
        self.metrics.cache_hits.inc(hits)
        self.metrics.cache_misses.inc(misses)

    async def close(self) -> None:
        self.json_parser.close()
        if self._loop_lag is not None:
            self._loop_lag.cancel()
            await asyncio.wait([self._loop_lag])
        if self.registry is not None:
            await self.registry.stop()
        if self.redis is not None:
            await self.redis.aclose()
        self.metrics.close()


# Dependencies are async: FastAPI runs a sync one in the threadpool, two thread hops per request
# (the no-op endpoint took 281 us in-process with sync ones, 79 us with async ones).
async def get_state(request: Request) -> ServiceState:
    return request.app.state.sidserve


async def get_registry(state: Annotated[ServiceState, Depends(get_state)]) -> ModelRegistry:
    return state.ready_registry()


async def get_serving(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> Serving:
    return registry.resolve(None)


Ready = Annotated[Serving, Depends(get_serving)]
Models = Annotated[ModelRegistry, Depends(get_registry)]


def _not_loaded(e: VersionNotServed, version: str | None, loc: tuple[str, ...]) -> RequestValidationError:
    """422 naming the field whose model version is not served here."""
    return RequestValidationError([{"type": "version_not_loaded", "loc": loc, "msg": str(e), "input": version}])


def _resolve(registry: ModelRegistry, version: str | None, loc: tuple[str, ...]) -> Serving:
    """The request's model version, resolved once; 422 naming the field when it is not served here."""
    try:
        return registry.resolve(version)
    except VersionNotServed as e:
        raise _not_loaded(e, version, loc) from e


def _retry_after_header(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description,
            "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                        "schema": {"type": "integer"}}}}  # fmt: skip


_E400 = {"model": ErrorOut, "description": "The body could not be read as JSON text (e.g. not UTF-8)."}
_E415 = {"model": ErrorOut, "description": "Content-Type is neither JSON nor the binary embeddings format."}
_E422 = {"description": "Validation Error: `loc` names the field (with a batch item's index).",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
_E413 = {"model": ErrorOut, "description": "Request body larger than the configured limit (SIDSERVE_MAX_BODY_BYTES)."}
_E503 = _retry_after_header(
    "Redis unreachable, no model loaded, or the route's requests in flight in this process at their bound "
    "(SIDSERVE_MAX_IN_FLIGHT, lower while its event loop runs late); retry after Retry-After seconds, or on "
    "another replica."
)
_E404 = {"model": ErrorOut, "description": "No SID stored for this item under the requested (or active) model version."}
_E409 = {"model": ErrorOut, "description": "The version is the active one: activate another version first."}


def _features_openapi() -> dict[str, Any]:
    """The request body of the features and no-op routes (their handlers read the body themselves)."""
    schema = FeaturesIn.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _item_openapi() -> dict[str, Any]:
    """The request body of POST /v1/items (the handler reads the body itself); ItemIn is added to
    the components by _document_item_body."""
    schema = {"$ref": "#/components/schemas/ItemIn"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _batch_openapi() -> dict[str, Any]:
    """Both request bodies of POST /v1/items/batch (the handler reads the body itself)."""
    schema = ItemBatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # ItemIn is in the components (_document_item_body)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        codec.EMBEDDINGS_MEDIA_TYPE: {
            "schema": {"type": "string", "format": "binary", "description": codec.EMBEDDINGS_FORMAT_DOC}},
    }}}  # fmt: skip


async def _upsert(registry: ModelRegistry, metrics: Metrics, ids: list[str], x: np.ndarray) -> list[dict[str, Any]]:
    """Store the items under every loaded version; answer entries as plain dicts (ItemOut's shape)."""
    active, *others = await registry.write(ids, x)
    for written in (active, *others):
        for status in set(written.statuses):
            metrics.items_written.labels(written.version, status).inc(written.statuses.count(status))
    # Built as plain dicts for orjson: ItemOut models cost ~10 ms per 1,000 items.
    items = _version_entries(active, ids, with_id=True)
    for other in others:
        for item, entry in zip(items, _version_entries(other, ids, with_id=False), strict=True):
            item.setdefault("other_versions", []).append(entry)
    return items


def _version_entries(written: VersionWrite, ids: list[str], with_id: bool) -> list[dict[str, Any]]:
    """One version's part of each answer entry; collision_index only when the feature is on."""
    entries: list[dict[str, Any]] = [
        {"item_id": i, "sid": sid, "model_version": written.version, "status": st} if with_id
        else {"model_version": written.version, "sid": sid, "status": st}
        for i, sid, st in zip(ids, written.codes.tolist(), written.statuses, strict=True)
    ]  # fmt: skip
    if written.index is not None:
        for entry, k in zip(entries, written.index.tolist(), strict=True):
            entry["collision_index"] = k
    return entries


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


# FastAPI's OpenTelemetry instrumentation (SIDSERVE_OPENTELEMETRY) with every signal off. FastAPI
# versions without it keep unknown keyword arguments in `app.extra`, unused.
_NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    state = ServiceState(settings)
    # No key and no SIDSERVE_ALLOW_UNAUTHENTICATED: SecurityConfigError, no start.
    guard = Guard(settings, state.admission)
    write_access, read_access = guard.dependencies()
    writes = {"dependencies": [Depends(write_access)], "responses": guard.responses(protected=True)}
    reads = {"dependencies": [Depends(read_access)], "responses": guard.responses(protected=settings.protect_reads)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.open()
        # Move everything built at startup (app, schemas, models, key tables) out of the cyclic
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
        **({} if settings.opentelemetry else {"telemetry": _NO_TELEMETRY}),
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
            {"detail": exc.detail}, status_code=503, headers={"Retry-After": str(settings.retry_after_s)}
        )

    # The hot read path: POST routes taking the features body, declared first so that routing finds
    # them first. DirectRoute calls their endpoints without FastAPI's dependency solving. Added to
    # the app's own router, not through an included APIRouter, which FastAPI matches as a nested
    # router (a second match per request).
    def features_body_route(path: str, **options: Any) -> Callable[[RouteHandler], RouteHandler]:
        def register(endpoint: RouteHandler) -> RouteHandler:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], route_class_override=DirectRoute,
                responses={400: _E400, 413: _E413, 422: _E422, 503: _E503, **reads["responses"]},
                dependencies=reads["dependencies"], openapi_extra=_features_openapi(), **options,
            )  # fmt: skip
            return endpoint

        return register

    @features_body_route(
        "/v1/features", response_model=FeaturesOut, tags=["features"],
        summary="SIDs and embedding-table rows of candidates and history, in one call",
    )  # fmt: skip
    async def features(request: Request) -> Response:
        """Answers aligned with the request order; duplicates are answered at each position. Unknown
        items are not an error: `known` is false, `sids` null and `rows` all 0 (the reserved row).
        `version` picks a loaded model version (default: the active one)."""
        body = bodies.parse_features(await request.body())
        serving = _resolve(state.ready_registry(), body.version, ("body", "version"))
        ids = body.candidates + body.history
        found = await serving.lookup.fetch(ids)
        state.metrics.ids_known.inc(len(ids) - found.unknown)
        state.metrics.ids_unknown.inc(found.unknown)
        return Response(serving.encoder.encode(found.answers, len(body.candidates)), media_type="application/json")

    @features_body_route(
        "/v1/_noop", response_model=NoopOut, tags=["benchmark"],
        summary="Benchmark aid: the features request without Redis or features (HTTP + framework floor)",
    )  # fmt: skip
    async def noop(request: Request) -> Response:
        """Takes the features endpoint's body through the same route class, guard, body limit,
        parsing and validation, then answers a constant-size JSON without touching Redis. The
        difference between /v1/features and this endpoint is the cost of the lookup itself
        (`python -m loadtest bench`). Harmless in production: it reads nothing and writes nothing."""
        state.ready_registry().resolve(None)  # 503 while no model is served, like features
        body = bodies.parse_features(await request.body())
        return Response(orjson.dumps({"ids": len(body.candidates) + len(body.history)}), media_type="application/json")

    @app.post(
        "/v1/items", response_model=ItemOut, tags=["items"],
        responses={400: _E400, 413: _E413, 422: _E422, 503: _E503, **writes["responses"]}, dependencies=writes["dependencies"],
        openapi_extra=_item_openapi(), summary="Create or update one item",
    )  # fmt: skip
    async def upsert_item(request: Request, serving: Ready, registry: Models) -> Response:
        """Compute the item's SID from its embedding and store it. Idempotent: re-sending the same
        item answers `unchanged`; new content for a stored item replaces its SID (`updated`).

        With several model versions loaded, the item is stored under each (`other_versions`)."""
        item = bodies.parse_item(await request.body())
        x = bodies.embeddings_array([item], serving.model.input_dim, batch=False)
        [answer] = await _upsert(registry, state.metrics, [item.item_id], x)
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post(
        "/v1/items/batch", response_model=ItemBatchOut, tags=["items"],
        responses={400: _E400, 413: _E413, 415: _E415, 422: _E422, 503: _E503, **writes["responses"]},
        dependencies=writes["dependencies"], openapi_extra=_batch_openapi(),
        summary="Create or update a batch of items, all or nothing (per hash-tag group on a Redis Cluster)",
    )  # fmt: skip
    async def upsert_items(request: Request, serving: Ready, registry: Models) -> Response:
        """Validate every item, encode them in one ONNX run, write them in one Redis call. One
        invalid item rejects the call (422, its index in `loc`) and nothing is written. An ID
        repeated in the batch is written in order: its last occurrence wins.

        With several model versions loaded, the items are stored under each (one ONNX run and one
        Redis call per version, `other_versions` in the answer); each version's write is atomic,
        and after a 503 some versions may be stored: re-send the batch.

        On a Redis Cluster (SIDSERVE_REDIS_CLUSTER) the write is one call per hash-tag group:
        each group's items are written all or nothing, the batch as a whole is not. If a node
        fails mid-batch the answer is 503 and some groups may already be stored; re-sending the
        same batch (idempotent) completes it, those items then answer `unchanged`. The same holds
        on a single Redis with SIDSERVE_WRITE_CHUNK_ITEMS set: the batch is written in calls of
        that many items, each all or nothing (shorter stalls for the reads sharing that Redis).

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
            ids, x = await state.json_parser.parse(raw, dim)
        else:
            raise HTTPException(415, f"Content-Type must be application/json or {codec.EMBEDDINGS_MEDIA_TYPE}")
        items = await _upsert(registry, state.metrics, ids, x)
        version = items[0]["model_version"]
        return Response(orjson.dumps({"model_version": version, "items": items}), media_type="application/json")

    @app.get(
        "/v1/items/{item_id:path}", response_model=ItemRead, response_model_exclude_none=True, tags=["items"],
        responses={404: _E404, 503: _E503, **reads["responses"]}, dependencies=reads["dependencies"],
        summary="Read an item's SID",
    )  # fmt: skip
    async def get_item(
        item_id: Annotated[ItemId, PathParam(description=f"Item ID, 1 to {MAX_ITEM_ID_BYTES} bytes, URL-encoded.")],
        registry: Models,
        version: Annotated[
            ModelVersion | None, Query(description="A loaded model version (GET /v1/models); default: the active one.")
        ] = None,
    ) -> ItemRead:
        serving = _resolve(registry, version, ("query", "version"))
        found = await serving.lookup.fetch([item_id])
        if found.unknown:
            raise HTTPException(404, f"item {item_id!r} has no SID under model {serving.model.version}")
        answer, layout = found.answers[0], serving.lookup.layout
        return ItemRead(
            item_id=item_id, sid=orjson.loads(layout.value(answer, SID)), model_version=serving.model.version,
            collision_index=orjson.loads(layout.value(answer, INDEX)) if layout.indexed else None,
        )  # fmt: skip

    @app.get("/healthz", response_model=HealthOut, tags=["health"], summary="Liveness")
    async def healthz() -> HealthOut:
        """200 while the process serves HTTP; says nothing about Redis or the model (see /readyz)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz", response_model=ReadyOut, tags=["health"], summary="Readiness",
        responses={503: _retry_after_header("No model loaded, or Redis unreachable.")},
    )  # fmt: skip
    async def readyz(serving: Ready, registry: Models) -> ReadyOut:
        """200 when a model is loaded and Redis answers a PING; shows what this instance serves.
        Still 200 when the active version in Redis is not loaded here: this instance then serves
        its previous one, and `warnings` says so."""
        await serving.store.ping()
        m = serving.model
        return ReadyOut(
            status="ready", model_version=m.version, method=str(m.manifest.get("method", "")),
            input_dim=m.input_dim, levels=m.levels, codebook_size=m.codebook_size,
            feature_config=FeatureConfigOut(**serving.features_out),
            loaded_versions=[s.version for s in registry.loaded], active_version_in_redis=registry.active_in_redis,
            collision_index=registry.collision_index, warnings=registry.warnings,
        )  # fmt: skip

    @app.get(
        "/v1/models", response_model=ModelsOut, tags=["models"],
        responses={503: _E503, **writes["responses"]}, dependencies=writes["dependencies"],
        summary="Loaded model versions, the active one, retirements",
    )  # fmt: skip
    async def list_models(registry: Models) -> ModelsOut:
        """What this instance has loaded and serves by default, the active version shared through
        Redis (refreshed every SIDSERVE_ACTIVE_REFRESH_S), and each retired version's deletion."""
        return ModelsOut(**registry.describe())

    @app.put(
        "/v1/models/active", response_model=ModelsOut, tags=["models"],
        responses={400: _E400, 413: _E413, 503: _E503, **writes["responses"]}, dependencies=writes["dependencies"],
        summary="Switch the active model version, for every replica",
    )  # fmt: skip
    async def activate_model(body: ActiveIn, registry: Models) -> ModelsOut:
        """One atomic write in Redis; this instance serves the version at once, the other replicas
        within SIDSERVE_ACTIVE_REFRESH_S. The version must be loaded here and not retired (else 422);
        load it on every replica first: a replica without it keeps serving its previous version."""
        try:
            await registry.activate(body.version)
        except VersionNotServed as e:
            raise _not_loaded(e, body.version, ("body", "version")) from e
        return ModelsOut(**registry.describe())

    @app.delete(
        "/v1/models/{version}", response_model=RetirementOut, status_code=202, tags=["models"],
        responses={404: {"model": ErrorOut, "description": "The version is neither loaded here nor stored in Redis."},
                   409: _E409, 503: _E503, **writes["responses"]},
        dependencies=writes["dependencies"], summary="Retire a model version: stop serving it, delete its keys",
    )  # fmt: skip
    async def retire_model(
        version: Annotated[ModelVersion, PathParam(description="The model version to retire (not the active one).")],
        registry: Models,
    ) -> RetirementOut:
        """Stops serving and writing the version (here at once, elsewhere at the next refresh), then,
        after 2 refresh intervals + the Redis reply timeout, deletes its keys in the background with
        SCAN MATCH + UNLINK in small slices (never blocking Redis; every master of a cluster).
        Progress: GET /v1/models, `sidserve_retired_keys_deleted_total`. Retiring it again resumes
        (or re-sweeps) the deletion."""
        try:
            return RetirementOut(model_version=version, **await registry.retire(version))
        except UnknownVersion as e:
            raise HTTPException(404, str(e)) from e
        except LifecycleConflict as e:
            raise HTTPException(409, str(e)) from e

    @app.get(
        "/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
    )  # fmt: skip
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Instrument, metrics=state.metrics)  # added last = outermost: times everything
    _document_item_body(app)
    return app


def _document_item_body(app: FastAPI) -> None:
    """Put ItemIn in the OpenAPI components, where both upload routes' bodies refer to it: the
    routes read their bodies themselves, so FastAPI never sees the model (FastAPI's documented
    way to extend the schema: replace app.openapi)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = build()["components"]["schemas"]
            schemas["ItemIn"] = ItemIn.model_json_schema(ref_template="#/components/schemas/{model}")
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    # `uvicorn sidserve.app:app` looks up `app`: build it on first access, not at import.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
