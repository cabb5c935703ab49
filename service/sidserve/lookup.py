"""The read path of the features endpoint: item IDs -> (SIDs, embedding-table rows, known), with
a per-process cache of hot items in front of Redis.

Why a cache: ranking traffic is skewed (Zipf), so a few percent of the items carry most lookups,
and one Redis Function read of 300 IDs costs about twice an MGET of 300 string keys (a listpack
scan and a Lua `redis.call` per ID, the price of <= 24 B per item). Serving hot items from process
memory leaves Redis only the tail. A simulation of this two-generation cache on the load test's
Zipf(1) stream over 1M items at 75,000 lookups/s per worker (250 requests/s x 300 IDs) answered
62 / 67 / 73 / 78 % of the IDs for a TTL of 1 / 2 / 5 / 10 s; the full load test measured 74-79 %
at 500-1,000 requests/s over 2 workers with the default 5 s (README "Measured figures").

What is cached: an item's output row as the features endpoint serves it, i.e. its L codes and
its feature rows (`feature_rows`, the one index function) as int64 bytes, so a hit costs one dict
lookup and no unpacking, hashing or index arithmetic; misses go through the same function.

Staleness contract (SIDSERVE_CACHE_TTL_S; 0 turns the cache off):
- An entry is served at most `ttl_s` after Redis answered it. An item's SID changes only when its
  content is re-uploaded with new content (`updated`); another process (worker or replica)
  serves that update within ttl_s. This process's own writes drop their entries at once.
- Unknown items are never cached: an item is served at its first read after its write.
- Entries live in two generations (dicts): new entries go to the young one; every ttl_s / 2 the
  young one becomes the old one, and a generation is dropped whole ttl_s after it began. A
  lookup is one or two dict gets, never a per-entry clock check (the previous cache's per-entry
  expiry test cost more CPU than the Redis time a hit saved). The cache holds at most `max_items`
  entries: a young generation that reaches max_items / 2 is rotated early (entries then live
  shorter, never longer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .features import FeatureConfig, feature_rows
from .storage import SidStore


@dataclass(frozen=True)
class Lookup:
    """Aligned with the requested IDs: codes int64 [n, L], rows int64 [n, num_tokens], known bool [n],
    and with the collision index (SIDSERVE_COLLISION_INDEX) each item's k int64 [n], else None.
    Unknown items have codes 0, rows 0 (the reserved row) and k 0."""

    codes: np.ndarray
    rows: np.ndarray
    known: np.ndarray
    index: np.ndarray | None = None


class FeatureLookup:
    """SIDs and feature rows of one model version's items: the process cache, then Redis."""

    def __init__(
        self, store: SidStore, features: FeatureConfig, ttl_s: float, max_items: int,
        on_lookup: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.store, self.features = store, features
        self.ttl_s, self.max_items = ttl_s, max_items
        self._on_lookup = on_lookup  # called with (cache hits, cache misses) per fetch
        self._clock = clock
        self._levels, self._tokens = store.levels, features.num_tokens
        self._indexed = store.collision_index  # then k is read, cached and served too
        self._row_values = store.levels + features.num_tokens + (1 if self._indexed else 0)
        self._absent = bytes(8 * self._row_values)  # an unknown item's row: codes 0, rows 0
        self._young: dict[str, bytes] = {}
        self._old: dict[str, bytes] = {}
        self._young_since = self._old_since = clock()
        self._writes = 0  # bumped by forget(): a fetch that overlapped a write caches nothing

    @property
    def cached_items(self) -> int:
        return len(self._young) + len(self._old)

    async def fetch(self, item_ids: Sequence[str]) -> Lookup:
        """Each ID's SID and rows, in request order (a repeated ID is answered at each position)."""
        if self.ttl_s <= 0:
            codes, known, index = await self._read(item_ids)
            return Lookup(codes, feature_rows(codes, self.features, known), known, index)
        self._rotate_if_due()
        young, old = self._young, self._old
        entries: list[bytes | None] = list(map(young.get, item_ids))
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing and old:
            still_missing = []
            for i in missing:
                if (entry := old.get(item_ids[i])) is None:
                    still_missing.append(i)
                else:
                    entries[i] = entry
            missing = still_missing
        known = np.ones(len(item_ids), dtype=bool)
        if missing:
            writes = self._writes
            codes, found, index = await self._read([item_ids[i] for i in missing])
            cache = young if writes == self._writes else {}  # else Redis may have answered before the write
            columns = [codes, feature_rows(codes, self.features, found)] + ([index[:, None]] if index is not None else [])
            fetched = np.concatenate(columns, axis=1).tobytes()
            width = len(self._absent)
            # Into the generation that was young when Redis was asked: a rotation during the
            # await must not extend the entry's life beyond ttl_s.
            for j, i in enumerate(missing):
                if found[j]:
                    entries[i] = cache[item_ids[i]] = fetched[j * width : (j + 1) * width]
            known[missing] = found
        if self._on_lookup is not None:
            self._on_lookup(len(item_ids) - len(missing), len(missing))
        absent = self._absent
        table = np.frombuffer(b"".join([e if e is not None else absent for e in entries]), dtype=np.int64)
        table = table.reshape(len(item_ids), self._row_values)
        # Contiguous copies: orjson serializes only C-contiguous arrays.
        levels, end = self._levels, self._levels + self._tokens
        index = np.ascontiguousarray(table[:, end]) if self._indexed else None
        return Lookup(np.ascontiguousarray(table[:, :levels]), np.ascontiguousarray(table[:, levels:end]), known, index)

    async def _read(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self._indexed:
            return await self.store.read_indexed(item_ids)
        codes, known = await self.store.read(item_ids)
        return codes, known, None

    def forget(self, item_ids: Sequence[str]) -> None:
        """Drop entries of items this process just wrote: its readers see its own writes at once."""
        self._writes += 1
        for item_id in item_ids:
            self._young.pop(item_id, None)
            self._old.pop(item_id, None)

    def _rotate_if_due(self) -> None:
        # Every entry was inserted after its generation's start time (`*_since`), so a generation
        # dropped ttl_s after its start never serves an entry older than ttl_s, however lazily
        # (only at fetches) the rotation runs.
        now = self._clock()
        if now - self._young_since >= self.ttl_s / 2 or len(self._young) >= self.max_items // 2:
            self._old, self._old_since = self._young, self._young_since
            self._young, self._young_since = {}, now
        if now - self._old_since >= self.ttl_s:
            self._old = {}
