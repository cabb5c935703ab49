"""JSON batch bodies parsed in a helper process (sidserve.bodies.JsonBatchParser) answer exactly as
when parsed on the event loop: same items, same errors; a helper that dies is replaced; ingest
work runs at SIDSERVE_INGEST_NICE."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import AUTH, LiveService, serve, service_settings

from sidserve.bodies import JsonBatchParser
from sidserve.schemas import MAX_BATCH_ITEMS
from sidserve.versions import INLINE_ENCODE_MAX_ITEMS

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def offloading(sid_bundle: Path, redis_url: str) -> Iterator[LiveService]:
    """A service whose JSON batch bodies, small ones included, all go to its helper process."""
    settings = service_settings(sid_bundle, redis_url, json_parse_processes=1, json_parse_offload_min_bytes=0)
    with serve(settings) as service:
        yield service


def _parser(service: LiveService) -> JsonBatchParser:
    return service.app.state.sidserve.json_parser


def _bodies(x: np.ndarray) -> list[bytes]:
    """Batch bodies that fail in every way the parser tells apart, and one good one."""
    e = x[0].tolist()
    good = [{"item_id": f"ok-{i}", "embedding": x[i].tolist()} for i in range(4)]
    dumps = lambda items: json.dumps({"items": items}).encode()  # noqa: E731
    return [
        b"",  # no body
        b'{"items": [{"item_id": "a", "embedding": [1,',  # not JSON: the position is in loc
        json.dumps({"items": [{"item_id": "utf-16", "embedding": e}]}).encode("utf-16"),  # JSON may be UTF-16
        b"\xff\xfe\xfa not text",  # 400
        b"[" * 100_000 + b"]" * 100_000,  # nested too deeply
        dumps([]),
        dumps([{"item_id": f"i{i}", "embedding": e} for i in range(MAX_BATCH_ITEMS + 1)]),
        dumps(good[:2] + [{"item_id": "short", "embedding": e[:5]}] + good[3:]),  # D mismatch at index 2
        dumps(good[:1] + [{"item_id": "big", "embedding": [1e39] + e[1:]}]),  # beyond float32 at index 1
        dumps([{"item_id": "n", "embedding": [float("nan")] * len(e)}] * 5),  # NaN everywhere: capped
        dumps([{"item_id": "", "embedding": e}]),
        dumps(good),
    ]


def test_helper_answers_like_the_event_loop(
    offloading: LiveService, live_service: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    x, _ = sid_bundle_data
    bodies = _bodies(x)
    before = _parser(offloading).offloaded
    with httpx.Client(headers=AUTH, timeout=30) as http:
        for body in bodies:
            helper = http.post(f"{offloading.url}/v1/items/batch", content=body, headers=JSON)
            in_line = http.post(f"{live_service.url}/v1/items/batch", content=body, headers=JSON)
            assert helper.status_code == in_line.status_code, (body[:60], helper.text, in_line.text)
            if helper.status_code == 200:  # both services write to one Redis: the second finds them stored
                assert [i["sid"] for i in helper.json()["items"]] == [i["sid"] for i in in_line.json()["items"]]
            else:
                assert helper.json() == in_line.json(), body[:60]
    assert _parser(offloading).offloaded - before == len(bodies)
    assert _parser(live_service).offloaded == 0  # json_parse_processes=0: every body in-line


def test_a_dead_helper_is_replaced(offloading: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    parser = _parser(offloading)
    [pid] = parser.helper_pids
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    ids = [f"{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    body = json.dumps({"items": [{"item_id": i, "embedding": x[n].tolist()} for n, i in enumerate(ids)]}).encode()
    with httpx.Client(base_url=offloading.url, headers=AUTH, timeout=30) as http:
        first = http.post("/v1/items/batch", content=body, headers=JSON)  # parsed in-line; a new helper starts
        assert first.status_code == 200 and [i["status"] for i in first.json()["items"]] == ["created"] * 3
        offloaded = parser.offloaded
        again = http.post("/v1/items/batch", content=body, headers=JSON)
    assert again.status_code == 200 and [i["status"] for i in again.json()["items"]] == ["unchanged"] * 3
    assert parser.offloaded == offloaded + 1 and parser.helper_pids and pid not in parser.helper_pids


def test_small_bodies_stay_in_line(sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    body = json.dumps({"items": [{"item_id": "a", "embedding": x[0].tolist()}]}).encode()
    parser = JsonBatchParser(processes=1, offload_min_bytes=len(body) + 1)
    parser.start()
    try:
        ids, got = asyncio.run(parser.parse(body, x.shape[1]))
    finally:
        parser.close()
    assert ids == ["a"] and np.array_equal(got, x[:1].astype(np.float32)) and parser.offloaded == 0


def test_helpers_stop_with_the_service(sid_bundle: Path, redis_url: str) -> None:
    with serve(service_settings(sid_bundle, redis_url, json_parse_processes=2)) as service:
        helpers = _parser(service).helper_pids
        assert len(helpers) == 2 and all(map(_running, helpers))
    assert not any(map(_running, helpers))


def test_helpers_exit_with_a_killed_worker() -> None:
    """A worker killed outright cannot stop its helper: the helper notices and exits by itself."""
    worker = (
        "import os\nfrom sidserve.bodies import JsonBatchParser\n"
        "parser = JsonBatchParser(processes=1, offload_min_bytes=0)\nparser.start()\n"
        "print(parser.helper_pids[0], flush=True)\nos.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    helper = int(done.stdout)
    deadline = time.monotonic() + 20  # it may still be importing; it checks its worker every second
    while _running(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(helper)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between the open and the read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
def test_ingest_runs_at_lower_priority(offloading: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    """The helpers and the batch encoder threads run at SIDSERVE_INGEST_NICE; the worker's own
    threads (the event loop's) keep theirs."""
    x, _ = sid_bundle_data
    # More items than are encoded in-line: this batch goes to the encoder threads.
    items = [{"item_id": f"nice-{n}", "embedding": x[n % len(x)].tolist()} for n in range(INLINE_ENCODE_MAX_ITEMS + 1)]
    with httpx.Client(base_url=offloading.url, headers=AUTH, timeout=30) as http:  # the helper has started
        assert http.post("/v1/items/batch", json={"items": items}).status_code == 200
    base = os.getpriority(os.PRIO_PROCESS, 0)  # niceness adds up: the tests may run niced already
    lowered = min(19, base + offloading.settings.ingest_nice)
    assert offloading.settings.ingest_nice == 10
    for pid in _parser(offloading).helper_pids:
        assert os.getpriority(os.PRIO_PROCESS, pid) == lowered
    # The service runs in this process (a uvicorn thread): its encoder threads are ours to look at.
    # Every service the tests start uses the default SIDSERVE_INGEST_NICE.
    encoders = [t for t in threading.enumerate() if t.name.startswith("sidserve-encode")]
    assert encoders, "the batch should have started an encoder thread"
    for thread in encoders:
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == lowered, thread.name
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
