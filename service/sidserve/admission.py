"""Load shedding: a bound on each route's requests in flight in one process (SIDSERVE_MAX_IN_FLIGHT).

Without it an overloaded worker takes every request it reads. They queue in its one event loop,
all of them slow down together, and once the backlog passes the Redis reply timeout they fail
with 503 anyway, after having cost their CPU. Beyond the bound a request is answered 503 with
Retry-After at once, before its body is parsed: a refusal costs little, the admitted requests stay
fast, and the caller can retry elsewhere (another replica). README "Reliability and durability"
has the measured effect (fetch_300_uniform at 3x what the machine serves: successful answers'
p99 11.2 s without the bound, 252 ms with 32).

The bound is per route, so that slow work on one route (a backfill's batch uploads waiting for
the encoder) never sheds another's (the ranking servers' feature fetches). Only the API routes
are bounded: health, readiness and metrics always answer, so a probe sees an overloaded process
as alive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from fastapi import HTTPException


@dataclass
class InFlightLimit:
    """One route's requests in flight in this process; `with limit:` around the handler's call.

    asyncio: a plain counter, no lock (nothing awaits between the check and the increment).
    """

    route: str  # "POST /v1/features", for the 503's message
    limit: int  # 0 = no bound
    retry_after_s: int
    on_shed: Callable[[], None]
    in_flight: int = 0

    def __enter__(self) -> None:
        if 0 < self.limit <= self.in_flight:
            self.on_shed()
            raise HTTPException(
                503, f"overloaded: {self.route} already has {self.limit} requests in flight in this process "
                "(SIDSERVE_MAX_IN_FLIGHT). Retry later, or on another replica.",
                headers={"Retry-After": str(self.retry_after_s)},
            )  # fmt: skip
        self.in_flight += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.in_flight -= 1
