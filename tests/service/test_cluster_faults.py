"""A Redis Cluster master killed (SIGKILL) while the service writes: the batch that hits it fails
with 503 + Retry-After, nothing acknowledged is lost (AOF, appendfsync always), and re-sending the
failed batch once the node is back completes it. A private cluster: the session's shared one
must stay healthy for the other tests."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from service_fixtures import AUTH, serve, service_settings

from sidserve.testing import RedisClusterProcess


def _batch(ids: list[str], x: np.ndarray) -> dict[str, object]:
    return {"items": [{"item_id": i, "embedding": row.tolist()} for i, row in zip(ids, x, strict=True)]}


def test_killed_master_fails_the_batch_with_503_and_loses_no_acknowledged_write(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    x, _ = sid_bundle_data
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{i}" for i in range(400)]
    first, second = ids[:200], ids[200:]
    cluster = RedisClusterProcess(tmp_path, args=["--appendonly", "yes", "--appendfsync", "always"])
    cluster.start()
    try:
        settings = service_settings(sid_bundle, cluster.url, redis_cluster=True)
        with serve(settings) as service, httpx.Client(base_url=service.url, headers=AUTH, timeout=15) as http:
            acknowledged = http.post("/v1/items/batch", json=_batch(first, x[:200]))
            assert acknowledged.status_code == 200
            sids = {item["item_id"]: item["sid"] for item in acknowledged.json()["items"]}

            cluster.nodes[1].kill()  # no shutdown: its acknowledged writes are only in its AOF
            t0 = time.monotonic()
            failed = http.post("/v1/items/batch", json=_batch(second, x[200:400]))
            failed_s = time.monotonic() - t0
            assert failed.status_code == 503, failed.text
            assert failed.headers["retry-after"] == str(settings.retry_after_s)
            assert "Redis unavailable" in failed.json()["detail"]

            cluster.nodes[1].start()  # same port, directory and nodes.conf: rejoins with its slots
            cluster.wait_ok()
            t1 = time.monotonic()
            deadline = t1 + 30
            while True:  # the client's topology may take a moment to recover: re-send as told
                retried = http.post("/v1/items/batch", json=_batch(second, x[200:400]))
                if retried.status_code == 200 or time.monotonic() > deadline:
                    break
                assert retried.status_code == 503, retried.text
                time.sleep(float(retried.headers["retry-after"]) / 10)
            assert retried.status_code == 200, retried.text
            print(f"\nnode killed: 503 after {failed_s:.2f} s; node back (cluster_state ok): batch accepted "
                  f"{time.monotonic() - t1:.2f} s later")
            # Groups on the surviving masters may have been written by the failed call.
            assert {item["status"] for item in retried.json()["items"]} <= {"created", "unchanged"}
            sids.update({item["item_id"]: item["sid"] for item in retried.json()["items"]})

            answer = http.post("/v1/features", json={"candidates": ids}).json()["candidates"]
            assert all(answer["known"])
            assert answer["sids"] == [sids[i] for i in ids]
    finally:
        cluster.stop()
