"""How late this worker's event loop runs: the time in which it could serve no request.

A task sleeps `interval_s` again and again and records how much later than asked it woke up.
One worker serves its requests on one thread, so anything that holds the loop (a long synchronous
step, a garbage-collection pass, a dict rebuild, the process descheduled by a busy machine) delays
every request in flight by as much, and shows here even when no request was in flight. The
request latency histogram says that the tail is slow; this says whether the worker's loop was held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL_S = 0.05  # 20 wake-ups/s (each a timer and one histogram observe): catches stalls of a few ms


async def watch(observe: Callable[[float], None], interval_s: float = INTERVAL_S) -> None:
    """Calls observe(seconds late) after each sleep, until cancelled."""
    # time.monotonic, not loop.time(): uvloop's clock has millisecond steps (libuv's cached uv_now)
    # and its timers fire up to ~1 ms late by design, so lags below ~2 ms are timer resolution.
    while True:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, time.monotonic() - due))
