"""SidStore against a real Redis: key layout, packing, write statuses, atomicity, reads."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
import redis

from sidserve.storage import SidStore, StorageUnavailable, code_dtype, connect


def _store(url: str, version: str = "0123456789abcdef", levels: int = 3, k: int = 16) -> SidStore:
    return SidStore(connect(url, 0.25, 0.5, 8), version, levels, k)


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


@pytest.mark.parametrize(("k", "dtype", "width"), [(16, "<u1", 1), (256, "<u1", 1), (257, "<u2", 2),
                                                   (2048, "<u2", 2), (65536, "<u2", 2), (65537, "<u4", 4)])  # fmt: skip
def test_code_dtype(k: int, dtype: str, width: int) -> None:
    assert code_dtype(k) == np.dtype(dtype) and code_dtype(k).itemsize == width


def test_layout_version_in_key_and_packed_little_endian(redis_url: str) -> None:
    [item] = _ids(1)

    async def main() -> None:
        store = _store(redis_url, levels=8, k=2048)
        assert await store.write([item], np.array([[2047, 1, 2, 3, 4, 5, 6, 258]])) == ["created"]
        await store.redis.aclose()

    asyncio.run(main())
    raw = redis.Redis.from_url(redis_url).get(f"sid:0123456789abcdef:{item}".encode())
    assert raw == np.array([2047, 1, 2, 3, 4, 5, 6, 258], dtype="<u2").tobytes()
    assert raw[:2] == b"\xff\x07"  # little-endian uint16: 16 bytes for L = 8


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


def test_reads_use_one_mget_of_distinct_ids(redis_url: str) -> None:
    async def main() -> None:
        store = _store(redis_url)
        ids = _ids(3)
        await store.write(ids, np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]]))
        calls = []
        original = store.redis.mget

        async def counting_mget(keys, *args):  # type: ignore[no-untyped-def]
            calls.append(list(keys))
            return await original(keys, *args)

        store.redis.mget = counting_mget  # type: ignore[method-assign]
        got, known = await store.read([ids[2], ids[0], ids[2], ids[2], ids[1]])
        assert len(calls) == 1 and len(calls[0]) == 3
        assert got[:, 0].tolist() == [3, 1, 3, 3, 2] and known.all()
        await store.redis.aclose()

    asyncio.run(main())


def test_write_is_one_multi_exec_transaction(redis_url: str) -> None:
    """All SETs of a batch go in one MULTI/EXEC: Redis applies all of them or none."""
    r = redis.Redis.from_url(redis_url)

    def calls() -> dict[str, int]:
        stats = r.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("multi", "exec", "set")}

    async def main() -> None:
        store = _store(redis_url)
        before = calls()
        await store.write(_ids(5), np.ones((5, 3), dtype=np.int64))
        after = calls()
        assert {c: after[c] - before[c] for c in after} == {"multi": 1, "exec": 1, "set": 5}
        await store.redis.aclose()

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
