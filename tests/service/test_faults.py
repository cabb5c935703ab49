"""Faults with real processes, no mocks (README "Reliability and durability"):

- Redis stopped, or hung (SIGSTOP), while several client threads load the service: every answer
  is 200 or a fast 503 + Retry-After, no request hangs, /readyz is 503 while Redis is away, and
  the service recovers by itself when Redis is back (no restart).
- Redis killed with SIGKILL right after N acknowledged item writes, restarted on the same data
  directory with deploy/redis.conf's AOF settings (appendfsync always and everysec): all N SIDs
  are there.
- Concurrent upserts of one item with different content from many clients, through two service
  instances: one consistent stored SID, one of the written ones, read back alike everywhere.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import pytest
from service_fixtures import AUTH, TEST_API_KEY, serve, service_settings

from sidserve.testing import RedisProcess
from sidserve_client import RetryPolicy, SidServeClient

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
THREADS = 6


@dataclass
class Load:
    """Client threads calling features and single upserts in a loop, recording every answer."""

    url: str
    x: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    # (thread, start time, seconds, status or exception name, Retry-After)
    calls: list[tuple[int, float, float, str, str | None]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=AUTH) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                start = time.monotonic()
                try:
                    if i % 2:
                        r = http.post("/v1/features", json={"candidates": [f"load-{n}-{j}" for j in range(50)]})
                    else:
                        item = {"item_id": f"load-{n}-{i % 50}", "embedding": self.x[i % len(self.x)].tolist()}
                        r = http.post("/v1/items", json=item)
                    outcome, retry_after = str(r.status_code), r.headers.get("retry-after")
                except httpx.HTTPError as e:
                    outcome, retry_after = type(e).__name__, None
                self.calls.append((n, start, time.monotonic() - start, outcome, retry_after))
                time.sleep(0.005)

    def __enter__(self) -> Self:
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(THREADS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def warm(self, calls_each: int = 3, timeout: float = 15.0) -> None:
        """Wait until every thread has made a few calls (creating 6 httpx clients takes a while)."""
        deadline = time.monotonic() + timeout
        while min(Counter(c[0] for c in list(self.calls)).get(n, 0) for n in range(THREADS)) < calls_each:
            assert time.monotonic() < deadline, "the load threads did not get going"
            time.sleep(0.02)

    def between(self, t0: float, t1: float) -> list[tuple[int, float, float, str, str | None]]:
        return [c for c in list(self.calls) if t0 <= c[1] < t1]


def _wait_ready(http: httpx.Client, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() - start < timeout, "the service did not recover"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("fault", ["stopped", "hung"])
def test_redis_fault_under_load(
    fault: str, sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_process: RedisProcess
) -> None:
    x, _ = sid_bundle_data
    settings = service_settings(sid_bundle, redis_process.url)  # connect 0.25 s, socket 0.5 s
    with serve(settings) as service, httpx.Client(base_url=service.url, timeout=10) as http, Load(service.url, x) as load:
        load.warm()
        t_fault = time.monotonic()
        redis_process.stop() if fault == "stopped" else redis_process.pause()
        time.sleep(0.3)
        r = http.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        time.sleep(1.2)
        t_back = time.monotonic()
        redis_process.start() if fault == "stopped" else redis_process.resume()
        recovery = _wait_ready(http)
        time.sleep(0.5)
        t_end = time.monotonic()

    before = [c for c in load.calls if c[1] + c[2] < t_fault]  # answered before the fault
    # Started once calls in flight at the fault had ended, answered before Redis returned.
    down = [c for c in load.between(t_fault + 0.6, t_back) if c[1] + c[2] < t_back - 0.05]
    after = load.between(t_back + recovery + 0.1, t_end)
    outcomes = Counter(c[3] for c in load.calls)
    print(f"\n{fault}: {len(load.calls)} calls {dict(outcomes)}, recovered {recovery:.2f}s after Redis returned, "
          f"max latency {max(c[2] for c in load.calls):.2f}s")  # fmt: skip
    assert set(outcomes) <= {"200", "503"}, outcomes  # no 500, no client-side timeout or reset
    assert before and all(c[3] == "200" for c in before)
    assert down and all(c[3] == "503" for c in down), Counter(c[3] for c in down)
    assert all(c[4] == "1" for c in load.calls if c[3] == "503")  # Retry-After on every 503
    # Fail fast: bounded by the socket timeouts (0.25 s connect, 0.5 s reply), never a hang.
    assert max(c[2] for c in load.calls) < 1.5
    assert after and all(c[3] == "200" for c in after), Counter(c[3] for c in after)
    assert {c[0] for c in after} == set(range(THREADS))  # every client thread recovered
    assert recovery < 3


def _acknowledged_writes(url: str, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Batch writes (1,000 items) and single writes from 4 threads: what the service acknowledged."""
    acked: dict[str, tuple[int, ...]] = {}
    with SidServeClient(url, api_key=TEST_API_KEY, batch_size=100) as client:
        for w in client.upsert_items([f"batch-{i}" for i in range(1000)], x[:1000]):
            acked[w.item_id] = w.sid

    def single(n: int) -> list[tuple[str, tuple[int, ...]]]:
        with SidServeClient(url, api_key=TEST_API_KEY) as client:
            return [(w.item_id, w.sid) for w in (client.upsert_item(f"one-{n}-{i}", x[1000 + 50 * n + i])
                                                 for i in range(50))]  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        for pairs in pool.map(single, range(4)):
            acked.update(pairs)
    return acked


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_acknowledged_writes_survive_kill_9(
    appendfsync: str, sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    x, _ = sid_bundle_data
    server = RedisProcess(tmp_path, config=DEPLOY / "redis.conf", args=["--appendfsync", appendfsync])
    server.start()
    try:
        assert server.client().config_get("appendfsync") == {"appendfsync": appendfsync}
        assert server.client().config_get("appendonly") == {"appendonly": "yes"}
        with serve(service_settings(sid_bundle, server.url)) as service:
            acked = _acknowledged_writes(service.url, x)
            server.kill()  # at once after the last acknowledgement: no shutdown, no final fsync
            assert (tmp_path / "appendonlydir").is_dir()
            server.start()  # same port, same directory, same config: replays the AOF
            retry = RetryPolicy(attempts=10, backoff=0.05, max_backoff=0.5)
            with SidServeClient(service.url, api_key=TEST_API_KEY, retry=retry) as client:
                ids = list(acked)
                f = client.features(ids[:1000])
                g = client.features(ids[1000:])
        known = np.concatenate([f.candidates.known, g.candidates.known])
        sids = f.candidates.sids + g.candidates.sids
        print(f"\nappendfsync {appendfsync}: {len(acked)} acknowledged, {int(known.sum())} there after kill -9")
        assert len(acked) == 1200 and known.all()
        assert sids == [acked[i] for i in ids]
        assert "append only file" in (tmp_path / "redis.log").read_text().lower()  # loaded from the AOF
    finally:
        server.stop()


def test_concurrent_upserts_of_one_item_agree(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_url: str
) -> None:
    x, _ = sid_bundle_data
    settings = service_settings(sid_bundle, redis_url)
    with serve(settings) as a, serve(settings) as b:
        # 8 contents whose SIDs all differ, so "which write won" is visible.
        with SidServeClient(a.url, api_key=TEST_API_KEY) as client:
            probe = client.upsert_items([f"probe-{i}" for i in range(200)], x[:200])
        rows, seen = [], set()
        for i, w in enumerate(probe):
            if w.sid not in seen:
                rows.append(i)
                seen.add(w.sid)
        rows = rows[:8]
        assert len(rows) == 8
        item = f"contended-{time.monotonic_ns()}"

        def writer(n: int) -> list[tuple[str, tuple[int, ...]]]:
            url = (a, b)[n % 2].url
            with SidServeClient(url, api_key=TEST_API_KEY) as c:
                return [(w.status, w.sid) for w in (c.upsert_item(item, x[rows[n]]) for _ in range(15))]

        with ThreadPoolExecutor(8) as pool:
            answers = [w for ws in pool.map(writer, range(8)) for w in ws]
        written = {tuple(probe[r].sid) for r in rows}
        statuses = Counter(s for s, _ in answers)
        assert statuses["created"] == 1, statuses  # exactly one writer found the item absent
        assert {sid for _, sid in answers} <= written
        reads = []
        for service in (a, b):
            with SidServeClient(service.url, api_key=TEST_API_KEY) as c:
                reads.append(c.get_item(item).sid)
                reads.append(c.features([item]).candidates.sids[0])
        print(f"\n{len(answers)} concurrent upserts of one item: {dict(statuses)}; stored {reads[0]}")
        assert len(set(reads)) == 1 and reads[0] in written
