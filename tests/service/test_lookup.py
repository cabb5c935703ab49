"""FeatureLookup against a real Redis: the per-process cache of hot items and its staleness bound."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
from decoded import decoded

from sidserve.features import FeatureConfig, Parameterization, feature_rows
from sidserve.lookup import FeatureLookup
from sidserve.redis_client import connect
from sidserve.storage import SidStore

VERSION = "0123456789abcdef"
FEATURES = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=16, levels=3, ngram=3, table_size=1_000_004)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}" for i in range(n)]


def _store(url: str) -> SidStore:
    return SidStore(connect(url, 0.25, 0.5, 8), VERSION, 3, 16)


class Counts:
    def __init__(self) -> None:
        self.hits = self.misses = 0

    def __call__(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses


def test_answers_match_the_store_and_feature_rows_with_and_without_cache(redis_url: str) -> None:
    async def main() -> None:
        ids = _ids(50)
        codes = np.random.default_rng(0).integers(0, 16, size=(50, 3))
        writer = _store(redis_url)
        await writer.write(ids[:40], codes[:40])
        request = ids + ids[:10] + ["never-written"]  # unknown items and repeats
        expect_codes, expect_known = await writer.read(request)
        expect_rows = feature_rows(expect_codes, FEATURES, expect_known)
        for ttl in (0.0, 5.0):
            lookup = FeatureLookup(_store(redis_url), FEATURES, ttl, 1000)
            for _ in range(2):  # cold, then (with the cache) from memory
                got = decoded(await lookup.fetch(request), 3)
                assert (got.known == expect_known).all() and expect_known.sum() == 50
                assert (got.codes == expect_codes).all() and (got.rows == expect_rows).all()
            await lookup.store.redis.aclose()
        await writer.redis.aclose()

    asyncio.run(main())


def test_an_entry_is_served_at_most_ttl_after_redis_answered(redis_url: str) -> None:
    async def main() -> None:
        ids = _ids(3)
        clock, counts = Clock(), Counts()
        lookup = FeatureLookup(_store(redis_url), FEATURES, 1.0, 1000, on_lookup=counts, clock=clock)
        other = _store(redis_url)  # another process, as far as this cache knows
        await other.write(ids[:2], np.array([[1, 1, 1], [2, 2, 2]]))
        got = decoded(await lookup.fetch([ids[0], ids[2], ids[0]]), 3)
        assert got.known.tolist() == [True, False, True] and got.codes[:, 0].tolist() == [1, 0, 1]
        assert (counts.hits, counts.misses) == (0, 3)
        await other.write([ids[0], ids[2]], np.array([[5, 5, 5], [6, 6, 6]]))
        clock.now += 0.6
        got = decoded(await lookup.fetch([ids[0], ids[2]]), 3)
        assert got.codes[:, 0].tolist() == [1, 6] and got.known.all()  # stale within the TTL; unknown never cached
        assert (counts.hits, counts.misses) == (1, 4)
        clock.now += 0.39  # 0.99 s after Redis answered ids[0]: an entry lives its whole TTL
        assert decoded(await lookup.fetch([ids[0]]), 3).codes[0, 0] == 1
        assert (counts.hits, counts.misses) == (2, 4)
        clock.now += 0.02  # 1.01 s: dropped; ids[2] (answered at 0.6 s) is still cached
        assert decoded(await lookup.fetch([ids[0]]), 3).codes[0, 0] == 5
        assert (counts.hits, counts.misses) == (2, 5) and lookup.cached_items == 2
        clock.now += 5.0  # idle longer than the TTL: every entry goes at the next fetch
        await other.write([ids[0]], np.array([[7, 7, 7]]))
        assert decoded(await lookup.fetch([ids[0]]), 3).codes[0, 0] == 7
        assert lookup.cached_items == 1
        for store in (lookup.store, other):
            await store.redis.aclose()

    asyncio.run(main())


def test_own_writes_are_seen_at_once(redis_url: str) -> None:
    async def main() -> None:
        [item] = _ids(1)
        lookup = FeatureLookup(_store(redis_url), FEATURES, 60.0, 1000)
        await lookup.store.write([item], np.array([[3, 3, 3]]))
        assert decoded(await lookup.fetch([item]), 3).codes[0, 0] == 3
        await lookup.store.write([item], np.array([[9, 9, 9]]))
        lookup.forget([item])
        assert decoded(await lookup.fetch([item]), 3).codes[0, 0] == 9
        await lookup.store.redis.aclose()

    asyncio.run(main())


def test_a_read_that_overlaps_a_write_of_this_process_is_not_cached(redis_url: str) -> None:
    """Redis may answer the read before the write lands; caching that answer would hide the write."""

    async def main() -> None:
        [item] = _ids(1)
        lookup = FeatureLookup(_store(redis_url), FEATURES, 60.0, 1000)
        await lookup.store.write([item], np.array([[1, 1, 1]]))
        read = asyncio.create_task(lookup.fetch([item]))
        await asyncio.sleep(0)  # the read is now waiting for Redis
        lookup.forget([item])  # a write of this process completed meanwhile
        assert decoded(await read, 3).codes[0, 0] == 1
        assert lookup.cached_items == 0
        await lookup.store.redis.aclose()

    asyncio.run(main())


def test_size_is_bounded_by_dropping_the_oldest_entries(redis_url: str) -> None:
    async def main() -> None:
        ids = _ids(100)
        writer = _store(redis_url)
        await writer.write(ids, np.zeros((100, 3), dtype=np.int64))
        counts = Counts()
        lookup = FeatureLookup(_store(redis_url), FEATURES, 3600.0, 40, on_lookup=counts, clock=Clock())
        for start in range(0, 100, 10):
            await lookup.fetch(ids[start : start + 10])
            assert lookup.cached_items <= 40 + 10  # may overshoot by one request's misses until the next fetch
        await lookup.fetch([ids[-1], ids[0]])
        assert (counts.hits, counts.misses) == (1, 101)  # the newest entries stay, the oldest went
        for store in (lookup.store, writer):
            await store.redis.aclose()

    asyncio.run(main())


def test_collision_index_is_cached_and_served_beside_the_sid(redis_url: str) -> None:
    async def main() -> None:
        ids = _ids(4)
        store = SidStore(connect(redis_url, 0.25, 0.5, 8), "fedcba9876543210", 3, 16, collision_index=True)
        same = np.array([[1, 2, 3]] * 3 + [[4, 5, 6]])  # three items share a SID: k = 0, 1, 2
        _, written_k = await store.write_indexed(ids, same)
        assert written_k.tolist() == [0, 1, 2, 0]
        lookup = FeatureLookup(store, FEATURES, 5.0, 1000)
        for _ in range(2):  # from Redis, then from the cache
            got = decoded(await lookup.fetch(ids + ["never-written"]), 3)
            assert got.index is not None and got.index.tolist() == [0, 1, 2, 0, 0]
            assert got.known.tolist() == [True] * 4 + [False]
            assert (got.codes[:4] == same).all() and (got.rows == feature_rows(got.codes, FEATURES, got.known)).all()
        await store.redis.aclose()

    asyncio.run(main())


def test_entries_live_max_age_only_while_update_notices_are_heard(redis_url: str) -> None:
    async def main() -> None:
        [item] = _ids(1)
        clock, counts = Clock(), Counts()
        lookup = FeatureLookup(_store(redis_url), FEATURES, 1.0, 1000, 60.0, on_lookup=counts, clock=clock)
        await lookup.store.write([item], np.array([[1, 1, 1]]))
        lookup.following = True  # as sidserve.notices sets it while subscribed
        await lookup.fetch([item])
        clock.now += 30  # past the TTL, within the max age: still cached
        await lookup.fetch([item])
        assert (counts.hits, counts.misses) == (1, 1)
        lookup.following = False  # notices lost: the 1 s TTL applies again
        await lookup.fetch([item])
        assert (counts.hits, counts.misses) == (1, 2)
        lookup.resync()  # a new subscription: nothing cached before is kept
        assert lookup.cached_items == 0
        await lookup.store.redis.aclose()

    asyncio.run(main())
