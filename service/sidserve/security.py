"""API keys and per-key rate limits as FastAPI dependencies (README "Security"), and the route
classes that check them, then the route's in-flight bound (sidserve.admission), before a request's
body is read.

- Keys: `SIDSERVE_API_KEYS` (comma-separated) and/or `SIDSERVE_API_KEYS_FILE` (one per line, `#`
  comments and blank lines ignored; re-read when the file changes, so a mounted secret can be
  rotated without a restart). Every listed key is valid, so a rotation adds the new key, moves
  the clients, then removes the old one.
- Writes always need `Authorization: Bearer <key>`; reads (features, GET item) only with
  `SIDSERVE_PROTECT_READS=true`. No header (or another scheme): 401 with `WWW-Authenticate:
  Bearer`; a key that is not listed: 403.
- The presented key is compared with every configured key, in constant time: both sides are
  SHA-256 digests (equal length, so length leaks nothing either) compared by hmac.compare_digest,
  and the loop never stops early.
- No key configured: the service refuses to start unless `SIDSERVE_ALLOW_UNAUTHENTICATED=true`
  (then it is open to anyone and says so at startup). Failing closed means a deployment that
  forgot its secret mount does not silently accept writes from the whole network.
- Rate: a token bucket per key (per client address for unauthenticated calls), refilled at
  `SIDSERVE_RATE_LIMIT_PER_S` with `SIDSERVE_RATE_LIMIT_BURST` capacity; over it: 429 with
  Retry-After. The buckets live in the process: with W workers and R replicas a key may make
  up to W x R times the rate. A shared (Redis) limiter would cost a round trip per request.
- Keys never reach logs or error messages: they are kept as digests, and a key is named by the
  first 8 hex digits of its digest ("key 3f2a9c0d") where one must be named.

`GuardedRoute` runs the check before FastAPI reads and parses the request body, so a caller
without a valid key, or over its rate, or beyond the route's in-flight bound, costs no JSON
parsing, no ONNX run and no Redis call.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from .admission import Admission
from .keys import SecurityConfigError, configured_keys, env_keys, key_digest, read_keys_file
from .schemas import ErrorOut
from .settings import Settings

log = logging.getLogger("sidserve")

KEYS_FILE_CHECK_S = 5.0  # how often the keys file's mtime is looked at
MAX_BUCKETS = 100_000  # bound on remembered clients (anonymous callers are keyed by address)
RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]  # also a DirectRoute's endpoint


@dataclass
class TokenBucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Per-identity token buckets of one process (asyncio: no lock needed, no await inside)."""

    rate: float  # tokens per second; 0 disables the limiter
    burst: float
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def acquire(self, identity: str) -> float:
        """0 when the call may proceed, else the seconds until a token is available."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(identity)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self.buckets[identity] = TokenBucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        # A bucket that would be full again carries no state: drop those; if none, drop the oldest half.
        full_after = self.burst / self.rate
        idle = [k for k, b in self.buckets.items() if now - b.updated >= full_after]
        if not idle:
            idle = sorted(self.buckets, key=lambda k: self.buckets[k].updated)[: len(self.buckets) // 2]
        for k in idle:
            del self.buckets[k]


_bearer = HTTPBearer(auto_error=False, description="An API key from SIDSERVE_API_KEYS / SIDSERVE_API_KEYS_FILE.")
_bearer_dep = Depends(_bearer)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


class Guard:
    """The app's key set, rate limiter and in-flight bound; `write` and `read` are its route dependencies."""

    def __init__(self, settings: Settings, admission: Admission) -> None:
        self._digests = configured_keys(settings)
        self._env_digests = [key_digest(k) for k in env_keys(settings)]
        self._file = settings.api_keys_file
        self._file_stamp = self._stamp()
        self._file_checked = time.monotonic()
        self.protect_reads = settings.protect_reads
        self.limiter = RateLimiter(settings.rate_limit_per_s, max(1.0, settings.rate_limit_burst))
        self.admission = admission  # the route bounds, adapted by the app's event-loop lag samples
        if not self._digests:
            log.warning(
                "NO AUTHENTICATION: no API key configured and SIDSERVE_ALLOW_UNAUTHENTICATED=true; "
                "anyone who can reach this port can write items. Set SIDSERVE_API_KEYS_FILE for production."
            )
        else:
            log.info("API keys: %d configured; reads %s", len(self._digests),
                     "need a key" if self.protect_reads else "are open")  # fmt: skip

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = self._file.stat() if self._file else None
        except OSError:
            return None
        return (st.st_mtime, st.st_size) if st else None

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._file_checked < KEYS_FILE_CHECK_S:
            return
        self._file_checked = now
        stamp = self._stamp()
        if stamp == self._file_stamp:
            return
        try:
            digests = self._env_digests + [key_digest(k) for k in read_keys_file(self._file)]
        except SecurityConfigError as e:
            log.error("keeping the current API keys: %s", e)  # a half-written file must not lock everyone out
            return
        if not digests:
            log.error("keeping the current API keys: SIDSERVE_API_KEYS_FILE %s now lists none", self._file)
            return
        self._file_stamp, self._digests = stamp, digests
        log.info("API keys reloaded from %s: %d configured", self._file, len(digests))

    def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        """The caller's identity for the rate limiter ("key <digest prefix>"); 401/403 otherwise."""
        self._reload_if_changed()
        if credentials is None:
            raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
        presented = key_digest(credentials.credentials)
        match = False
        for digest in self._digests:  # no early exit: the time does not depend on which key matched
            match |= hmac.compare_digest(presented, digest)
        if not match:
            raise HTTPException(403, "API key not accepted")
        return "key " + presented.hex()[:8]

    def check(self, request: Request, credentials: HTTPAuthorizationCredentials | None, protected: bool) -> None:
        if request.scope.get("sidserve.guarded"):
            return  # GuardedRoute already checked this request before reading its body
        request.scope["sidserve.guarded"] = True
        if protected and self.enabled:
            identity = self.authenticate(credentials)
        else:
            identity = "addr " + (request.client.host if request.client else "unknown")
        wait = self.limiter.acquire(identity)
        if wait > 0:
            raise HTTPException(
                429, f"rate limit of {self.limiter.rate:g} requests/s per key exceeded (SIDSERVE_RATE_LIMIT_PER_S)",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )  # fmt: skip

    def dependencies(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(write, read) dependencies. Only the protected ones declare the bearer scheme, so
        OpenAPI shows a lock exactly where a key is needed."""

        async def write_access(request: Request, credentials: HTTPAuthorizationCredentials | None = _bearer_dep):
            self.check(request, credentials, protected=True)

        async def open_read(request: Request) -> None:
            self.check(request, None, protected=False)

        async def protected_read(request: Request, credentials: HTTPAuthorizationCredentials | None = _bearer_dep):
            self.check(request, credentials, protected=True)

        write_access.guard = open_read.guard = protected_read.guard = self  # type: ignore[attr-defined]
        write_access.protected = protected_read.protected = True  # type: ignore[attr-defined]
        open_read.protected = False  # type: ignore[attr-defined]
        return write_access, (protected_read if self.protect_reads else open_read)

    def responses(self, protected: bool) -> dict[int | str, dict[str, Any]]:
        """OpenAPI entries for the answers a guarded route may give."""
        out: dict[int | str, dict[str, Any]] = {
            429: {"model": ErrorOut, "description": "Over the per-key request rate (per process); retry after Retry-After.",
                  "headers": {"Retry-After": {"description": "Seconds until a request is accepted again.",
                                              "schema": {"type": "integer"}}}},
        }  # fmt: skip
        if protected:
            out[401] = {"model": ErrorOut, "description": "No API key (`Authorization: Bearer <key>`).",
                        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}}  # fmt: skip
            out[403] = {"model": ErrorOut, "description": "The API key is not one of the configured keys."}
        return out


class GuardedRoute(APIRoute):
    """An APIRoute that runs its guard dependency, and then its in-flight bound, before the body is
    read and parsed.

    FastAPI reads and JSON-decodes the body before it solves dependencies; for the guard that
    order would let an unauthenticated caller make the server parse up to max_body_bytes of JSON.
    The dependency still runs afterwards and returns at once (the request is marked checked).
    """

    def get_route_handler(self) -> RouteHandler:
        handler = super().get_route_handler()
        guard_dep = self._guard_dependency()
        if guard_dep is None:
            return handler
        return self._guarded(guard_dep, handler)

    def _guarded(self, guard_dep: Callable[..., Any], handler: RouteHandler) -> RouteHandler:
        """`handler` behind the guard's check and this route's in-flight bound."""
        guard: Guard = guard_dep.guard  # type: ignore[attr-defined]
        protected: bool = guard_dep.protected  # type: ignore[attr-defined]
        in_flight = guard.admission.bound("/".join(sorted(self.methods)), self.path)

        async def guarded(request: Request) -> Response:
            credentials = await _bearer(request) if protected else None
            guard.check(request, credentials, protected)
            with in_flight:
                return await handler(request)

        return guarded

    def _guard_dependency(self) -> Callable[..., Any] | None:
        return next((d.call for d in self.dependant.dependencies if getattr(d.call, "guard", None) is not None), None)


class DirectRoute(GuardedRoute):
    """A guarded route whose endpoint takes the Request alone and returns a Response, called
    directly: FastAPI's per-request dependency solving and response handling are skipped.

    For the hot read path (POST /v1/features and its no-op twin): that machinery cost ~20 us of
    the ~90 us no-op in-process, and more under load, where every extra layer of Python runs
    with cold CPU caches. The route is declared, documented (OpenAPI) and guarded like any
    other; a route with any dependency besides the guard, or an endpoint taking more than the
    request, is refused at startup, so nothing declared can be silently skipped.
    """

    def get_route_handler(self) -> RouteHandler:
        guard_dep = self._guard_dependency()
        declared = [d.call for d in self.dependant.dependencies]
        if guard_dep is None or declared != [guard_dep]:
            raise TypeError(f"{self.path}: a DirectRoute's one dependency is the guard")
        if [p.name for p in inspect.signature(self.endpoint).parameters.values()] != ["request"]:
            raise TypeError(f"{self.path}: a DirectRoute's endpoint takes only `request`")
        return self._guarded(guard_dep, self.endpoint)
