"""Load shedding: a bound on each route's requests in flight in one process, lowered while the
process's event loop runs late.

Without a bound an overloaded worker takes every request it reads. They queue in its one event
loop, all of them slow down together, and once the backlog passes the Redis reply timeout they fail
with 503 anyway, after having cost their CPU. Beyond the bound a request is answered 503 with
Retry-After at once, before its body is parsed: a refusal costs little, the admitted requests stay
fast, and the caller can retry elsewhere (another replica).

Why the bound adapts: a fixed bound cannot tell sustained overload from a burst. Sized for bursts
(SIDSERVE_MAX_IN_FLIGHT, 32), it lets an overloaded worker admit enough work to keep its loop
saturated, so every request, admitted or refused, first waits in its socket for the loop to read
it: at ~2x what the machine serves, successful answers took p50 111 ms / p99 457 ms with 32,
against 10 / 30 ms with a fixed 4. Sized for overload (8 or less), it refuses requests at normal
load, in the bursts that follow short stalls. So the configured bound is a ceiling, and
sidserve.looplag's samples (every 50 ms) move every route's bound: once the loop has woken more
than SIDSERVE_SHED_LOOP_LAG_MS late SUSTAINED times in a row, each further late sample takes a
quarter off; once it has woken on time SUSTAINED times in a row, each further sample adds one back,
up to the ceiling (additive increase, multiplicative decrease, as TCP does with its window). A run,
not every late sample: a stall's own late sample then lowered the bound just before the burst
queued behind the stall was read, and 67-170 requests a minute were refused at 1,000 req/s where a
fixed 32 refused none. README "Reliability and durability" has the figures.

The bound is per route, so that a slow request on one route (a backfill's batch upload waiting for
the encoder) never takes another route's slot (the ranking servers' feature fetches); a late loop
lowers every route's bound, since it delays them all. Only the API routes are bounded: health,
readiness and metrics always answer, so a probe sees an overloaded process as alive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from fastapi import HTTPException

DECREASE = 0.75  # the bound's factor per late sample, within a run of SUSTAINED or more
FLOOR = 1  # a route always admits one request: the process keeps serving, if slowly
SUSTAINED = 4  # samples (50 ms apart): a run this long is overload, a shorter one a stall and its burst


@dataclass
class InFlightLimit:
    """One route's requests in flight in this process; `with limit:` around the handler's call.

    asyncio: a plain counter, no lock (nothing awaits between the check and the increment).
    """

    method: str  # "POST"
    path: str  # "/v1/features"
    ceiling: int  # SIDSERVE_MAX_IN_FLIGHT; 0 = no bound
    retry_after_s: int
    on_shed: Callable[[], None]
    in_flight: int = 0
    limit: int = field(init=False)  # the bound now: the ceiling, lowered while the loop runs late

    def __post_init__(self) -> None:
        self.limit = self.ceiling

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"

    def __enter__(self) -> None:
        if 0 < self.limit <= self.in_flight:
            self.on_shed()
            bound = "SIDSERVE_MAX_IN_FLIGHT" if self.limit == self.ceiling else (
                f"its bound, SIDSERVE_MAX_IN_FLIGHT = {self.ceiling}, is down to {self.limit} while this process's "
                "event loop runs late: SIDSERVE_SHED_LOOP_LAG_MS"
            )  # fmt: skip
            raise HTTPException(
                503, f"overloaded: {self.route} already has {self.in_flight} requests in flight in this process "
                f"({bound}). Retry later, or on another replica.",
                headers={"Retry-After": str(self.retry_after_s)},
            )  # fmt: skip
        self.in_flight += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.in_flight -= 1

    def adapt(self, loop_late: bool) -> None:
        """One loop-lag sample: a quarter off the bound if the loop woke late, else one more, within
        [FLOOR, ceiling]. An unbounded route stays unbounded."""
        if self.ceiling > 0:
            self.limit = max(FLOOR, int(self.limit * DECREASE)) if loop_late else min(self.ceiling, self.limit + 1)


class Admission:
    """This process's in-flight bounds, one per API route, adapted together to its event loop's lag."""

    def __init__(
        self, ceiling: int, lag_target_s: float, retry_after_s: int,
        on_shed: Callable[[str], None] = lambda path: None,
        on_limit: Callable[[InFlightLimit], None] = lambda limit: None,
    ) -> None:  # fmt: skip
        self.ceiling, self.lag_target_s, self.retry_after_s = ceiling, lag_target_s, retry_after_s
        self._on_shed, self._on_limit = on_shed, on_limit  # on_limit(route's bound) when it is set or changes
        self.limits: list[InFlightLimit] = []
        self._run = 0  # > 0: the last samples in a row that were late; < 0: on time

    def bound(self, method: str, path: str) -> InFlightLimit:
        """A new route's bound (one per guarded route); its refusals call on_shed(path)."""
        limit = InFlightLimit(method, path, self.ceiling, self.retry_after_s, lambda: self._on_shed(path))
        self.limits.append(limit)
        self._on_limit(limit)
        return limit

    def observe_loop_lag(self, lag_s: float) -> None:
        """A sidserve.looplag sample: how late the event loop woke. The bounds move only within a run
        of SUSTAINED samples on the same side of the target. 0 as the target: fixed bounds."""
        if self.lag_target_s <= 0:
            return
        late = lag_s > self.lag_target_s
        self._run = max(self._run, 0) + 1 if late else min(self._run, 0) - 1
        if abs(self._run) < SUSTAINED:
            return
        for limit in self.limits:
            before = limit.limit
            limit.adapt(late)
            if limit.limit != before:
                self._on_limit(limit)
