"""Everything the service knows about Redis: connection, key layout, value encoding, round trips.

Key layout (one Redis string per item and model version):

    key   = b"<prefix>:<model_version>:" + item_id.encode("utf-8")     e.g. b"sid:3f2a9c0d1e4b5a67:85123A"
    value = the L codes c_1..c_L packed little-endian, fixed width:
            uint8 when K <= 256, uint16 when K <= 65,536, else uint32 (L = 8, K = 2048: 16 bytes)

- The model version (16 hex digits of the weights hash) is in every key, so SIDs of two models
  never mix: a new model writes new keys and the old ones can be deleted by pattern
  `<prefix>:<old_version>:*`.
- Item IDs are arbitrary UTF-8 (1-256 bytes), used verbatim: Redis keys are binary-safe.
- Writes: one MULTI/EXEC transaction per batch with `SET key value GET` per item, one round
  trip. EXEC applies all SETs or none, and each SET returns the previous value, which gives
  created (none) / unchanged (same bytes) / updated (other bytes) per item.
- Reads: one MGET per request for all distinct IDs, one round trip.

Nothing outside this module builds keys or decodes values, so the layout can change (bucketed
hashes, bit-packing, a local cache) behind `SidStore` without touching the routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

WriteStatus = Literal["created", "updated", "unchanged"]


class StorageUnavailable(Exception):
    """Redis could not be reached or refused the command; the request can be retried later."""

    def __init__(self, operation: str, cause: Exception) -> None:
        super().__init__(f"Redis unavailable during {operation}: {type(cause).__name__}: {cause}")
        self.operation = operation


def connect(url: str, connect_timeout: float, socket_timeout: float, max_connections: int) -> Redis:
    """An asyncio Redis client whose every call ends within bounded time.

    One immediate retry on a connection error replaces a pooled connection that died (Redis
    restarted) without failing the request; a down Redis still fails in ~2 connect attempts.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=False,
    )


def code_dtype(codebook_size: int) -> np.dtype:
    """Narrowest little-endian unsigned integer holding codes in [0, K)."""
    for dtype in ("<u1", "<u2", "<u4"):
        if codebook_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"codebook_size {codebook_size} does not fit in 32 bits")


class SidStore:
    """SIDs of one model version in Redis."""

    def __init__(self, redis: Redis, model_version: str, levels: int, codebook_size: int, prefix: str = "sid"):
        self.redis = redis
        self.levels = levels
        self.dtype = code_dtype(codebook_size)
        self._key_prefix = f"{prefix}:{model_version}:".encode()

    def key(self, item_id: str) -> bytes:
        return self._key_prefix + item_id.encode()

    def pack(self, codes: np.ndarray) -> list[bytes]:
        """[B, L] codes -> B packed values."""
        packed = np.ascontiguousarray(codes, dtype=self.dtype).tobytes()
        width = self.levels * self.dtype.itemsize
        return [packed[i : i + width] for i in range(0, len(packed), width)]

    def unpack(self, values: Sequence[bytes]) -> np.ndarray:
        """B packed values -> int64 [B, L] codes."""
        blob = b"".join(values)
        if len(blob) != len(values) * self.levels * self.dtype.itemsize:
            # A server-side data fault (another layout under our prefix), not the caller's.
            raise RuntimeError(f"stored SID of unexpected length under {self._key_prefix!r}: foreign layout?")
        return np.frombuffer(blob, dtype=self.dtype).reshape(len(values), self.levels).astype(np.int64)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except RedisError as e:
            raise StorageUnavailable("ping", e) from e

    async def write(self, item_ids: Sequence[str], codes: np.ndarray) -> list[WriteStatus]:
        """Store each item's SID, all or nothing, in one round trip; report what changed.

        An ID repeated in the batch is written in order: the last occurrence wins.
        """
        values = self.pack(codes)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for item_id, value in zip(item_ids, values, strict=True):
                    pipe.set(self.key(item_id), value, get=True)
                previous = await pipe.execute()
        except RedisError as e:
            raise StorageUnavailable("write", e) from e
        return [
            "created" if old is None else "unchanged" if old == new else "updated"
            for old, new in zip(previous, values, strict=True)
        ]

    async def read(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """SIDs aligned with item_ids, each distinct ID read once, in one round trip.

        Returns (codes int64 [n, L], known bool [n]); codes of unknown items are 0.
        """
        distinct = list(dict.fromkeys(item_ids))
        if not distinct:
            return np.zeros((0, self.levels), dtype=np.int64), np.zeros(0, dtype=bool)
        try:
            values = await self.redis.mget([self.key(i) for i in distinct])
        except RedisError as e:
            raise StorageUnavailable("read", e) from e
        found = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        distinct_codes = np.zeros((len(distinct), self.levels), dtype=np.int64)
        distinct_codes[found] = self.unpack([v for v in values if v is not None])
        if len(distinct) == len(item_ids):
            return distinct_codes, found
        position = {item_id: i for i, item_id in enumerate(distinct)}
        index = np.fromiter((position[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
        return distinct_codes[index], found[index]
