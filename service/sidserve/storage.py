"""Everything the service knows about Redis: connection, key layout, value encoding, round trips.

Key layout ("sidserve-buckets/1"): items are spread by a hash of their ID over 2^bucket_bits
Redis hashes ("buckets", ~64 items each when 2^bucket_bits ~ items / 64), small enough that
Redis keeps each one as a listpack (one flat allocation, no per-item key, robj or dict entry):

    bucket key = b"<prefix>:{<model_version>:<group>}<bucket>"      e.g. b"sid:{3f2a9c0d1e4b5a67:c}2a7c"
                 bucket = top bucket_bits of h1(item_id), lower-case hex;
                 group  = bucket mod 16, one hex digit (the Redis Cluster hash tag, see below)
                 (28 bytes with the default prefix: the key's allocation stays in jemalloc's 32 B class)
    field      = f bytes (SIDSERVE_STORE_FINGERPRINT_BYTES, default 4): the top 8f bits of
                 h2(item_id), little-endian (an ID fingerprint)
    value      = the L codes, ceil(log2 K) bits each, bit-packed little-endian (codec.BitPacker):
                 L = 8, K = 2048: 88 bits = 11 bytes
    layout key = b"<prefix>:<model_version>:layout" = b"sidserve-buckets/1 bucket_bits=14 ..."

h1, h2 are two independent 64-bit hashes of the ID (codec.IdHasher, vectorised over a request).
Memory (INFO used_memory delta over 1M items written through this module, K = 2048, L = 8, 13-byte
IDs, bucket_bits = 14, the base taken after FUNCTION LOAD): 23.07 B per item with 4-byte
fingerprints, 24.33 B with 5-byte ones (same run), against 136.5 B for the first layout (one
string key per item). Per item a listpack holds 6 B for a 4-byte field (1 header + 4 + 1
back-length) and 13 B for the value; the rest is jemalloc rounding each listpack up to its size
class (~10 %) and the bucket's key, robj and dict entry (~80 B shared by ~61 items). The value has
no spare bit at K = 2048, L = 8 (88 bits).

Trade-offs of the fingerprint instead of the ID (f = fingerprint bytes, ~64 items per bucket):
- Two different items of one model version whose (bucket, fingerprint) agree would share a slot
  (the later write wins, both read the same SID): about n^2 / 2^(bucket_bits + 8f + 1) expected
  pairs for n items, i.e. n * 64 / 2^(8f + 1). f = 4: 1M items 0.007 pairs, 100M 0.75;
  f = 5: 3e-5 and 3e-3. An unknown ID (not uploaded yet) reads as some stored item with
  probability ~64 / 2^(8f) per lookup: 1.5e-8 (f = 4), 6e-11 (f = 5). Either way the harm is one
  item served another item's SID, like a hashed-ID collision but ~10^5 times rarer; f = 4 is the
  default because it keeps the layout within the 24 B per item budget, and corpora of 100M+ items
  should set 5 (1.26 B per item more). Storing the ID itself would rule collisions out at
  2 + len(ID) bytes per item instead of f + 2 (~30 B per item for 13-byte IDs).
- A version keeps the fingerprint width and bucket_bits it was first written with (the layout key
  records both): a process configured otherwise adopts the stored values and logs it.
- A bucket lookup is a linear scan of ~64 entries inside Redis, so a read runs a Redis Function
  (one HGET per ID, Lua) instead of one MGET: more Redis CPU per ID, still one round trip.
  INFO commandstats, 300 IDs: FCALL_RO ~450 us of Redis time per call (HGET 0.63 us per ID, the
  rest Lua's redis.call) against ~50 us for an MGET of 300 string keys. Client-observed p50 in one
  run (`python -m loadtest bench`, 1M items, 2 shared cores): MGET floor 0.08 / 0.65 / 1.82 ms
  for 1 / 300 / 1,000 IDs, SidStore.read 0.28 / 1.86 / 5.76 ms (2.9-3.4x); the same FCALL_RO from
  sync redis-py is ~10% faster than through redis.asyncio (loadtest/bench_storage.py).
- Buckets stay listpacks while they hold <= hash-max-listpack-entries items (512 compiled in,
  128 in the redis.conf shipped with Redis). Size bucket_bits for the corpus (items / 64, rounded
  to a power of two; SIDSERVE_STORE_BUCKET_BITS): 2^14 fits ~1.5M items at 128 and ~7M at 512
  (beyond, some buckets turn into hash tables at ~3-4x the memory, and reads get slower: raise
  the limit or use more buckets; capacity_warning() tells, sidserve-backfill prints it).

Round trips (both one call of the `sidserve` Redis Function library, FUNCTION LOAD'ed by
`prepare()` at startup and again whenever Redis answers that the function is missing, e.g. after
a restart that lost the data set, then the call is retried once):
- Reads: FCALL_RO <read> with one KEYS entry per requested ID (its bucket) and the fingerprints
  in one argument; it answers two strings aligned with the request: the values concatenated
  (zeros for unknown IDs) and one '1'/'0' per ID. No per-ID reply objects to build.
- Writes: FCALL <write> per batch: first every item's previous value (this also surfaces a wrong
  key type before anything is written), then HSET of the items that changed. A function runs
  atomically: all of the batch is applied or none, and each item gets created (no previous
  value) / unchanged (same bytes) / updated (other bytes); a repeated ID is applied in order.
- Chunked writes (`write_chunk_items` n > 0, SIDSERVE_WRITE_CHUNK_ITEMS; off by default): a write of
  more than n items is sent as calls of n items, in order, each atomic, the write as a whole not
  (as on a Redis Cluster, below). Why: a Function call holds Redis for its whole run, ~6.4 us per
  written item, so a 1,000-item batch stalls every read behind it for ~6 ms; in calls of 256 the
  fetches' p99 beside batch uploads fell 36-48 % in the load test (README, "Service API"). If a call
  fails the earlier ones stay applied: the caller gets the error and a re-send completes the
  write (each value is a pure function of the item's content).
- Update notices: a write also passes the items' IDs (length-prefixed records, codec.id_records)
  and `updates_channel(prefix, version)`; in the same atomic call the function PUBLISHes the
  records of the items it `updated` (created and unchanged items need no notice: only known items
  are cached), so every process's SID cache hears of the change (sidserve.notices). The IDs are
  checked before anything is written. A batch of 1,000 IDs carries ~15 KB more.

The per-process cache of hot items sits in front of this module (sidserve.lookup).

Redis Cluster (SIDSERVE_REDIS_CLUSTER=true, `redis_client.connect(cluster=True)`): the hash tag
`{<version>:<group>}` maps a model version's buckets to 16 slots, so to at most 16 masters. One
FCALL may only touch keys of one slot, so a read groups its IDs by group and sends one FCALL_RO
per group (up to 16), pipelined per owning node, all nodes concurrently, and puts the answers
back in request order; a write likewise sends one FCALL per group. The library is loaded on every
master, and again on a node that answers "function not found" (only that call's groups are
retried). Atomicity: each group's part of a batch is atomic (one Function call), the batch as a
whole is not: if a node fails mid-batch the groups on the other nodes may be written and the
request fails (503). Every value is a pure function of the item's content, so re-sending the
same batch completes it (those items then report "unchanged"). Validation happens before any
write, so an invalid batch writes nothing on a cluster too. A single Redis keeps the one-call
path. More groups spread a version over more slots but cost more calls per request; the group
count is part of the key names, so changing it means rewriting the keys.

The model version is in every key, so SIDs of two models never mix: a new model writes new
buckets, and a retired one's are deleted by pattern `<prefix>:{<old_version>:*` with SCAN + UNLINK
in small slices (`delete_version_keys`, run in the background by sidserve.versions; no request
ever scans). The layout key records bucket_bits: a process whose setting differs adopts the
stored value (and logs it), so it still finds the items.

Collision index (SIDSERVE_COLLISION_INDEX, off by default; TIGER's disambiguating token): each
value is followed by k, uint32 little-endian (INDEX_BYTES: 4 more bytes per item, recorded as
`index_bytes=4` in the layout key; without the option values and layout are unchanged), and per
SID a counter holds the next k, in "counter buckets" `<prefix>:{<version>:<group>}k<bucket>`
(a hash per bucket of h1(packed codes): field = the packed codes, value = next k; ~64 SIDs each,
listpacks like the item buckets). An item stored with the same SID keeps its k (re-sends are
stable); a new item, or one whose SID changed, takes its SID counter's next k. On a single Redis
that is one atomic Function call (write_indexed, with the counter keys), so k's of a SID are
0, 1, 2... without gaps, in the order Redis applied the writes (an item leaving a SID leaves a
hole: k's are never reused). On a cluster the counter of a SID is not in its items' slots, so
_write_indexed_groups draws k's first (HINCRBY, one call per counter group) and writes second:
k's stay unique per SID, but a draw that loses a race or a failure between the steps leaves an
unused k (a gap).

Nothing outside this module builds keys or decodes values (codec.py holds the byte encodings,
storage_library.lua the Redis Function library, redis_client.py the connections).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from . import codec
from .codec import BitPacker, IdHasher
from .redis_client import CallConnections, PackedArgs, resp_encoded

log = logging.getLogger("sidserve")

WriteStatus = Literal["created", "updated", "unchanged"]

LAYOUT = "sidserve-buckets/1"
DEFAULT_BUCKET_BITS = 14  # 16,384 buckets: ~64 items each at 1M items
DEFAULT_FINGERPRINT_BYTES = 4  # see "Trade-offs of the fingerprint" above
FINGERPRINT_BYTES_RANGE = range(4, 9)  # 4..8: the fingerprint is the top bytes of a 64-bit hash
# A version's stored layout may differ from this process's settings in these; it adopts them.
_ADOPTABLE = ("bucket_bits", "fingerprint_bytes")
GROUP_BITS = 4  # 16 hash-tag groups (Redis Cluster slots) per model version
_KEY_TABLE_MAX_BITS = 16  # bucket keys are precomputed up to 65,536 buckets (~90 B each)

# The Lua library (storage_library.lua) is named after its code: a changed script loads beside
# the old one (rolling deploys), and loading the same code twice is a no-op.
_LIBRARY_TEMPLATE = resources.files(__package__).joinpath("storage_library.lua").read_text(encoding="utf-8")
LIBRARY_TAG = hashlib.sha256(_LIBRARY_TEMPLATE.encode()).hexdigest()[:12]
LIBRARY_CODE = _LIBRARY_TEMPLATE.replace("__TAG__", LIBRARY_TAG)
READ_FUNCTION = f"sidserve_read_{LIBRARY_TAG}"
WRITE_FUNCTION = f"sidserve_write_{LIBRARY_TAG}"
WRITE_INDEXED_FUNCTION = f"sidserve_write_indexed_{LIBRARY_TAG}"
DRAW_FUNCTION = f"sidserve_draw_{LIBRARY_TAG}"
INDEX_BYTES = 4  # collision index k: uint32 little-endian after the codes (SIDSERVE_COLLISION_INDEX)

_STATUS: dict[int, WriteStatus] = {ord("c"): "created", ord("u"): "updated", ord("n"): "unchanged"}


class StorageUnavailable(Exception):
    """Redis could not be reached or refused the command; the request can be retried later."""

    def __init__(self, operation: str, cause: Exception) -> None:
        super().__init__(f"Redis unavailable during {operation}: {type(cause).__name__}: {cause}")
        self.operation = operation


class LayoutMismatch(RuntimeError):
    """Redis holds this model version's SIDs in a layout this code does not read."""


def code_dtype(codebook_size: int) -> np.dtype:
    """Narrowest little-endian unsigned integer holding codes in [0, K) (for in-memory arrays)."""
    for dtype in ("<u1", "<u2", "<u4"):
        if codebook_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"codebook_size {codebook_size} does not fit in 32 bits")


def _function_missing(error: ResponseError) -> bool:
    return "function not found" in str(error).lower()


class SidStore:
    """SIDs of one model version in Redis."""

    def __init__(
        self, redis: Redis, model_version: str, levels: int, codebook_size: int, prefix: str = "sid",
        bucket_bits: int = DEFAULT_BUCKET_BITS, collision_index: bool = False,
        fingerprint_bytes: int = DEFAULT_FINGERPRINT_BYTES, write_chunk_items: int = 0,
    ) -> None:  # fmt: skip
        if not 1 <= bucket_bits <= 32:
            raise ValueError(f"bucket_bits must be in [1, 32], got {bucket_bits}")
        if fingerprint_bytes not in FINGERPRINT_BYTES_RANGE:
            raise ValueError(f"fingerprint_bytes must be in [4, 8], got {fingerprint_bytes}")
        self.fingerprint_bytes = fingerprint_bytes
        if write_chunk_items < 0:
            raise ValueError(f"write_chunk_items must be >= 0, got {write_chunk_items}")
        # 0: a write is one Function call (all or nothing); n: calls of n items, each all or nothing
        # (see "Chunked writes" above).
        self.write_chunk_items = write_chunk_items
        self.redis = redis
        self._cluster = isinstance(redis, RedisCluster)  # per-group calls (see "Redis Cluster" above)
        self.levels = levels
        self.model_version = model_version
        # With the collision index a value is the codes then k (see "Collision index" above).
        self.collision_index = collision_index
        self.packer = BitPacker(levels, codebook_size, INDEX_BYTES if collision_index else 0)
        self._prefix = prefix
        self._hash = IdHasher()
        self._meta_key = layout_key(prefix, model_version)
        self.updates_channel = updates_channel(prefix, model_version)
        self._prepared = False
        # Decided once: the client (and so its connection class) is fixed for the store's life. No
        # pool: a cluster client, or None for a store that only computes keys.
        pool = None if self._cluster else getattr(redis, "connection_pool", None)
        self._prepacking = getattr(getattr(pool, "connection_class", None), "packs_prepacked", False)
        self._calls: CallConnections | None = getattr(redis, "calls", None) if not self._cluster else None
        self._use_bucket_bits(bucket_bits)

    # --- layout --------------------------------------------------------------------------------
    def _use_bucket_bits(self, bits: int) -> None:
        self.bucket_bits = bits
        self._shift = np.uint64(64 - bits)
        self._groups = 1 << min(bits, GROUP_BITS)
        self._key_table = (
            [self.bucket_key(b) for b in range(1 << bits)] if bits <= _KEY_TABLE_MAX_BITS else None
        )
        # Keys pre-encoded for a connection that splices PackedArgs (read path); None: pass them plainly.
        self._resp_table = list(map(resp_encoded, self._key_table)) if self._key_table is not None and self._prepacking else None

    def bucket_key(self, bucket: int) -> bytes:
        return f"{self._prefix}:{{{self.model_version}:{bucket % self._groups:x}}}{bucket:x}".encode()

    def counter_key(self, bucket: int) -> bytes:
        """A counter bucket of the collision index: 'k' keeps it apart from the (hex) item buckets."""
        return f"{self._prefix}:{{{self.model_version}:{bucket % self._groups:x}}}k{bucket:x}".encode()

    @property
    def layout(self) -> str:
        # The value width follows from the model version's L and K (plus k's bytes); the read checks it.
        layout = f"{LAYOUT} bucket_bits={self.bucket_bits} group_bits={GROUP_BITS} fingerprint_bytes={self.fingerprint_bytes}"
        return layout + (f" index_bytes={INDEX_BYTES}" if self.collision_index else "")

    def _buckets(self, item_ids: Sequence[str]) -> tuple[list[int], bytes]:
        h = self._hash(item_ids)
        f = self.fingerprint_bytes
        top = h[:, 1] >> np.uint64(64 - 8 * f)
        fields = top.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :f].tobytes()
        return (h[:, 0] >> self._shift).tolist(), fields

    def locate(self, item_ids: Sequence[str]) -> tuple[list[bytes], bytes]:
        """Each ID's bucket key, and the IDs' fingerprints concatenated (fingerprint_bytes each)."""
        buckets, fields = self._buckets(item_ids)
        return self._bucket_keys(buckets), fields

    def _bucket_keys(self, buckets: list[int]) -> list[bytes]:
        table = self._key_table
        return list(map(table.__getitem__, buckets)) if table is not None else list(map(self.bucket_key, buckets))

    def _keys_arg(self, item_ids: Sequence[str]) -> tuple[list[Any], bytes]:
        """locate(), with the keys as one PackedArgs when the connection takes them."""
        if self._resp_table is None:
            return self.locate(item_ids)
        buckets, fields = self._buckets(item_ids)
        return [PackedArgs(len(buckets), b"".join(map(self._resp_table.__getitem__, buckets)))], fields

    # --- Redis ---------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Load the function library and check (or record) the layout: two round trips, once.

        Idempotent and cheap to repeat; reads and writes call it first when it has not succeeded
        yet (e.g. Redis was down at startup). Nothing here scans keys. On a cluster the library
        is loaded on every master (a function runs where its call's slot lives).
        """
        if self._cluster:
            await self._load_library_on_masters()
        else:
            try:
                await self.redis.function_load(LIBRARY_CODE)
            except ResponseError as e:
                if "already exists" not in str(e):
                    raise
        stored = await self.redis.set(self._meta_key, self.layout.encode(), nx=True, get=True)
        if stored is not None and stored.decode() != self.layout:
            self._adopt(stored.decode())
        self._prepared = True

    async def _load_library_on_masters(self) -> None:
        """FUNCTION LOAD on each master of the cluster, concurrently (topology refreshed first)."""
        cluster = self.redis
        assert isinstance(cluster, RedisCluster)
        try:
            await cluster.initialize()
            results = await asyncio.gather(
                *(cluster.execute_command("FUNCTION LOAD", LIBRARY_CODE, target_nodes=node)
                  for node in cluster.get_primaries()),
                return_exceptions=True,
            )  # fmt: skip
        except RedisClusterException as e:  # not a RedisError: callers expect one
            raise ClusterError(f"{type(e).__name__}: {e}") from e
        for result in results:
            if isinstance(result, ResponseError) and "already exists" in str(result):
                continue
            if isinstance(result, RedisClusterException):
                raise ClusterError(f"{type(result).__name__}: {result}") from result
            if isinstance(result, BaseException):
                raise result

    def _adopt(self, stored: str) -> None:
        fields = dict(part.split("=", 1) for part in stored.split()[1:] if "=" in part)
        ours = dict(part.split("=", 1) for part in self.layout.split()[1:])
        same_otherwise = {k: v for k, v in fields.items() if k not in _ADOPTABLE} == {
            k: v for k, v in ours.items() if k not in _ADOPTABLE
        }
        adoptable = fields.get("bucket_bits", "").isdigit() and fields.get("fingerprint_bytes", "").isdigit() and (
            int(fields["fingerprint_bytes"]) in FINGERPRINT_BYTES_RANGE
        )
        if not stored.startswith(LAYOUT + " ") or not same_otherwise or not adoptable:
            raise LayoutMismatch(
                f"{self._meta_key.decode()} says {stored!r}; this service writes {self.layout!r} "
                "(index_bytes comes from SIDSERVE_COLLISION_INDEX, which must match what the version was written with)"
            )
        log.warning(
            "model %s is stored with bucket_bits=%s fingerprint_bytes=%s, not the configured %d and %d: "
            "using the stored values", self.model_version, fields["bucket_bits"], fields["fingerprint_bytes"],
            self.bucket_bits, self.fingerprint_bytes,
        )  # fmt: skip
        self.fingerprint_bytes = int(fields["fingerprint_bytes"])
        self._use_bucket_bits(int(fields["bucket_bits"]))

    async def _ensure_prepared(self, operation: str) -> None:
        if not self._prepared:  # before locate(): prepare() may adopt the stored bucket_bits / fingerprint
            try:
                await self.prepare()
            except RedisError as e:
                raise StorageUnavailable(operation, e) from e

    async def _fcall(self, operation: str, function: str, n: int, keys: list[Any], args: Sequence[Any]) -> Any:
        """A function call on a single Redis; the library is loaded again if Redis lost it."""
        command = ("FCALL_RO" if function == READ_FUNCTION else "FCALL", function, n, *keys, *args)
        try:
            try:
                return await self._execute(command)
            except ResponseError as e:
                if not _function_missing(e):
                    raise
                log.warning("Redis lost the sidserve functions (restart?): loading them again")
                self._prepared = False
                await self.prepare()
                return await self._execute(command)
        except RedisError as e:
            raise StorageUnavailable(operation, e) from e

    async def _execute(self, command: tuple[Any, ...]) -> Any:
        """One command on a connection of the client's CallConnections (sidserve.redis_client: see
        there why), or through redis-py's own execute_command for a client that
        redis_client.connect() did not make."""
        if self._calls is not None:
            return await self._calls.execute(command)
        return await self.redis.execute_command(*command)

    async def capacity_warning(self, items: int) -> str | None:
        """Why `items` items would not fit this version's buckets as listpacks, or None.

        A bucket holding more than Redis' hash-max-listpack-entries items turns into a hash table:
        several times the memory and slower reads. Items spread over the buckets ~Poisson, so the
        check is mean + 4 standard deviations (about 1 bucket in 30,000 beyond). None too when it
        cannot tell: a cluster, or CONFIG GET refused (managed Redis).
        """
        await self._ensure_prepared("check")  # the stored bucket_bits count, not the configured ones
        if self._cluster:
            return None
        try:
            reply = await self.redis.config_get("hash-max-listpack-entries")
            limit = int(reply["hash-max-listpack-entries"])
        except (RedisError, KeyError, ValueError):
            return None

        def fits(bits: int) -> bool:
            mean = items / (1 << bits)
            return mean + 4 * math.sqrt(mean) <= limit

        if fits(self.bucket_bits):
            return None
        enough = next((b for b in range(self.bucket_bits + 1, 33) if fits(b)), 32)
        return (
            f"{items:,} items over 2^{self.bucket_bits} buckets is ~{items / (1 << self.bucket_bits):,.0f} per "
            f"bucket, more than Redis' hash-max-listpack-entries {limit} in some buckets: those become hash tables "
            f"(several times the memory, slower reads). Write this model version with bucket bits >= {enough} "
            "(SIDSERVE_STORE_BUCKET_BITS / --bucket-bits, before its first write), or raise hash-max-listpack-entries."
        )

    async def ping(self) -> None:
        """PING Redis (every master of a cluster), and prepare() if that has not succeeded yet."""
        try:
            if self._cluster:
                await self.redis.execute_command("PING", target_nodes=RedisCluster.PRIMARIES)
            else:
                await self.redis.ping()
            if not self._prepared:
                await self.prepare()
        except (RedisError, RedisClusterException) as e:
            raise StorageUnavailable("ping", e) from e

    # --- Redis Cluster: one Function call per hash-tag group ---------------------------------------
    def _group_parts(self, item_ids: Sequence[str]) -> tuple[list[bytes], bytes, list[np.ndarray]]:
        """locate(), plus the request positions of each group's IDs (in request order)."""
        buckets, fields = self._buckets(item_ids)
        return self._bucket_keys(buckets), fields, self._split_by_group(buckets)

    def _split_by_group(self, buckets: list[int]) -> list[np.ndarray]:
        """The positions of each hash-tag group's buckets, in order within a group."""
        groups = np.asarray(buckets, dtype=np.int64) % self._groups
        order = np.argsort(groups, kind="stable")  # stable: a repeated ID keeps its order
        return np.split(order, np.flatnonzero(np.diff(groups[order])) + 1)

    async def _fcall_groups(
        self, operation: str, function: str, parts: list[np.ndarray], make_args: Callable[[np.ndarray], list[Any]]
    ) -> list[Any]:
        """One call of `function` per group (its keys share one slot), pipelined per node, all
        nodes concurrently; replies in `parts` order. Groups whose node lost the library (a
        restart without data) are retried once after loading it again; any other failure raises
        StorageUnavailable, and the groups that did succeed stay applied."""
        command = "FCALL_RO" if function == READ_FUNCTION else "FCALL"
        replies: list[Any] = [None] * len(parts)
        todo = list(range(len(parts)))
        for attempt in range(2):
            try:
                pipe = self.redis.pipeline()
                for g in todo:
                    pipe.execute_command(command, function, *make_args(parts[g]))
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, RedisClusterException) as e:
                raise StorageUnavailable(operation, e) from e
            missing = []
            for g, result in zip(todo, results, strict=True):
                if attempt == 0 and isinstance(result, ResponseError) and _function_missing(result):
                    missing.append(g)
                elif isinstance(result, BaseException):
                    raise StorageUnavailable(operation, result) from result  # type: ignore[arg-type]
                else:
                    replies[g] = result
            if not missing:
                break
            log.warning("a Redis Cluster node lost the sidserve functions (restart?): loading them again")
            self._prepared = False
            try:
                await self.prepare()
            except RedisError as e:
                raise StorageUnavailable(operation, e) from e
            todo = missing
        return replies

    async def _read_groups(self, item_ids: Sequence[str]) -> tuple[bytes, bytes]:
        """_read_raw on a cluster: one FCALL_RO per group, answers put back in request order."""
        n, f, w = len(item_ids), self.fingerprint_bytes, self.packer.width
        keys, fields, parts = self._group_parts(item_ids)
        fp = np.frombuffer(fields, dtype=np.uint8).reshape(n, f)
        replies = await self._fcall_groups(
            "read", READ_FUNCTION, parts, lambda idx: [len(idx), *map(keys.__getitem__, idx.tolist()), fp[idx].tobytes(), f, w]
        )  # fmt: skip
        values, found = np.empty((n, w), dtype=np.uint8), np.empty(n, dtype=np.uint8)
        for idx, (v, k) in zip(parts, replies, strict=True):
            if len(v) != len(idx) * w or len(k) != len(idx):
                raise RuntimeError(f"unexpected read reply under {self._meta_key!r}")  # a server-side fault
            values[idx] = np.frombuffer(v, dtype=np.uint8).reshape(len(idx), w)
            found[idx] = np.frombuffer(k, dtype=np.uint8)
        return values.tobytes(), found.tobytes()

    async def _write_groups(self, item_ids: Sequence[str], values: bytes) -> bytes:
        """The write function on a cluster: one FCALL per group; statuses in request order.
        Atomic per group only (see "Redis Cluster" above)."""
        n, f, w = len(item_ids), self.fingerprint_bytes, self.packer.width
        keys, fields, parts = self._group_parts(item_ids)
        fp = np.frombuffer(fields, dtype=np.uint8).reshape(n, f)
        vals = np.frombuffer(values, dtype=np.uint8).reshape(n, w)
        records = codec.id_records(item_ids)
        replies = await self._fcall_groups(
            "write", WRITE_FUNCTION, parts,
            lambda idx: [len(idx), *map(keys.__getitem__, idx.tolist()), fp[idx].tobytes(), vals[idx].tobytes(), f, w,
                         *self._notice_args(map(records.__getitem__, idx.tolist()))],
        )  # fmt: skip
        statuses = np.empty(n, dtype=np.uint8)
        for idx, reply in zip(parts, replies, strict=True):
            statuses[idx] = np.frombuffer(reply, dtype=np.uint8)
        return statuses.tobytes()

    async def write(self, item_ids: Sequence[str], codes: np.ndarray) -> list[WriteStatus]:
        """Store each item's SID, all or nothing, in one round trip; report what changed.
        (On a cluster: one call per group, all or nothing per group only; see "Redis Cluster".
        With write_chunk_items: one call per chunk, all or nothing per chunk; see "Chunked writes".)

        An ID repeated in the batch is written in order: the last occurrence wins.
        """
        if self.collision_index:
            return (await self.write_indexed(item_ids, codes))[0]
        if len(item_ids) != len(codes):
            raise ValueError(f"{len(item_ids)} IDs but {len(codes)} SIDs")
        if not item_ids:
            return []
        if self._chunked(len(item_ids)):
            statuses_of_chunks = [await self.write(item_ids[lo:hi], codes[lo:hi]) for lo, hi in self._chunks(len(item_ids))]
            return [status for chunk in statuses_of_chunks for status in chunk]
        await self._ensure_prepared("write")
        if self._cluster:
            statuses = await self._write_groups(item_ids, self.packer.pack(codes))
        else:
            keys, fields = self._keys_arg(item_ids)
            values = self.packer.pack(codes)
            statuses = await self._fcall(
                "write", WRITE_FUNCTION, len(item_ids), keys,
                (fields, values, self.fingerprint_bytes, self.packer.width, *self._notice_args(codec.id_records(item_ids))),
            )  # fmt: skip
        return [_STATUS[s] for s in statuses]

    def _chunked(self, n: int) -> bool:
        return 0 < self.write_chunk_items < n

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """[start, stop) of each write call's items, in order (a repeated ID's last occurrence still wins)."""
        size = self.write_chunk_items
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]

    def _notice_args(self, records: Iterable[bytes]) -> tuple[bytes, bytes]:
        """The write functions' update-notice arguments: the channel and the items' ID records
        (codec.id_records) in the order of the call's items."""
        return self.updates_channel, b"".join(records)

    # --- collision index (SIDSERVE_COLLISION_INDEX; "Collision index" above) ---------------------
    def _counter_buckets(self, code_rows: np.ndarray) -> list[int]:
        """The counter bucket of each SID: top bucket_bits of h1 over its packed codes (as latin-1 text)."""
        sids = [row.tobytes().decode("latin-1") for row in code_rows]
        return (self._hash(sids)[:, 0] >> self._shift).tolist()

    async def write_indexed(self, item_ids: Sequence[str], codes: np.ndarray) -> tuple[list[WriteStatus], np.ndarray]:
        """write() with the collision index: (statuses, each item's k int64 [n]).

        An item stored with the same SID keeps its k (unchanged); any other item gets the next k of
        its SID's counter. Single Redis: one atomic call, as write() (one per chunk with
        write_chunk_items). Cluster: see _write_indexed_groups.
        """
        if not self.collision_index:
            raise RuntimeError("this store was opened without the collision index")
        if len(item_ids) != len(codes):
            raise ValueError(f"{len(item_ids)} IDs but {len(codes)} SIDs")
        if not item_ids:
            return [], np.zeros(0, dtype=np.int64)
        if self._chunked(len(item_ids)):
            parts = [await self.write_indexed(item_ids[lo:hi], codes[lo:hi]) for lo, hi in self._chunks(len(item_ids))]
            return [status for statuses, _ in parts for status in statuses], np.concatenate([ks for _, ks in parts])
        await self._ensure_prepared("write")
        n, cw = len(item_ids), self.packer.code_width
        values = np.frombuffer(self.packer.pack(codes), dtype=np.uint8).reshape(n, self.packer.width)
        if self._cluster:
            statuses, ks = await self._write_indexed_groups(item_ids, values)
        else:
            keys, fields = self.locate(item_ids)
            counters = list(map(self.counter_key, self._counter_buckets(values[:, :cw])))
            statuses, ks = await self._fcall(
                "write", WRITE_INDEXED_FUNCTION, 2 * n, keys + counters,
                (fields, values.tobytes(), self.fingerprint_bytes, self.packer.width, *self._notice_args(codec.id_records(item_ids))),
            )  # fmt: skip
        return [_STATUS[s] for s in statuses], np.frombuffer(ks, dtype="<u4").astype(np.int64)

    async def _write_indexed_groups(self, item_ids: Sequence[str], values: np.ndarray) -> tuple[bytes, bytes]:
        """write_indexed on a cluster, where a SID's counter is not in its items' slots, in three steps:
        1. read the items (one FCALL_RO per group): those already stored with the same SID keep their k;
        2. draw a k for each other (item, SID) from the SID's counter (one FCALL per counter group, HINCRBY);
        3. write them (one FCALL per group), again keeping a value whose SID is already stored
           (a concurrent writer got there first: the k drawn in step 2 is then left unused).
        Each k comes from one HINCRBY, so no two items of a SID ever hold the same k; k's lost in
        step 3 or by a failure after step 2 leave gaps. Each step is atomic per group only."""
        n, f, w, cw = len(item_ids), self.fingerprint_bytes, self.packer.width, self.packer.code_width
        stored, found = await self._read_groups(item_ids)
        old = np.frombuffer(stored, dtype=np.uint8).reshape(n, w)
        same = (np.frombuffer(found, dtype=np.uint8) == ord("1")) & (old[:, :cw] == values[:, :cw]).all(axis=1)
        values = values.copy()
        values[same, cw:] = old[same, cw:]
        # One draw per (item, SID): a repeated ID in the batch keeps its first occurrence's k.
        todo = np.flatnonzero(~same)
        first: dict[tuple[str, bytes], int] = {}
        owner = [first.setdefault((item_ids[i], values[i, :cw].tobytes()), i) for i in todo.tolist()]
        heads = np.array(sorted(first.values()), dtype=np.int64)
        if heads.size:
            values[heads, cw:] = await self._draw_groups(values[heads, :cw])
            values[todo, cw:] = values[owner, cw:]
        keys, fields, parts = self._group_parts(item_ids)
        fp = np.frombuffer(fields, dtype=np.uint8).reshape(n, f)
        records = codec.id_records(item_ids)
        replies = await self._fcall_groups(
            "write", WRITE_INDEXED_FUNCTION, parts,
            lambda idx: [len(idx), *map(keys.__getitem__, idx.tolist()), fp[idx].tobytes(), values[idx].tobytes(), f, w,
                         *self._notice_args(map(records.__getitem__, idx.tolist()))],
        )  # fmt: skip
        statuses, ks = np.empty(n, dtype=np.uint8), np.empty((n, INDEX_BYTES), dtype=np.uint8)
        for idx, (status, k) in zip(parts, replies, strict=True):
            statuses[idx] = np.frombuffer(status, dtype=np.uint8)
            ks[idx] = np.frombuffer(k, dtype=np.uint8).reshape(len(idx), INDEX_BYTES)
        return statuses.tobytes(), ks.tobytes()

    async def _draw_groups(self, code_rows: np.ndarray) -> np.ndarray:
        """The next k of each SID ([m, code_width] packed codes) as uint8 [m, INDEX_BYTES]: one
        draw call per counter group, pipelined per node."""
        buckets = self._counter_buckets(code_rows)
        keys = list(map(self.counter_key, buckets))
        parts = self._split_by_group(buckets)
        replies = await self._fcall_groups(
            "write", DRAW_FUNCTION, parts,
            lambda idx: [len(idx), *map(keys.__getitem__, idx.tolist()), code_rows[idx].tobytes(), code_rows.shape[1]],
        )  # fmt: skip
        ks = np.empty((len(code_rows), INDEX_BYTES), dtype=np.uint8)
        for idx, reply in zip(parts, replies, strict=True):
            ks[idx] = np.frombuffer(reply, dtype=np.uint8).reshape(len(idx), INDEX_BYTES)
        return ks

    async def read_indexed(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """read() plus each item's collision index (int64 [n], 0 where unknown)."""
        n = len(item_ids)
        if not n:
            return np.zeros((0, self.levels), dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        values, found = await self._read_raw(item_ids)
        known = np.frombuffer(found, dtype=np.uint8) == ord("1")
        return self.packer.unpack(values, n), known, self.packer.unpack_index(values, n)

    async def _read_raw(self, item_ids: Sequence[str]) -> tuple[bytes, bytes]:
        """(values, found) as the read function answers them: one round trip."""
        await self._ensure_prepared("read")
        if self._cluster:
            return await self._read_groups(item_ids)
        keys, fields = self._keys_arg(item_ids)
        values, found = await self._fcall(
            "read", READ_FUNCTION, len(item_ids), keys, (fields, self.fingerprint_bytes, self.packer.width)
        )
        if len(values) != len(item_ids) * self.packer.width or len(found) != len(item_ids):
            raise RuntimeError(f"unexpected read reply under {self._meta_key!r}")  # a server-side fault
        return values, found

    async def read(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """SIDs aligned with item_ids, in at most one round trip (a repeated ID is looked up again).

        Returns (codes int64 [n, L], known bool [n]); codes of unknown items are 0.
        """
        n = len(item_ids)
        if not n:
            return np.zeros((0, self.levels), dtype=np.int64), np.zeros(0, dtype=bool)
        values, found = await self._read_raw(item_ids)
        return self.packer.unpack(values, n), np.frombuffer(found, dtype=np.uint8) == ord("1")


# --- model lifecycle: keys outside a version's buckets, and deleting a retired version ------------
def updates_channel(prefix: str, model_version: str) -> bytes:
    """The Pub/Sub channel on which the write functions announce a version's updated items."""
    return f"{prefix}:updates:{model_version}".encode()


def layout_key(prefix: str, model_version: str) -> bytes:
    return f"{prefix}:{model_version}:layout".encode()


def lifecycle_key(prefix: str) -> bytes:
    """The hash shared by all replicas: field `active` = the active model version, and field
    `retired:<version>` = the JSON status of each retired version (sidserve.versions)."""
    return f"{prefix}:models".encode()


def retirement_lease_key(prefix: str, model_version: str) -> bytes:
    """Held (SET NX EX) by the one process deleting a retired version's keys."""
    return f"{prefix}:retiring:{model_version}".encode()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


def version_pattern(prefix: str, model_version: str) -> bytes:
    """SCAN MATCH pattern of every bucket (and collision counter) of one model version, and of
    nothing else: other versions and other prefixes differ inside `<prefix>:{<version>:`."""
    return f"{_glob_escape(prefix)}:{{{_glob_escape(model_version)}:*".encode()


async def delete_version_keys(
    redis: Redis | RedisCluster, prefix: str, model_version: str, batch: int, pause_s: float,
    on_deleted: Callable[[int], Awaitable[None]],
) -> int:  # fmt: skip
    """UNLINK every key of one model version (version_pattern, then its layout key); returns how many.

    SCAN MATCH ... COUNT `batch` walks the keyspace a slice per call (never KEYS: Redis stays
    responsive), each slice's matches are UNLINKed at once (memory freed off Redis' main thread),
    then `pause_s` leaves room for other clients; `on_deleted(n)` reports each slice. On a cluster
    every master is scanned (redis-py sends a cluster UNLINK once per hash slot). Keys written
    behind the cursor while it runs are not seen: run it again to sweep those (it is idempotent).
    """
    pattern = version_pattern(prefix, model_version)
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        scans = [_scan_node(redis, node, pattern, batch, pause_s) for node in redis.get_primaries()]
    else:
        scans = [_scan_node(redis, None, pattern, batch, pause_s)]
    deleted = 0
    for scan in scans:
        async for keys in scan:
            removed = await redis.unlink(*keys)
            deleted += removed
            await on_deleted(removed)
    removed = await redis.unlink(layout_key(prefix, model_version))
    await on_deleted(removed)
    return deleted + removed


async def _scan_node(
    redis: Redis | RedisCluster, node: ClusterNode | None, pattern: bytes, batch: int, pause_s: float
) -> AsyncIterator[list[bytes]]:
    """The non-empty slices of one SCAN MATCH walk (of one cluster master when `node` is given),
    pausing pause_s after each SCAN call."""
    cursor = None
    while cursor != 0:
        if node is None:
            cursor, keys = await redis.scan(cursor or 0, match=pattern, count=batch)
        else:
            cursors, keys = await redis.scan(cursor or 0, match=pattern, count=batch, target_nodes=node)
            cursor = cursors[node.name]
        if keys:
            yield keys
        await asyncio.sleep(pause_s)
