"""sidserve.looplag: a loop held by synchronous work shows as lag; an idle loop shows ~none."""

from __future__ import annotations

import asyncio
import time

from sidserve import looplag


async def _lags_while(hold_s: float) -> list[float]:
    lags: list[float] = []
    watcher = asyncio.create_task(looplag.watch(lags.append, interval_s=0.01))
    await asyncio.sleep(0.05)  # a few idle rounds
    time.sleep(hold_s)  # synchronous work holding the loop
    await asyncio.sleep(0.05)
    watcher.cancel()
    await asyncio.wait([watcher])
    return lags


def test_a_held_loop_shows_as_lag() -> None:
    lags = asyncio.run(_lags_while(0.08))
    assert len(lags) >= 5
    assert 0.06 <= max(lags) < 1.0  # the round that was due during the 80 ms hold
    assert sorted(lags)[len(lags) // 2] < 0.02  # the other rounds were on time (timer resolution)
