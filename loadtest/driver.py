"""The open-model driver: send each request at its intended time, measure from that time.

One asyncio loop on a `select()` selector: the default epoll selector rounds timer waits up
to whole milliseconds (CPython's `EpollSelector.select` ceils the timeout to 1 ms), which
would delay every send by ~0.5 ms on average; select() takes microseconds. The process's
timer slack is also lowered to 1 us (Linux prctl) so wake-ups are not coalesced.

Per request kind it records four histograms: latency from the intended send time (the
figure that counts, free of coordinated omission), the same for the successful answers alone
(a service that fails fast, e.g. by shedding load, would otherwise look fast), latency from the
actual write (service time, for comparison) and the generator's send lag (intended -> handed to
a connection).
A send more than `late_threshold_s` after its intended time is a *late send*: many of them
mean the generator, not the service, limits the run.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import selectors
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .hist import LatencyHistogram
from .rawhttp import Request

PR_SET_TIMERSLACK = 29


def lower_timer_slack(ns: int = 1000) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def new_loop() -> asyncio.AbstractEventLoop:
    lower_timer_slack()
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


GENERATOR_NICE = -10
GENERATOR_RT_PRIORITY = 1  # SCHED_FIFO's lowest: above every normal thread, below the kernel's own


def run(coro):
    """asyncio.run on the fine-grained loop, at a raised scheduling priority where allowed.

    The generator is the measuring instrument: on a 2-core machine shared with Redis and the
    service's workers, a descheduled generator sends late (counted as late sends; latency is still
    measured from the intended time). So while it drives, this thread runs under SCHED_FIFO (it
    runs as soon as a send is due; it sleeps between sends, and Linux caps real-time threads at
    95 % of a CPU anyway), or at nice -10 where real-time is not allowed. Scheduling classes and
    niceness are per thread on Linux: only this thread is raised, and only while it drives
    (Redis and the service were started before, at normal priority). Needs root or CAP_SYS_NICE;
    otherwise it runs at normal priority.
    """
    raised = _raise_priority()
    # The request pools and ID sets built before the run are many long-lived objects: a full
    # cyclic-GC pass over them stalls the loop for milliseconds (late sends). Frozen, it skips them.
    gc.collect()
    gc.freeze()
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        gc.unfreeze()
        if raised is not None:
            raised()


def _raise_priority() -> Callable[[], None] | None:
    """Run this thread under SCHED_FIFO, else at niceness GENERATOR_NICE; returns what undoes
    it, None if neither is allowed."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(GENERATOR_RT_PRIORITY))
        return lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, AttributeError, OSError):  # not allowed / not Linux
        pass
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        if before > GENERATOR_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, GENERATOR_NICE)
            return lambda: os.setpriority(os.PRIO_PROCESS, 0, before)
    except (PermissionError, AttributeError):
        pass
    return None


@dataclass
class RequestKind:
    """One kind of request in a scenario (a mix has several)."""

    name: str
    make: Callable[[int], Request]  # the i-th request of this kind, encoded (rawhttp.encode_request)
    expect_status: int = 200
    check: Callable[[bytes], str | None] | None = None  # sampled responses: None if fine, else why
    items_per_request: int = 1  # items carried (uploads) or IDs asked (fetch), for items/s


@dataclass
class KindStats:
    name: str
    items_per_request: int
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok_latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # successful answers only
    service: LatencyHistogram = field(default_factory=LatencyHistogram)
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    sent: int = 0
    ok: int = 0
    late: int = 0
    errors: Counter = field(default_factory=Counter)
    first_error: str | None = None

    def error(self, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        if self.first_error is None:
            self.first_error = detail[:300]


@dataclass
class DriveResult:
    rate: float
    duration_s: float
    scheduled: int
    kinds: list[KindStats]
    elapsed_s: float  # first intended send -> last completion
    dropped: int
    gen_cpu_s: float
    max_waiting_for_connection: int
    connections: int

    def total(self) -> KindStats:
        tot = KindStats("all", 0)
        for k in self.kinds:
            tot.latency.merge(k.latency)
            tot.ok_latency.merge(k.ok_latency)
            tot.service.merge(k.service)
            tot.send_lag.merge(k.send_lag)
            tot.sent += k.sent
            tot.ok += k.ok
            tot.late += k.late
            tot.errors.update(k.errors)
            tot.first_error = tot.first_error or k.first_error
        return tot


async def drive(
    pool,
    offsets: np.ndarray,
    kinds: Sequence[RequestKind],
    choice: np.ndarray | None = None,
    late_threshold_s: float = 0.002,
    check_every: int = 50,
    max_in_flight: int = 20_000,
    rate: float = 0.0,
    first_index: int = 0,
) -> DriveResult:
    """Send len(offsets) requests at start + offsets[i]; request i is of kind choice[i].

    Each kind's requests are kind.make(first_index), kind.make(first_index + 1), ...: a measured
    phase after a warm-up passes first_index = the warm-up's count, so it does not replay the
    warm-up's requests (whose items the service would still hold in its cache)."""
    n = len(offsets)
    if choice is None:
        choice = np.zeros(n, dtype=np.int64)
    stats = [KindStats(k.name, k.items_per_request) for k in kinds]
    counters = [first_index] * len(kinds)
    loop = asyncio.get_running_loop()
    done_count = 0
    dropped = 0
    last_done = [0.0]
    all_done = loop.create_future()

    def make_cb(ks: KindStats, kind: RequestKind, intended: float, check: bool):
        def cb(status: int, body: bytes, t_sent: float, t_done: float, err: str | None) -> None:
            nonlocal done_count
            ks.latency.record_s(t_done - intended)
            ks.service.record_s(t_done - t_sent)
            if err is not None:
                ks.error("transport", err)
            elif status != kind.expect_status:
                ks.error(f"http_{status}", f"HTTP {status}: {body[:200]!r}")
            elif check and kind.check is not None and (why := kind.check(body)) is not None:
                ks.error("bad_body", why)
            else:
                ks.ok += 1
                ks.ok_latency.record_s(t_done - intended)
            last_done[0] = t_done
            done_count += 1
            if done_count + dropped == n and not all_done.done():
                all_done.set_result(None)

        return cb

    cpu0 = time.process_time()
    start = time.perf_counter() + 0.005
    next_expire = start + 0.25
    i = 0
    while i < n:
        t = start + offsets[i]
        now = time.perf_counter()
        if t > now:
            await asyncio.sleep(t - now)
            now = time.perf_counter()
        while i < n and start + offsets[i] <= now:  # everything due now, oldest first
            intended = start + offsets[i]
            k = int(choice[i])
            ks, kind = stats[k], kinds[k]
            c = counters[k]
            counters[k] = c + 1
            lag = now - intended
            ks.send_lag.record_s(lag)
            if lag > late_threshold_s:
                ks.late += 1
            if pool.in_flight >= max_in_flight:
                dropped += 1
                ks.error("dropped", f"dropped: {max_in_flight} requests already in flight")
            else:
                ks.sent += 1
                pool.submit(kind.make(c), make_cb(ks, kind, intended, c % check_every == 0))
            i += 1
            now = time.perf_counter()
        if now >= next_expire:
            pool.expire(now)
            next_expire = now + 0.25
    if dropped == n:
        all_done.set_result(None)
    while not all_done.done():
        try:
            await asyncio.wait_for(asyncio.shield(all_done), 0.25)
        except TimeoutError:
            pool.expire(time.perf_counter())
    gen_cpu = time.process_time() - cpu0
    end = max(last_done[0], start + (offsets[-1] if n else 0.0))
    return DriveResult(
        rate=rate,
        duration_s=float(offsets[-1]) + (1.0 / rate if rate else 0.0) if n else 0.0,
        scheduled=n,
        kinds=stats,
        elapsed_s=end - start,
        dropped=dropped,
        gen_cpu_s=gen_cpu,
        max_waiting_for_connection=getattr(pool, "max_waiting", 0),
        connections=getattr(pool, "opened", 0),
    )
