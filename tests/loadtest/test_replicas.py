"""Several replicas under test: the generator spreads requests over them, and /metrics of one
replica covers all (procs.Service, rawhttp.SpreadPool)."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import pytest

from loadtest import procs, promparse
from loadtest.rawhttp import Callback, SpreadPool, encode_request, pool_for


class _Recorder:
    """A pool that records what it was given (stands in for a replica's connection pool)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def submit(self, request: bytes, cb: Callback) -> None:
        self.requests.append(request)


def test_requests_go_to_the_replicas_in_turn() -> None:
    pools = [_Recorder(), _Recorder(), _Recorder()]
    spread = SpreadPool(pools)  # type: ignore[arg-type]
    for i in range(7):
        spread.submit(b"%d" % i, lambda *_: None)
    assert [len(p.requests) for p in pools] == [2, 3, 2]
    assert sorted(r for p in pools for r in p.requests) == [b"%d" % i for i in range(7)]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_replicas_serve_and_report_together(sid_bundle: Path, redis_url: str) -> None:
    with procs.Service(sid_bundle, redis_url, replicas=3) as svc:
        assert len(set(svc.ports)) == 3 and svc.cpu_s() is not None

        async def fetch(n: int) -> list[int]:
            pool = pool_for(svc.ports)
            assert isinstance(pool, SpreadPool)
            done: asyncio.Queue[int] = asyncio.Queue()
            request = encode_request("POST", "/v1/features", svc.target, b'{"candidates": ["never-written"]}')
            await pool.warm(2)
            for _ in range(n):
                pool.submit(request, lambda status, *_: done.put_nowait(status))
            statuses = [await asyncio.wait_for(done.get(), 10) for _ in range(n)]
            assert all(p.opened >= 1 for p in pool.pools)  # both replicas were connected to
            pool.close()
            return statuses

        assert asyncio.run(fetch(10)) == [200] * 10
        for port in svc.ports:  # each replica's /metrics counts the other's requests too
            assert _features_counted(svc, port) == 10
        # The in-flight bound is a per-process gauge: one series per live replica. A replica that
        # exits takes its series with it; so does one that is killed (it cannot clean up: the
        # scrape drops the series of processes that no longer run).
        assert len(_features_bound_pids(svc, svc.ports[0])) == 3
        svc.procs[1].terminate()
        svc.procs[1].wait(timeout=30)
        assert _features_bound_pids(svc, svc.ports[0]) == {str(svc.procs[0].pid), str(svc.procs[2].pid)}
        svc.procs[2].kill()
        svc.procs[2].wait(timeout=30)
        assert _features_bound_pids(svc, svc.ports[0]) == {str(svc.procs[0].pid)}


def _features_counted(svc: procs.Service, port: int) -> float:
    """POST /v1/features requests on a replica's /metrics, once all 10 are there (a request is
    counted just after its answer is sent, so the client can ask before the last count lands)."""
    deadline = time.monotonic() + 5
    while True:
        status, body = svc.get("/metrics", base=f"http://127.0.0.1:{port}")
        assert status == 200
        count = promparse.counter_by_label(body.decode(), "sidserve_requests_total", "endpoint").get("/v1/features", 0)
        if count >= 10 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def _features_bound_pids(svc: procs.Service, port: int) -> set[str]:
    """The pids whose sidserve_in_flight_limit of POST /v1/features is on a replica's /metrics."""
    status, body = svc.get("/metrics", base=f"http://127.0.0.1:{port}")
    assert status == 200
    series = re.findall(r'^sidserve_in_flight_limit\{([^}]*)\} (\S+)$', body.decode(), re.M)
    return {
        re.search(r'pid="(\d+)"', labels).group(1)  # type: ignore[union-attr]
        for labels, value in series
        if 'endpoint="/v1/features"' in labels and float(value) == 32
    }
