"""SidStore's collision index and the deletion of one model version's keys, against a real single
Redis and a real 3-master Redis Cluster ([single] / [cluster])."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import redis.cluster

from sidserve import storage
from sidserve.redis_client import connect
from sidserve.storage import INDEX_BYTES, LayoutMismatch, SidStore

Client = redis.Redis | redis.cluster.RedisCluster


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    """(url, cluster) of the session's single Redis or Redis Cluster."""
    if request.param == "single":
        yield request.getfixturevalue("redis_url"), False
    else:
        yield request.getfixturevalue("redis_cluster_url"), True


def _client(url: str, cluster: bool) -> Client:
    return redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def _store(url: str, cluster: bool, prefix: str, version: str = "0123456789abcdef", **kw: object) -> SidStore:
    return SidStore(connect(url, 0.25, 2.0, 8, cluster=cluster), version, 3, 16, prefix, 6, **kw)


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:8]


def _keys(client: Client, pattern: str) -> set[bytes]:
    if isinstance(client, redis.cluster.RedisCluster):
        return set(client.scan_iter(match=pattern, target_nodes=redis.cluster.RedisCluster.PRIMARIES))
    return set(client.scan_iter(match=pattern))


def test_collision_index_counts_per_sid_and_is_stable(backend: tuple[str, bool]) -> None:
    url, cluster = backend
    prefix = _prefix()
    same, other = np.array([[1, 2, 3]]), np.array([[4, 5, 6]])

    async def main() -> None:
        store = _store(url, cluster, prefix, collision_index=True)
        a, b, c, d = "a", "b", "c", "d"
        # Three items with one SID get 0, 1, 2; a repeated ID in one batch keeps its first k.
        statuses, k = await store.write_indexed([a, b, a, c], np.repeat(same, 4, axis=0))
        assert statuses == ["created", "created", "unchanged", "created"] and k.tolist() == [0, 1, 0, 2]
        # Re-sent unchanged: same k, no new counter value.
        statuses, k = await store.write_indexed([c, b, a], np.repeat(same, 3, axis=0))
        assert statuses == ["unchanged"] * 3 and k.tolist() == [2, 1, 0]
        # Another SID has its own counter; an item moving to it takes that counter's next k.
        assert (await store.write_indexed([d], other))[1].tolist() == [0]
        statuses, k = await store.write_indexed([b], other)
        assert statuses == ["updated"] and k.tolist() == [1]
        # ... and moving back draws a fresh k from the first SID (1 stays unused: k stays unique).
        assert (await store.write_indexed([b], same))[1].tolist() == [3]
        codes, known, k = await store.read_indexed([a, b, c, d, "nope"])
        assert known.tolist() == [True, True, True, True, False]
        assert codes[:4].tolist() == [[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 5, 6]] and k.tolist() == [0, 3, 2, 0, 0]
        assert (await store.read([a, d]))[0].tolist() == [[1, 2, 3], [4, 5, 6]]  # read() ignores k
        assert await store.write([a], same) == ["unchanged"]  # write() takes the indexed path
        await store.redis.aclose()

    asyncio.run(main())
    client = _client(url, cluster)
    layout = client.get(f"{prefix}:0123456789abcdef:layout")
    assert layout.endswith(f" index_bytes={INDEX_BYTES}".encode())
    [key], field = SidStore(None, "0123456789abcdef", 3, 16, prefix, 6, collision_index=True).locate(["a"])  # type: ignore[arg-type]
    assert len(client.hget(key, field)) == 2 + INDEX_BYTES  # 3 codes x 4 bits = 2 bytes, then k


def test_concurrent_creates_of_one_sid_get_distinct_k(backend: tuple[str, bool]) -> None:
    url, cluster = backend
    prefix = _prefix()
    sid = np.array([[7, 7, 7]])

    async def main() -> list[int]:
        stores = [_store(url, cluster, prefix, collision_index=True) for _ in range(4)]

        async def upload(w: int, n: int) -> list[int]:
            ks: list[int] = []
            for i in range(n):  # singles and batches, interleaved across 4 clients
                ids = [f"w{w}-{i}-{j}" for j in range(1 + i % 3)]
                ks += (await stores[w].write_indexed(ids, np.repeat(sid, len(ids), axis=0)))[1].tolist()
            return ks

        results = await asyncio.gather(*(upload(w, 15) for w in range(4)))
        for store in stores:
            await store.redis.aclose()
        return [k for ks in results for k in ks]

    ks = asyncio.run(main())
    assert len(ks) == 4 * 30 and len(set(ks)) == len(ks)  # no two items share a k
    if not cluster:
        assert sorted(ks) == list(range(len(ks)))  # one atomic call per batch: no gaps either


def test_collision_index_off_keeps_the_layout(redis_url: str) -> None:
    prefix = _prefix()

    async def main() -> None:
        store = _store(redis_url, False, prefix)
        assert await store.write(["a"], np.array([[1, 2, 3]])) == ["created"]
        indexed = _store(redis_url, False, prefix, collision_index=True)
        with pytest.raises(LayoutMismatch, match="SIDSERVE_COLLISION_INDEX"):
            await indexed.prepare()  # a version written without k cannot be served with it
        for s in (store, indexed):
            await s.redis.aclose()

    asyncio.run(main())
    client = redis.Redis.from_url(redis_url)
    assert client.get(f"{prefix}:0123456789abcdef:layout") == (
        b"sidserve-buckets/1 bucket_bits=6 group_bits=4 fingerprint_bytes=4"
    )
    assert not _keys(client, f"{prefix}:*k*")  # no counters
    [key], field = SidStore(None, "0123456789abcdef", 3, 16, prefix, 6).locate(["a"])  # type: ignore[arg-type]
    assert len(client.hget(key, field)) == 2


def test_delete_version_keys_deletes_exactly_that_version(backend: tuple[str, bool]) -> None:
    url, cluster = backend
    prefix, other_prefix = _prefix(), _prefix()
    old, new = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    ids = [f"item-{i}" for i in range(300)]
    codes = np.random.default_rng(0).integers(0, 16, size=(300, 3))
    reported: list[int] = []

    async def write() -> None:
        for p, v, indexed in ((prefix, old, True), (prefix, new, False), (other_prefix, old, False)):
            store = _store(url, cluster, p, v, collision_index=indexed)
            await store.write(ids, codes)
            await store.redis.aclose()

    async def delete() -> int:
        r = connect(url, 0.25, 2.0, 8, cluster=cluster)

        async def on_deleted(n: int) -> None:
            reported.append(n)

        try:
            return await storage.delete_version_keys(r, prefix, old, batch=10, pause_s=0, on_deleted=on_deleted)
        finally:
            await r.aclose()

    asyncio.run(write())
    client = _client(url, cluster)
    before = {p: _keys(client, f"{p}:*") for p in (prefix, other_prefix)}
    old_keys = _keys(client, f"{prefix}:{{{old}:*") | {f"{prefix}:{old}:layout".encode()}
    assert any(b"}k" in key for key in old_keys)  # collision counters are among them
    deleted = asyncio.run(delete())
    assert deleted == sum(reported) == len(old_keys) > 64  # buckets, collision counters, layout key
    assert len([n for n in reported if n]) > 3  # in several slices
    assert _keys(client, f"{prefix}:*") == before[prefix] - old_keys  # the other version is intact
    assert _keys(client, f"{other_prefix}:*") == before[other_prefix]  # and other prefixes


def test_version_pattern_escapes_glob_characters() -> None:
    assert storage.version_pattern("s*d[1]", "v?") == b"s\\*d\\[1\\]:{v\\?:*"
