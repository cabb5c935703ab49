"""The service's own ASGI middleware: the request body limit (413 as JSON) and per-route request
metrics (sidserve.app adds both)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics


class BodyLimit:
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


class Instrument:
    """Request count and latency per route template (not raw path: bounded label values).

    Pure ASGI rather than BaseHTTPMiddleware, which adds a task and a stream per request. The
    labelled series are looked up once per (route, method, status), not per request: prometheus-
    client's labels() cost ~10 us a call, and there are few such triples (route templates, the
    methods the HTTP parser accepts, statuses).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # -> (latency, requests) children

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
            key = (getattr(scope.get("route"), "path", "unmatched"), scope["method"], status)
            series = self._series.get(key)
            if series is None:
                endpoint, method, _ = key
                series = self._series[key] = (
                    self.metrics.latency.labels(endpoint, method), self.metrics.requests.labels(endpoint, method, str(status))
                )  # fmt: skip
            series[0].observe(time.perf_counter() - start)
            series[1].inc()
