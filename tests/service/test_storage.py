"""SidStore against a real Redis: bucket layout, packing, write statuses, atomicity, one round trip per
call, function reload, layout key."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidserve.redis_client import CallConnections, connect
from sidserve.storage import (
    DEFAULT_FINGERPRINT_BYTES,
    LayoutMismatch,
    SidStore,
    StorageUnavailable,
    code_dtype,
)
from sidserve.testing import RedisProcess


def _store(url: str, version: str = "0123456789abcdef", levels: int = 3, k: int = 16) -> SidStore:
    return SidStore(connect(url, 0.25, 0.5, 8), version, levels, k)


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


@pytest.mark.parametrize(("k", "dtype", "width"), [(16, "<u1", 1), (256, "<u1", 1), (257, "<u2", 2),
                                                   (2048, "<u2", 2), (65536, "<u2", 2), (65537, "<u4", 4)])  # fmt: skip
def test_code_dtype(k: int, dtype: str, width: int) -> None:
    assert code_dtype(k) == np.dtype(dtype) and code_dtype(k).itemsize == width


def test_layout_listpack_bucket_with_bit_packed_value(redis_url: str) -> None:
    [item] = _ids(1)
    codes = np.array([[2047, 1, 2, 3, 4, 5, 6, 258]])

    async def main() -> SidStore:
        store = _store(redis_url, levels=8, k=2048)
        assert await store.write([item], codes) == ["created"]
        await store.redis.aclose()
        return store

    store = asyncio.run(main())
    r = redis.Redis.from_url(redis_url)
    [key], field = store.locate([item])
    assert key.startswith(b"sid:{0123456789abcdef:") and len(key) <= 28 and len(field) == DEFAULT_FINGERPRINT_BYTES
    assert r.type(key) == b"hash" and r.object("encoding", key) == b"listpack"
    raw = r.hget(key, field)
    assert len(raw) == 11  # 8 codes x 11 bits = 88 bits
    assert int.from_bytes(raw, "little") == sum(int(c) << (11 * i) for i, c in enumerate(codes[0]))
    assert r.get(b"sid:0123456789abcdef:layout").startswith(b"sidserve-buckets/1 bucket_bits=14 ")


def test_statuses_reads_duplicates_and_versions(redis_url: str) -> None:
    async def main() -> None:
        v1, v2 = _store(redis_url, "aaaaaaaaaaaaaaaa"), _store(redis_url, "bbbbbbbbbbbbbbbb")
        a, b, missing = _ids(3)
        codes = np.array([[1, 2, 3], [15, 0, 7]])
        assert await v1.write([a, b], codes) == ["created", "created"]
        assert await v1.write([a, b], codes) == ["unchanged", "unchanged"]
        assert await v1.write([a], np.array([[1, 2, 4]])) == ["updated"]
        # A repeated ID in one batch is written in order: the second sees the first.
        assert await v1.write([b, b], np.array([[9, 9, 9], [15, 0, 7]])) == ["updated", "updated"]

        got, known = await v1.read([b, missing, a, b, "é/ü:{x}"])
        assert known.tolist() == [True, False, True, True, False]
        assert got.tolist() == [[15, 0, 7], [0, 0, 0], [1, 2, 4], [15, 0, 7], [0, 0, 0]]
        # Another model version sees none of it.
        assert (await v2.read([a, b]))[1].tolist() == [False, False]
        empty, known = await v1.read([])
        assert empty.shape == (0, 3) and known.shape == (0,)
        for s in (v1, v2):
            await s.redis.aclose()

    asyncio.run(main())


def _calls(r: redis.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0) and c != "info"}


def test_a_read_is_one_function_call(redis_url: str) -> None:
    """One FCALL_RO per read (one round trip), whatever the number of IDs; repeats answered alike."""
    r = redis.Redis.from_url(redis_url)

    async def main() -> None:
        store = _store(redis_url)
        ids = _ids(3)
        await store.write(ids, np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]]))  # also loads the functions
        before = _calls(r)
        got, known = await store.read([ids[2], ids[0], ids[2], "nope", ids[1]])
        assert _delta(before, _calls(r)) == {"fcall_ro": 1, "hget": 5}  # the HGETs run inside Redis
        assert got[:, 0].tolist() == [3, 1, 3, 0, 2] and known.tolist() == [True, True, True, False, True]
        await store.redis.aclose()

    asyncio.run(main())


def test_write_is_one_function_call_all_or_nothing(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)

    async def main() -> None:
        store = _store(redis_url)
        await store.prepare()  # FUNCTION LOAD + the layout key: once per process, not per call
        await store.read(["warm-up"])  # opens the connection of function calls (its HELLO is not counted)
        ids = _ids(5)
        before = _calls(r)
        assert await store.write(ids, np.ones((5, 3), dtype=np.int64)) == ["created"] * 5
        assert _delta(before, _calls(r)) == {"fcall": 1, "hget": 5, "hset": 5}
        before = _calls(r)
        assert await store.write(ids[:2], np.array([[1, 1, 1], [1, 1, 2]])) == ["unchanged", "updated"]
        # unchanged: not rewritten; updated: announced to the SID caches (sidserve.notices) in the same call
        assert _delta(before, _calls(r)) == {"fcall": 1, "hget": 2, "hset": 1, "publish": 1}

        # A foreign value type at one item's bucket: the whole batch fails, nothing is written.
        fresh = _ids(20)
        keys, _ = store.locate(fresh)
        saved = r.dump(keys[-1])
        r.set(keys[-1], b"not a hash")
        with pytest.raises(StorageUnavailable, match="WRONGTYPE"):
            await store.write(fresh, np.full((20, 3), 7))
        r.delete(keys[-1])
        if saved is not None:
            r.restore(keys[-1], 0, saved)
        assert not (await store.read(fresh))[1].any()
        await store.redis.aclose()

    asyncio.run(main())


def test_chunked_writes_are_one_call_per_chunk_and_atomic_per_chunk(redis_url: str) -> None:
    """write_chunk_items = 4: 10 items go in calls of 4, 4 and 2, in order (a repeated ID's last
    occurrence wins); a call that fails leaves the earlier calls applied and the later ones unsent.
    With the collision index the chunks share the SID counters: k's stay 0, 1, 2, ... per SID."""
    r = redis.Redis.from_url(redis_url)

    async def main() -> None:
        store = SidStore(connect(redis_url, 0.25, 0.5, 8), "0123456789abcdef", 3, 16, write_chunk_items=4)
        await store.prepare()
        await store.read(["warm-up"])
        ids = _ids(9)
        codes = np.arange(30).reshape(10, 3) % 16
        before = _calls(r)
        statuses = await store.write([*ids, ids[0]], codes)  # ids[0] again, last
        assert statuses == ["created"] * 9 + ["updated"]
        assert _delta(before, _calls(r))["fcall"] == 3
        got, known = await store.read(ids)
        assert known.all() and got.tolist() == [codes[9].tolist(), *codes[1:9].tolist()]

        # The third item's bucket holds a foreign type: the first call (items 0-3) fails, so
        # nothing is written; with the foreign key in the second call, the first call stays applied.
        for failing_call, applied in ((0, 0), (1, 4)):
            fresh = _ids(10)
            keys, _ = store.locate(fresh)
            bad = keys[4 * failing_call + 2]
            saved = r.dump(bad)
            r.set(bad, b"not a hash")
            with pytest.raises(StorageUnavailable, match="WRONGTYPE"):
                await store.write(fresh, np.full((10, 3), 7))
            r.delete(bad)
            if saved is not None:
                r.restore(bad, 0, saved)
            assert (await store.read(fresh))[1].tolist() == [True] * applied + [False] * (10 - applied)

        indexed = SidStore(connect(redis_url, 0.25, 0.5, 8), "fedcba9876543210", 3, 16, collision_index=True,
                           write_chunk_items=4)  # fmt: skip
        statuses, ks = await indexed.write_indexed(_ids(10), np.ones((10, 3), dtype=np.int64))  # one SID
        assert statuses == ["created"] * 10 and ks.tolist() == list(range(10))
        for s in (store, indexed):
            await s.redis.aclose()

    asyncio.run(main())


def test_functions_reloaded_after_flush(redis_url: str) -> None:
    """A Redis that lost the function library (restart, FUNCTION FLUSH): load it again, retry once."""
    r = redis.Redis.from_url(redis_url)

    async def main() -> None:
        store = _store(redis_url)
        [a] = _ids(1)
        await store.write([a], np.array([[4, 5, 6]]))
        r.function_flush()
        got, known = await store.read([a])
        assert known.tolist() == [True] and got.tolist() == [[4, 5, 6]]
        assert r.function_list(library="sidserve_*")
        r.function_flush()
        assert await store.write([a], np.array([[4, 5, 7]])) == ["updated"]
        await store.redis.aclose()

    asyncio.run(main())


def test_a_read_after_a_redis_restart_reconnects_and_reloads_the_functions(redis_process: RedisProcess) -> None:
    """The pooled connection died with the restart: the read retries once on a new connection, finds
    the function library gone (no persistence here), loads it and answers."""

    async def main() -> None:
        store = SidStore(connect(redis_process.url, 0.25, 0.5, 1), "0123456789abcdef", 3, 16)
        ids = _ids(3)
        await store.write(ids, np.array([[1, 2, 3]] * 3))
        assert (await store.read(ids))[1].tolist() == [True] * 3
        redis_process.stop()
        redis_process.start()
        await store.write(ids[:1], np.array([[4, 5, 6]]))
        got, known = await store.read(ids)
        assert known.tolist() == [True, False, False] and got[0].tolist() == [4, 5, 6]
        await store.redis.aclose()

    asyncio.run(main())


def test_a_cancelled_read_leaves_no_reply_behind(redis_process: RedisProcess) -> None:
    """A read cancelled while its reply is on the way (the client went away) must not leave that
    reply on a pooled connection for the next read to take: one connection, Redis paused meanwhile."""

    async def main() -> None:
        store = SidStore(connect(redis_process.url, 0.25, 2.0, 1), "0123456789abcdef", 3, 16)
        a, b = _ids(2)
        await store.write([a, b], np.array([[1, 1, 1], [2, 2, 2]]))
        redis_process.pause()
        pending = asyncio.create_task(store.read([a]))
        await asyncio.sleep(0.1)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        redis_process.resume()
        got, known = await store.read([b])
        assert known.tolist() == [True] and got.tolist() == [[2, 2, 2]]
        await store.redis.aclose()

    asyncio.run(main())


def test_a_burst_of_reads_beyond_the_pool_size_queues(redis_url: str) -> None:
    async def main() -> None:
        store = SidStore(connect(redis_url, 0.25, 2.0, 2), "0123456789abcdef", 3, 16)
        ids = _ids(50)
        codes = np.arange(150).reshape(50, 3) % 16
        await store.write(ids, codes)
        reads = await asyncio.gather(*[store.read(ids[i : i + 5]) for i in range(0, 50, 5)] * 10)
        for i, (got, known) in enumerate(reads):
            start = (i % 10) * 5
            assert known.all() and (got == codes[start : start + 5]).all()
        await store.redis.aclose()

    asyncio.run(main())


def test_every_call_ends_within_its_timeout_and_aclose_closes_the_connections(redis_url: str) -> None:
    """CallConnections: a call waiting for a free connection, or for a reply, fails at its timeout
    (redis-py's TimeoutError, a 503 upstream); the connection is reused after a whole exchange and
    dropped after an interrupted one; aclose() closes every connection it made."""
    observer = redis.Redis.from_url(redis_url)
    empty = f"empty-{uuid.uuid4().hex}"

    async def main() -> None:
        client = connect(redis_url, 0.25, 2.0, 1)
        calls = CallConnections(client.connection_pool.make_connection, 1, 0.3)
        [conn_id] = {str(await calls.execute(("CLIENT", "ID"))) for _ in range(3)}  # one connection, reused
        assert conn_id in {c["id"] for c in observer.client_list()}

        # Every connection busy for longer than a call's timeout. (With one timeout for all calls, a
        # call that started earlier frees its connection before a later one's deadline, so hold the
        # one slot directly.)
        await calls._free.acquire()
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError, match=r"no free connection within .* \(all 1 busy: this process is overloaded"):
            await calls.execute(("PING",))
        assert 0.25 < time.monotonic() - start < 0.9
        calls._free.release()

        start = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="no reply"):
            await calls.execute(("BLPOP", empty, 0.6))  # 0.6 s in Redis: past the timeout
        assert 0.25 < time.monotonic() - start < 0.55
        await asyncio.sleep(0.05)
        assert conn_id not in {c["id"] for c in observer.client_list()}  # its reply was pending: dropped
        assert await calls.execute(("PING",)) == b"PONG"  # reconnects; the late BLPOP reply never shows up

        [conn_id] = {str(await calls.execute(("CLIENT", "ID"))) for _ in range(2)}
        await calls.aclose()
        await asyncio.sleep(0.05)
        assert conn_id not in {c["id"] for c in observer.client_list()}
        await client.aclose()

    asyncio.run(main())


def test_layout_key_bucket_bits_adopted_and_foreign_layout_refused(redis_url: str) -> None:
    async def main() -> None:
        version = uuid.uuid4().hex[:16]
        writer = SidStore(connect(redis_url, 0.25, 0.5, 8), version, 3, 16, bucket_bits=12)
        [a] = _ids(1)
        await writer.write([a], np.array([[1, 2, 3]]))
        reader = SidStore(connect(redis_url, 0.25, 0.5, 8), version, 3, 16, bucket_bits=8)
        got, known = await reader.read([a])
        assert reader.bucket_bits == 12 and known.all() and got.tolist() == [[1, 2, 3]]
        redis.Redis.from_url(redis_url).set(f"sid:{version}:layout", "sidserve-buckets/9 whatever")
        other = SidStore(connect(redis_url, 0.25, 0.5, 8), version, 3, 16)
        with pytest.raises(LayoutMismatch):
            await other.prepare()
        for s in (writer, reader, other):
            await s.redis.aclose()

    asyncio.run(main())


def test_unreachable_redis_fails_fast(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sidserve.testing import free_port

    async def main() -> None:
        store = _store(f"redis://127.0.0.1:{free_port()}/0")
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match="Redis unavailable during read"):
            await store.read(["x"])
        with pytest.raises(StorageUnavailable, match="during write"):
            await store.write(["x"], np.zeros((1, 3), dtype=np.int64))
        with pytest.raises(StorageUnavailable, match="during ping"):
            await store.ping()
        assert time.monotonic() - start < 3
        await store.redis.aclose()

    asyncio.run(main())


def test_plain_redis_py_client_reads_the_same(redis_url: str) -> None:
    """Without the prepacking connection (e.g. rediss://), keys go through redis-py's own packing."""
    from redis.asyncio import Redis

    async def main() -> None:
        fast = _store(redis_url)
        plain = SidStore(Redis.from_url(redis_url), "0123456789abcdef", 3, 16)
        assert not getattr(plain.redis.connection_pool.connection_class, "packs_prepacked", False)
        ids = _ids(40)
        codes = np.random.default_rng(1).integers(0, 16, size=(40, 3))
        assert await plain.write(ids, codes) == ["created"] * 40
        for store in (fast, plain):
            got, known = await store.read(ids + ["missing"])
            assert known.tolist() == [True] * 40 + [False] and (got[:40] == codes).all()
            await store.redis.aclose()

    asyncio.run(main())


def test_a_burst_beyond_the_pool_size_queues_instead_of_failing(redis_url: str) -> None:
    """More concurrent commands than pooled connections wait for a free one (no 'Too many connections')."""
    import asyncio

    from sidserve.redis_client import connect

    async def burst() -> list[bool]:
        client = connect(redis_url, connect_timeout=0.5, socket_timeout=1.0, max_connections=4)
        try:
            return await asyncio.gather(*[client.ping() for _ in range(200)])
        finally:
            await client.aclose()

    assert asyncio.run(burst()) == [True] * 200


def test_a_version_keeps_the_fingerprint_width_it_was_written_with(redis_url: str) -> None:
    """A process configured with another fingerprint width (or bucket bits) adopts the stored ones."""

    async def main() -> None:
        ids = _ids(20)
        codes = np.arange(60).reshape(20, 3) % 16
        version = uuid.uuid4().hex[:16]
        wide = SidStore(connect(redis_url, 0.25, 0.5, 8), version, 3, 16, bucket_bits=8, fingerprint_bytes=5)
        await wide.write(ids, codes)
        [key], field = wide.locate(ids[:1])
        assert len(field) == 5
        default = SidStore(connect(redis_url, 0.25, 0.5, 8), version, 3, 16)
        got, known = await default.read(ids + ["never-written"])
        assert default.fingerprint_bytes == 5 and default.bucket_bits == 8
        assert known.tolist() == [True] * 20 + [False] and (got[:20] == codes).all()
        for store in (wide, default):
            await store.redis.aclose()
        with pytest.raises(ValueError, match="fingerprint_bytes"):
            SidStore(None, version, 3, 16, fingerprint_bytes=3)  # type: ignore[arg-type]

    asyncio.run(main())


def test_capacity_warning_when_buckets_would_outgrow_listpacks(redis_url: str) -> None:
    async def main() -> None:
        store = SidStore(connect(redis_url, 0.25, 0.5, 8), uuid.uuid4().hex[:16], 3, 16, bucket_bits=10)
        limit = int((await store.redis.config_get("hash-max-listpack-entries"))["hash-max-listpack-entries"])
        assert await store.capacity_warning(1024 * limit // 2) is None  # half full on average: fits
        warning = await store.capacity_warning(1024 * limit * 4)  # 4 x the limit per bucket
        assert warning is not None and f"hash-max-listpack-entries {limit} " in warning
        assert "bucket bits >= 13" in warning  # 2^13 buckets: half the limit per bucket, fits
        await store.redis.aclose()

    asyncio.run(main())
