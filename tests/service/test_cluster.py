"""The service on a real 3-master Redis Cluster (tests/redis_fixtures.py: redis_cluster): reads and
writes are split by hash-tag group, each group's Function call goes to the node owning its slot,
and the answers come back in request order. The API tests of test_api.py also run on the cluster
([cluster] ids); these check what is specific to it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import redis
import redis.cluster
from service_fixtures import TEST_API_KEY, LiveService, serve, service_settings

from sidserve import redis_client
from sidserve.storage import GROUP_BITS, SidStore
from sidserve.testing import RedisClusterProcess
from sidserve_client import SidServeClient


@pytest.fixture(scope="module")
def cluster_service(sid_bundle: Path, redis_cluster_url: str) -> Iterator[LiveService]:
    with serve(service_settings(sid_bundle, redis_cluster_url, redis_cluster=True)) as service:
        yield service


@pytest.fixture(scope="module")
def direct_codes(sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]]) -> np.ndarray:
    x, _ = sid_bundle_data
    sess = ort.InferenceSession(str(sid_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"embeddings": x})[0]


def _owner(cluster: redis.cluster.RedisCluster, key: bytes) -> str:
    return cluster.get_node_from_key(key).name


def test_fixture_is_a_healthy_three_master_cluster(redis_cluster_url: str) -> None:
    with redis.cluster.RedisCluster.from_url(redis_cluster_url) as cluster:
        assert cluster.cluster_info()["cluster_state"] == "ok"
        assert len(cluster.get_primaries()) == 3


def test_300_id_read_spans_nodes_and_answers_in_request_order(
    cluster_service: LiveService, sid_bundle_data: tuple[np.ndarray, list[str]], direct_codes: np.ndarray
) -> None:
    x, _ = sid_bundle_data
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-{i}" for i in range(300)]
    with SidServeClient(cluster_service.url, api_key=TEST_API_KEY) as client:
        written = client.upsert_items(ids, x[:300])
        assert np.array_equal(np.array([w.sid for w in written]), direct_codes[:300])
        # 300 known IDs in a shuffled order, plus unknowns and repeats in between.
        rng = np.random.default_rng(7)
        order = rng.permutation(300)
        request = [ids[i] for i in order[:250]] + [f"{tag}-unknown-{i}" for i in range(5)] + [ids[order[0]]] * 3
        request += [ids[i] for i in order[250:]]
        f = client.features(request[:200], request[200:])
    expected_known = np.array([not r.startswith(f"{tag}-unknown") for r in request])
    known = np.concatenate([f.candidates.known, f.history.known])
    assert np.array_equal(known, expected_known)
    sids = f.candidates.sids + f.history.sids
    for item, sid in zip(request, sids, strict=True):
        if "unknown" in item:
            assert sid is None
        else:
            assert sid == tuple(direct_codes[int(item.rsplit("-", 1)[1])]), item

    store = cluster_service.app.state.sidserve.serving.store
    keys, _ = store.locate(request)
    with redis.cluster.RedisCluster.from_url(cluster_service.settings.redis_url) as cluster:
        owners = {_owner(cluster, k) for k in keys}
        groups = {k[k.index(b"{") : k.index(b"}") + 1] for k in keys}
    assert len(groups) == 1 << GROUP_BITS  # 300 IDs touch all 16 groups: 16 Function calls
    assert len(owners) >= 2, owners  # ... on several nodes


def test_keys_are_spread_over_the_masters(
    cluster_service: LiveService, redis_cluster: RedisClusterProcess | None,
    sid_bundle_data: tuple[np.ndarray, list[str]],
) -> None:  # fmt: skip
    if redis_cluster is None:
        pytest.skip("REDIS_CLUSTER_URL: an existing cluster's per-node contents are not ours to count")
    x, _ = sid_bundle_data
    tag = uuid.uuid4().hex[:8]
    with SidServeClient(cluster_service.url, api_key=TEST_API_KEY) as client:
        client.upsert_items([f"{tag}-{i}" for i in range(1000)], x[:1000])
    store = cluster_service.app.state.sidserve.serving.store
    pattern = f"{cluster_service.settings.key_prefix}:{{{store.model_version}:*".encode()
    with redis.cluster.RedisCluster.from_url(cluster_service.settings.redis_url) as cluster:
        # The nodes owning the 16 group slots of this model version (CLUSTER KEYSLOT of each tag).
        expected = {_owner(cluster, store.bucket_key(g)) for g in range(1 << GROUP_BITS)}
        per_node = {}
        for node in cluster.get_primaries():
            client = cluster.get_redis_connection(node)
            per_node[node.name] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
    assert {name for name, n in per_node.items() if n} == expected, per_node
    # 16 slots on 3 masters: all three hold keys unless the 16 CRC16 values happen to miss one
    # (probability 3 * (2/3)^16 = 0.5% for a random model version).
    assert len(expected) >= 2 and sum(per_node.values()) > 100, per_node


def test_functions_reload_on_the_node_that_lost_them(
    redis_cluster_url: str, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    """FUNCTION FLUSH on one master (a node restarted without its data): the store notices
    'function not found' on that node's groups, loads the library again and retries only them."""

    async def scenario() -> None:
        r = redis_client.connect(redis_cluster_url, 0.5, 1.0, 8, cluster=True)
        try:
            store = SidStore(r, f"test-{uuid.uuid4().hex[:12]}", levels=3, codebook_size=16)
            ids = [f"i{i}" for i in range(200)]
            codes = np.random.default_rng(1).integers(0, 16, size=(200, 3))
            assert set(await store.write(ids, codes)) == {"created"}
            victim = r.get_primaries()[1]
            await r.execute_command("FUNCTION FLUSH", target_nodes=victim)
            got, known = await store.read(ids)
            assert known.all() and np.array_equal(got, codes)
            await r.execute_command("FUNCTION FLUSH", target_nodes=victim)
            statuses = await store.write(ids, (codes + 1) % 16)
            assert statuses == ["updated"] * 200  # each group written once: no double-applied retry
            got, _ = await store.read(ids)
            assert np.array_equal(got, (codes + 1) % 16)
        finally:
            await r.aclose()

    asyncio.run(scenario())


def test_readiness_pings_every_master(sid_bundle: Path, tmp_path: Path) -> None:
    """A private cluster: one stopped master turns /readyz to 503, and back to 200 when it returns."""
    cluster = RedisClusterProcess(tmp_path)
    cluster.start()
    try:
        with serve(service_settings(sid_bundle, cluster.url, redis_cluster=True)) as service, \
                httpx.Client(base_url=service.url, timeout=10) as http:  # fmt: skip
            assert http.get("/readyz").status_code == 200
            cluster.nodes[2].stop()
            r = http.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            cluster.nodes[2].start()
            for _ in range(100):
                if http.get("/readyz").status_code == 200:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("/readyz did not recover after the master came back")
    finally:
        cluster.stop()


def test_backfill_writes_to_the_cluster(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_cluster_url: str,
    direct_codes: np.ndarray, tmp_path: Path,
) -> None:  # fmt: skip
    from sidserve.backfill import main as backfill
    from sidserve.model import SidModel

    x, _ = sid_bundle_data
    ids = [f"bf-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(x))]
    np.save(tmp_path / "c.npy", x)
    (tmp_path / "c.txt").write_text("\n".join(ids) + "\n")
    prefix = f"bf{uuid.uuid4().hex[:6]}"
    backfill(["--bundle", str(sid_bundle), "--embeddings", str(tmp_path / "c.npy"), "--ids", str(tmp_path / "c.txt"),
              "--redis-url", redis_cluster_url, "--redis-cluster", "--key-prefix", prefix, "--batch-size", "700",
              "--no-progress"])  # fmt: skip
    model = SidModel.load(sid_bundle)

    async def read() -> tuple[np.ndarray, np.ndarray]:
        r = redis_client.connect(redis_cluster_url, 1.0, 10.0, 2, cluster=True)
        try:
            return await SidStore(r, model.version, model.levels, model.codebook_size, prefix).read(ids)
        finally:
            await r.aclose()

    codes, known = asyncio.run(read())
    assert known.all() and np.array_equal(codes, direct_codes)
