"""The read path of the features endpoint: item IDs -> (SIDs, embedding-table rows, known), with
a per-process cache of hot items in front of Redis.

Why a cache: ranking traffic is skewed (Zipf), so a few percent of the items carry most lookups,
and one Redis Function read of 300 IDs costs about twice an MGET of 300 string keys (a listpack
scan and a Lua `redis.call` per ID, the price of <= 24 B per item). Serving hot items from process
memory leaves Redis only the tail. A simulation of this cache on the load test's Zipf(1) stream
over 1M items at 75,000 lookups/s per worker (250 requests/s x 300 IDs) answered 63 / 68 / 74 /
79 % of the IDs for a TTL of 1 / 2 / 5 / 10 s (the previous two-generation design: 62 / 67 / 73 /
78 %); the full load test measured 74-79 % at 500-1,000 requests/s over 2 workers with the default
5 s (loadtest/MEASUREMENTS.md).

What is cached: an item's answer as the features endpoint serves it, pre-encoded as one JSON
record (sidserve.responses: known, its L codes, its feature rows from `feature_rows`, the one
index function, and k with the collision index), so a hit costs one dict lookup and no unpacking,
hashing, index arithmetic or number formatting; misses go through the same functions. The dict
maps str to bytes, which CPython's cyclic GC never tracks: no collection walks the cache.

Staleness contract (SIDSERVE_CACHE_TTL_S; 0 turns the cache off):
- An item's SID changes only when its content is re-uploaded with new content (`updated`). This
  process's own writes drop their entries at once. Unknown items are never cached: an item is
  served at its first read after its write.
- Updates made through other processes (workers, replicas, sidserve-backfill) reach this one as
  update notices: the storage write functions publish the IDs of updated items on Redis Pub/Sub in
  the same atomic call as the write, and sidserve.notices drops them here (`forget`), within
  milliseconds. While those notices are being heard (`following`), an entry lives up to
  `max_age_s` (SIDSERVE_CACHE_MAX_AGE_S); whenever they are not (no subscription yet, a lost
  connection, a heartbeat missed), up to `ttl_s` after Redis answered it, the bound that holds
  without any notice. A (re)subscription empties the cache first (`resync`): notices published
  while this process was not listening are lost.
- One dict holds the entries, and a queue remembers which IDs each fetch inserted and when, oldest
  first; every fetch first drops the batches older than the lifetime (or the oldest ones while
  the cache holds more than `max_items` entries). A lookup is one dict get per ID, with no
  per-entry clock check, and expiry costs one dict delete per entry, spread over the requests.
  (The previous design, two dict generations rotated every ttl_s / 2, cost a second dict get for
  half of the IDs, kept entries ~0.75 ttl_s on average instead of ttl_s, and dropped 100k entries
  at once at each rotation.) The cache may exceed max_items by one request's misses until the
  next fetch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from .features import FeatureConfig, feature_rows
from .responses import Answer, AnswerLayout
from .storage import SidStore


@dataclass(frozen=True)
class Lookup:
    """Aligned with the requested IDs: each item's answer (a sidserve.responses record; unknown items
    get the layout's unknown record: known false, sid null, rows 0), and how many were unknown."""

    answers: list[Answer]
    unknown: int


class FeatureLookup:
    """SIDs and feature rows of one model version's items: the process cache, then Redis."""

    def __init__(
        self, store: SidStore, features: FeatureConfig, ttl_s: float, max_items: int, max_age_s: float = 0.0,
        on_lookup: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.store, self.features = store, features
        self.ttl_s, self.max_items = ttl_s, max_items
        self.max_age_s = max(ttl_s, max_age_s)  # an entry's lifetime while update notices are heard
        self.following = False  # set by sidserve.notices while it hears this version's update notices
        self._on_lookup = on_lookup  # called with (cache hits, cache misses) per fetch
        self._clock = clock
        # With the collision index, k is read, cached and served too.
        self.layout = AnswerLayout(
            features.levels, features.codebook_size, features.num_tokens, features.table_size, store.collision_index
        )
        self._entries: dict[str, Answer] = {}
        self._batches: deque[tuple[float, tuple[str, ...]]] = deque()  # (answered at, IDs inserted), oldest first
        self._writes = 0  # bumped by forget(): a fetch that overlapped a write caches nothing

    @property
    def cached_items(self) -> int:
        return len(self._entries)

    async def fetch(self, item_ids: Sequence[str]) -> Lookup:
        """Each ID's answer, in request order (a repeated ID is answered at each position)."""
        if self.ttl_s <= 0:
            answers = await self._read(item_ids)
            unknown_answer = self.layout.unknown
            return Lookup([a if a is not None else unknown_answer for a in answers], answers.count(None))
        self._expire(self._clock())
        cache = self._entries
        answers: list[Answer | None] = list(map(cache.get, item_ids))
        missing = [i for i, answer in enumerate(answers) if answer is None]
        unknown = 0
        if missing:
            writes = self._writes
            read = await self._read([item_ids[i] for i in missing])
            cacheable = writes == self._writes  # else Redis may have answered before the write
            inserted = []
            for i, answer in zip(missing, read):
                if answer is None:
                    answers[i] = self.layout.unknown
                    unknown += 1
                    continue
                answers[i] = answer
                if cacheable:
                    cache[item_ids[i]] = answer
                    inserted.append(item_ids[i])
            if inserted:
                # A tuple of str, unlike a list, leaves the cyclic GC's tracking after its first pass: with
                # 4,000 batches of 50 IDs a full collection took 0.7 ms instead of 5.3 ms (a latency spike).
                self._batches.append((self._clock(), tuple(inserted)))
        if self._on_lookup is not None:
            self._on_lookup(len(item_ids) - len(missing), len(missing))
        return Lookup(cast(list[Answer], answers), unknown)  # every None was filled in above

    async def _read(self, item_ids: Sequence[str]) -> list[Answer | None]:
        """The items' answers from Redis, None for an item not stored."""
        if self.layout.indexed:
            codes, known, index = await self.store.read_indexed(item_ids)
        else:
            (codes, known), index = await self.store.read(item_ids), None
        answers = self.layout.records(codes, feature_rows(codes, self.features), index)
        return [answer if stored else None for answer, stored in zip(answers, known.tolist())]

    def forget(self, item_ids: Sequence[str]) -> None:
        """Drop these items' entries: this process just wrote them (its readers see its own writes at
        once), or an update notice named them (sidserve.notices)."""
        self._writes += 1
        for item_id in item_ids:
            self._entries.pop(item_id, None)

    def resync(self) -> None:
        """Drop every entry, and cache nothing from reads in flight: update notices may have been
        missed (called when the subscription to them is (re)made)."""
        self._writes += 1
        self._entries.clear()
        self._batches.clear()

    def _expire(self, now: float) -> None:
        # A batch may list an ID that was dropped and inserted again since (forget, then a read):
        # popping it then ends the newer entry early, never late.
        lifetime = self.max_age_s if self.following else self.ttl_s
        batches, entries, horizon = self._batches, self._entries, now - lifetime
        while batches and (batches[0][0] <= horizon or len(entries) > self.max_items):
            for item_id in batches.popleft()[1]:
                entries.pop(item_id, None)
