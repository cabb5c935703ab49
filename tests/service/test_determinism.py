"""Exact duplicates of an item always get the same SID: across calls, batch sizes and positions
in a batch (onnxruntime may pick other kernels for other batch shapes), and across two separate
service processes. This is the property behind the Meta paper's A/A-variance reduction: items
with the same content share every feature row."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from service_fixtures import TEST_API_KEY

from sidserve.model import SidModel
from sidserve.testing import free_port
from sidserve_client import SidServeClient


def test_same_embedding_same_sid_whatever_the_batch(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    x, _ = sid_bundle_data
    model = SidModel.load(sid_bundle)
    reference = model.encode(x)  # one batch of 2,000
    rng = np.random.default_rng(0)
    for batch in (1, 3, 64, 999):
        rows = rng.choice(len(x), size=batch, replace=False)
        assert np.array_equal(model.encode(x[rows]), reference[rows]), batch
    # The same row many times inside one batch, among others, at random positions.
    mixed = np.concatenate([x[:500], np.repeat(x[7:8], 300, axis=0)])[rng.permutation(800)]
    codes = model.encode(mixed)
    dup = np.all(mixed == x[7], axis=1)
    assert dup.sum() == 301 and (codes[dup] == reference[7]).all()
    threaded = SidModel.load(sid_bundle, intra_op_threads=2)  # other thread count, other session
    assert np.array_equal(threaded.encode(x), reference)


def _start(bundle: Path, redis_url: str, prefix: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "SIDSERVE_BUNDLE": str(bundle), "SIDSERVE_REDIS_URL": redis_url,
           "SIDSERVE_KEY_PREFIX": prefix, "SIDSERVE_API_KEYS": TEST_API_KEY, "SIDSERVE_LOG_LEVEL": "warning"}  # fmt: skip
    sidserve = shutil.which("sidserve", path=str(Path(sys.executable).parent)) or "sidserve"
    proc = subprocess.Popen([sidserve, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not ready within 30 s"
        time.sleep(0.1)


def test_duplicates_get_one_sid_across_processes(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_url: str
) -> None:
    x, _ = sid_bundle_data
    tag = str(time.monotonic_ns())
    # Two processes, each storing under its own key prefix: each SID is computed and stored anew.
    procs = [_start(sid_bundle, redis_url, f"det{n}-{tag}") for n in range(2)]
    try:
        for proc, url in procs:
            _wait_ready(proc, url)
        # Item i and its exact duplicate "copy-i" (same embedding, other ID); in process 0 they
        # go in one batch, in process 1 the copies go alone or in another batch order.
        ids = [f"item-{i}" for i in range(300)]
        copies = [f"copy-{i}" for i in range(300)]
        with SidServeClient(procs[0][1], api_key=TEST_API_KEY) as a, SidServeClient(procs[1][1], api_key=TEST_API_KEY) as b:
            first = a.upsert_items(ids + copies, np.concatenate([x[:300], x[:300]]))
            second = b.upsert_items(ids[::-1], x[:300][::-1])
            singles = [b.upsert_item(copies[i], x[i]) for i in range(0, 300, 30)]
            again = a.upsert_items(ids, x[:300])  # same process, again: unchanged
            sids_a = a.features(ids + copies).candidates.sids
            sids_b = b.features(ids).candidates.sids
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=10)
    by_id = {w.item_id: w.sid for w in first}
    assert all(by_id[f"item-{i}"] == by_id[f"copy-{i}"] for i in range(300))
    assert {w.item_id: w.sid for w in second} == {i: by_id[i] for i in ids}
    assert all(w.sid == by_id[w.item_id.replace("copy", "item")] for w in singles)
    assert {w.status for w in again} == {"unchanged"}
    assert sids_a == [by_id[i] for i in ids + copies] and sids_b == [by_id[i] for i in ids]
