"""Several model versions served at once: the loaded bundles, the active version shared through
Redis, and retiring a version (README "Model lifecycle").

- Each bundle of SIDSERVE_BUNDLE / SIDSERVE_BUNDLES becomes a `Serving`: its model, its SidStore
  (every key carries its model version) and its feature config. All take the same input_dim,
  because an upload writes the item under every loaded version.
- The active version, the one a request gets when it names none, is field `active` of the Redis
  hash `<prefix>:models`, so all replicas serve the same one and a switch is one HSET. Each process
  re-reads the hash every SIDSERVE_ACTIVE_REFRESH_S in a background task (a request pays no round
  trip for it) and a request resolves its version once, at its start (it never mixes two). With no
  active version recorded, the first configured bundle is (HSETNX-like: the first replica wins).
- A replica that reads an active version it has not loaded keeps serving its current one and says
  so in its log and in /readyz `warnings`: load a bundle on every replica before activating it.
- Uploads write every loaded, non-retired version, so a new version stays complete while it is
  backfilled and a switch leaves no gap.
- In the background, each process also follows the loaded versions' update notices
  (sidserve.notices), so its SID caches hear of items other processes updated.
- Retiring a version (never the active one: checked against Redis in the same script that records
  it) adds field `retired:<version>` = its JSON status to the hash. This process stops serving and
  writing it at once, the others at their next refresh; the deletion waits 2 refresh intervals +
  the Redis reply timeout (so no replica still writes it), then UNLINKs its keys in small SCAN
  slices (storage.delete_version_keys), writing its progress back to the hash, so every replica's
  GET /v1/models shows it. The deleting process holds a lease key; if it dies, its progress stops,
  and after STALLED_RETIREMENT_S a running replica takes the lease and resumes the deletion
  (retiring the version again resumes it too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from . import storage
from .features import FeatureConfig
from .lookup import FeatureLookup
from .metrics import Metrics
from .model import BundleError, SidModel
from .notices import UpdateFollower
from .responses import FeaturesEncoder
from .schemas import VERSION_PATTERN, FeatureConfigOut
from .settings import Settings
from .storage import SidStore, StorageUnavailable, WriteStatus

log = logging.getLogger("sidserve")

RETRY_S = 1.0  # a retirement's wait before trying again after a Redis error
# A retirement whose progress was not written for this long lost its deleting process (crash,
# restart): a replica takes it over, holding a lease key so that only one does.
STALLED_RETIREMENT_S = 60.0
INLINE_ENCODE_MAX_ITEMS = 8  # uploads encoding at most this many items (x versions) skip the threadpool

# One script each, on the one hash key, so the check and the change are atomic (on a cluster too).
_ACTIVATE = """
if redis.call('HEXISTS', KEYS[1], 'retired:' .. ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'active', ARGV[1])
return 1
"""
_RECORD_DEFAULT = """
if redis.call('HEXISTS', KEYS[1], 'active') == 1 or redis.call('HEXISTS', KEYS[1], 'retired:' .. ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'active', ARGV[1])
return 1
"""
_RETIRE = """
if redis.call('HGET', KEYS[1], 'active') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'retired:' .. ARGV[1], ARGV[2])
return 1
"""


class NotReady(Exception):
    """No model version can be served: none loaded, or this process's active one was retired."""

    def __init__(self, detail: str = "No model bundle is loaded (set SIDSERVE_BUNDLE or SIDSERVE_BUNDLES).") -> None:
        super().__init__(detail)
        self.detail = detail


class VersionNotServed(Exception):
    """A request named a model version this process does not serve (the API answers 422)."""


class UnknownVersion(Exception):
    """Neither this process nor Redis knows the model version (the API answers 404)."""


class LifecycleConflict(Exception):
    """The operation contradicts the lifecycle state, e.g. retiring the active version (409)."""


@dataclass
class Serving:
    """What a loaded bundle brings: the model, its SID store and the served feature config."""

    model: SidModel
    store: SidStore
    lookup: FeatureLookup  # reads: the store behind the per-process cache of hot items
    features: FeatureConfig
    features_out: dict[str, Any]
    encoder: FeaturesEncoder  # the features answers of this version as JSON

    @property
    def version(self) -> str:
        return self.model.version


@dataclass
class VersionWrite:
    """One version's part of an upload: SIDs, statuses, and k (None without the collision index)."""

    version: str
    codes: np.ndarray
    statuses: list[WriteStatus]
    index: np.ndarray | None


def load_servings(
    settings: Settings, redis: Redis | RedisCluster, on_cache: Callable[[int, int], None]
) -> list[Serving]:
    """Every configured bundle, verified (a broken one raises BundleError: no start), in order."""
    s = settings
    servings: list[Serving] = []
    for path in s.bundle_paths:
        model = SidModel.load(path, s.onnx_intra_op_threads, s.onnx_spinning)
        _check_compatible(model, servings)
        features = FeatureConfig(
            s.parameterization, model.codebook_size, model.levels, s.ngram or model.levels, s.table_size
        )
        for warning in features.warnings():
            log.warning("model %s feature config: %s", model.version, warning)
        features_out = FeatureConfigOut.of(features).model_dump()
        store = SidStore(
            redis, model.version, model.levels, model.codebook_size, s.key_prefix, s.store_bucket_bits,
            collision_index=s.collision_index, fingerprint_bytes=s.store_fingerprint_bytes,
            write_chunk_items=s.write_chunk_items,
        )  # fmt: skip
        lookup = FeatureLookup(store, features, s.cache_ttl_s, s.cache_max_items, s.cache_max_age_s, on_lookup=on_cache)
        encoder = FeaturesEncoder(model.version, features_out, lookup.layout)
        servings.append(Serving(model, store, lookup, features, features_out, encoder))
        log.info(
            "model %s loaded from %s: D=%d L=%d K=%d; features %s",
            model.version, path, model.input_dim, model.levels, model.codebook_size, features_out,
        )  # fmt: skip
    return servings


def _check_compatible(model: SidModel, loaded: Sequence[Serving]) -> None:
    if not VERSION_PATTERN.fullmatch(model.version):
        raise BundleError(f"{model.path}: model_version {model.version!r} must match {VERSION_PATTERN.pattern}")
    for other in loaded:
        if other.version == model.version:
            raise BundleError(f"{model.path}: model version {model.version} is already loaded from {other.model.path}")
        if other.model.input_dim != model.input_dim:
            raise BundleError(
                f"{model.path}: input_dim {model.input_dim}, but {other.model.path} takes {other.model.input_dim}; "
                "every loaded bundle must take the same embeddings (an upload writes all versions)"
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _retirement(state: str) -> dict[str, Any]:
    now = _now()
    return {"state": state, "keys_deleted": 0, "requested_at": now, "updated_at": now, "error": None}


def _stalled(record: dict[str, Any]) -> bool:
    """A retirement still under way whose progress has not been written for STALLED_RETIREMENT_S."""
    if record.get("state") not in ("draining", "deleting"):
        return False
    try:
        updated = datetime.fromisoformat(record["updated_at"])
    except (KeyError, TypeError, ValueError):
        return True
    return (datetime.now(UTC) - updated).total_seconds() > STALLED_RETIREMENT_S


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness (Linux only: elsewhere it would be the whole process's)."""
    if nice and sys.platform == "linux":
        os.nice(nice)


class ModelRegistry:
    """The loaded versions of one process, its active version, and its retirements."""

    def __init__(
        self, servings: list[Serving], redis: Redis | RedisCluster, settings: Settings, metrics: Metrics
    ) -> None:
        self._servings = {s.version: s for s in servings}  # loaded and not retired, in configured order
        self._configured = [s.version for s in servings]
        self._redis = redis
        self._key = storage.lifecycle_key(settings.key_prefix)
        self._prefix = settings.key_prefix
        self._refresh_s = settings.active_refresh_s
        # No replica may still write a version when its keys are deleted: each sees the retirement
        # within one refresh (+ a Redis reply); twice that covers a refresh that was in flight.
        self._grace_s = 2 * settings.active_refresh_s + settings.redis_socket_timeout
        self._retire_batch, self._retire_pause_s = settings.retire_batch_keys, settings.retire_pause_s
        self.collision_index = settings.collision_index
        self._metrics = metrics
        self._active: str | None = servings[0].version if servings else None
        self._redis_active: str | None = None
        self._retired: dict[str, dict[str, Any]] = {}  # from Redis, refreshed
        self._retiring: dict[str, tuple[asyncio.Task[None], dict[str, Any]]] = {}  # this process's deletions
        self._lease_owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._refresh_error: str | None = None
        self._logged_mismatch: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        # The SID caches hear other processes' updates (sidserve.notices) unless the cache or that option is off.
        self._follower = (
            UpdateFollower(redis, {s.store.updates_channel: s.lookup for s in servings}, metrics, self._stopped)
            if servings and settings.cache_ttl_s > 0 and settings.cache_max_age_s > 0 else None
        )  # fmt: skip
        self._following: asyncio.Task[None] | None = None
        # Batches are encoded off the event loop on threads at niceness ingest_nice (Linux niceness
        # is per thread): ingest yields the CPU to the features path where they share cores. As many
        # threads as cores: with one, concurrent batches waited for each other (binary ingest, 2
        # workers: 22,467-24,213 items/s against 26,023-29,859 with four).
        self._encoder = ThreadPoolExecutor(os.cpu_count(), "sidserve-encode", _lower_priority, (settings.ingest_nice,))
        for s in servings:
            metrics.model_info.labels(s.version, str(s.model.levels), str(s.model.codebook_size)).set(1)
        self._set_active(self._active)

    # --- lifecycle of the process --------------------------------------------------------------
    async def start(self) -> None:
        """Read (or record) the active version once, then keep it fresh in the background."""
        if not self._servings:
            return
        for serving in self._servings.values():
            try:  # load the Redis functions now (two round trips, no key scan); else on first use
                await serving.store.prepare()
            except RedisError as e:
                log.warning("Redis unreachable at startup (%s): the storage functions load on first use", e)
                break
        try:
            await self.refresh()
        except (RedisError, RedisClusterException) as e:
            self._refresh_error = f"{type(e).__name__}: {e}"
            log.warning("Redis unreachable at startup (%s): serving %s until the active version can be read",
                        e, self._active)  # fmt: skip
        self._refresher = asyncio.create_task(self._refresh_loop(), name="sidserve-active-refresh")
        if self._follower is not None:
            self._following = asyncio.create_task(self._follower.run(), name="sidserve-update-notices")

    async def stop(self) -> None:
        self._stopped.set()
        background = (self._refresher, self._following, *(t for t, _ in self._retiring.values()))
        tasks = [t for t in background if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def _stopping(self, delay: float) -> bool:
        """Wait `delay` seconds; True once stop() was called. The loops check this rather than rely
        on cancellation alone: redis-py's timeouts can turn a cancellation into a ConnectionError."""
        try:
            await asyncio.wait_for(self._stopped.wait(), delay)
        except TimeoutError:
            pass
        return self._stopped.is_set()

    async def _refresh_loop(self) -> None:
        while not await self._stopping(self._refresh_s):
            try:
                await self.refresh()
            except (RedisError, RedisClusterException) as e:
                if self._stopped.is_set():
                    return
                if self._refresh_error is None:
                    log.warning("cannot read the active model version from Redis (%s): serving %s meanwhile",
                                e, self._active)  # fmt: skip
                self._refresh_error = f"{type(e).__name__}: {e}"
            except Exception as e:  # a bug must not end the loop: this process would stop following switches
                log.exception("reading the model lifecycle state failed")
                self._refresh_error = f"{type(e).__name__}: {e}"

    async def refresh(self) -> None:
        """Read the active version and the retirements from Redis (one HGETALL) and apply them."""
        state = await self._redis.hgetall(self._key)
        if b"active" not in state and self._active is not None:
            # Never recorded, or Redis lost its data: record what this process serves (the first
            # replica to do so wins), so all replicas agree again.
            await self._redis.eval(_RECORD_DEFAULT, 1, self._key, self._active)
            state = await self._redis.hgetall(self._key)
        if self._refresh_error is not None:
            log.info("reading the active model version from Redis again")
            self._refresh_error = None
        self._apply(state)
        for version, record in self._retired.items():
            if _stalled(record) and version not in self._retiring:
                await self._take_over(version)

    def _apply(self, state: dict[bytes, bytes]) -> None:
        retired = {}
        for field, value in state.items():
            if field.startswith(b"retired:"):
                try:
                    retired[field[8:].decode()] = json.loads(value)
                except ValueError:
                    retired[field[8:].decode()] = {"state": "failed", "error": "unreadable status in Redis"}
        self._retired = retired
        for version in [v for v in self._servings if v in retired]:
            log.warning("model %s was retired: no longer served or written by this process", version)
            self._drop(version)
        active = state[b"active"].decode() if b"active" in state else None
        self._redis_active = active
        if active in self._servings and active != self._active:
            log.info("active model version: %s (was %s)", active, self._active)
            self._set_active(active)
        elif self._active not in self._servings:  # retired (e.g. the first bundle, at startup)
            # With no active version recorded, the next loaded one is the default (recorded at the
            # next refresh); with one recorded that is not loaded here, nothing is: not ready.
            fallback = next(iter(self._servings), None) if active is None else None
            if fallback is None and self._active is not None:
                log.error("this process's active model %s was retired and the active version %s is not "
                          "loaded here: not ready", self._active, active)  # fmt: skip
            self._set_active(fallback)
        if active != self._active and active != self._logged_mismatch and active is not None:
            log.warning("the active model version in Redis is %s, which this process has not loaded: "
                        "it keeps serving %s (load that bundle on every replica before activating it)",
                        active, self._active)  # fmt: skip
        self._logged_mismatch = active if active != self._active else None

    def _set_active(self, version: str | None) -> None:
        if self._active is not None:
            self._metrics.active_model.labels(self._active).set(0)
        self._active = version
        if version is not None:
            self._metrics.active_model.labels(version).set(1)

    def _drop(self, version: str) -> None:
        serving = self._servings.pop(version, None)
        if serving is not None:
            self._metrics.model_info.labels(version, str(serving.model.levels), str(serving.model.codebook_size)).set(0)

    # --- requests --------------------------------------------------------------------------------
    def resolve(self, version: str | None) -> Serving:
        """The Serving of `version`, default the active one. Call once per request."""
        if version is None:
            if self._active is None:
                raise NotReady() if not self._configured else NotReady(
                    "No model version can be served: the active one is not loaded here and this process's "
                    "was retired (see GET /v1/models)."
                )  # fmt: skip
            return self._servings[self._active]
        serving = self._servings.get(version)
        if serving is None:
            why = "was retired" if version in self._retired else "is not loaded here"
            raise VersionNotServed(f"model version {version!r} {why}; this process serves {sorted(self._servings)}")
        return serving

    def writable(self) -> list[Serving]:
        """Every version an upload writes: the active one first, then the other loaded ones."""
        active = self.resolve(None)
        return [active] + [s for v, s in self._servings.items() if v != active.version]

    async def write(self, item_ids: Sequence[str], x: np.ndarray) -> list[VersionWrite]:
        """Encode and store the items under every writable version (active first); 503 if any fails.

        Versions are written concurrently, each atomic as SidStore.write; if one fails, the others
        may be stored already, and re-sending the same items (idempotent) completes them.
        """
        servings = self.writable()

        def encode() -> list[np.ndarray]:
            return [serving.model.encode(x) for serving in servings]

        # CPU-bound: a batch is encoded on the encoder thread so the event loop keeps serving reads;
        # a few items (~0.07 ms each) cost less than the hand-off to a thread, so they run inline.
        if len(x) * len(servings) <= INLINE_ENCODE_MAX_ITEMS:
            codes = encode()
        else:
            codes = await asyncio.get_running_loop().run_in_executor(self._encoder, encode)
        results = await asyncio.gather(
            *(self._write_version(s, item_ids, c) for s, c in zip(servings, codes, strict=True)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def _write_version(self, serving: Serving, item_ids: Sequence[str], codes: np.ndarray) -> VersionWrite:
        try:
            return await self._store_version(serving, item_ids, codes)
        finally:  # this process's readers see its own writes at once (also a failed, maybe partial, one)
            serving.lookup.forget(item_ids)

    async def _store_version(self, serving: Serving, item_ids: Sequence[str], codes: np.ndarray) -> VersionWrite:
        if not serving.store.collision_index:
            return VersionWrite(serving.version, codes, await serving.store.write(item_ids, codes), None)
        statuses, index = await serving.store.write_indexed(item_ids, codes)
        assigned = np.array([s != "unchanged" for s in statuses], dtype=bool)
        collided = int((index[assigned] > 0).sum())
        self._metrics.collision_index.labels(serving.version, "true").inc(collided)
        self._metrics.collision_index.labels(serving.version, "false").inc(int(assigned.sum()) - collided)
        return VersionWrite(serving.version, codes, statuses, index)

    # --- operator actions ------------------------------------------------------------------------
    async def activate(self, version: str) -> None:
        """Make a version loaded here the active one for every replica (one atomic script)."""
        self.resolve(version)  # VersionNotServed unless loaded here and not retired
        try:
            switched = await self._redis.eval(_ACTIVATE, 1, self._key, version)
        except (RedisError, RedisClusterException) as e:
            raise StorageUnavailable("activate", e) from e
        if not switched:  # retired by another replica since our last refresh
            self._drop(version)
            raise VersionNotServed(f"model version {version!r} was retired")
        self._redis_active = version
        if version != self._active:
            log.info("active model version: %s (was %s), by request", version, self._active)
            self._set_active(version)
        self._logged_mismatch = None

    async def retire(self, version: str) -> dict[str, Any]:
        """Stop serving and writing a version everywhere and delete its keys in the background."""
        running = self._retiring.get(version)
        if running is not None and not running[0].done():
            return running[1]
        if version == self._active:
            raise LifecycleConflict(f"model version {version} is the active one here: activate another version first")
        record = _retirement("draining")
        try:
            if (
                version not in self._servings and version not in self._retired
                and not await self._redis.exists(storage.layout_key(self._prefix, version))
            ):  # fmt: skip
                raise UnknownVersion(f"model version {version!r} is neither loaded here nor stored in Redis")
            if not await self._redis.eval(_RETIRE, 1, self._key, version, json.dumps(record)):
                raise LifecycleConflict(f"model version {version} is the active one: activate another version first")
        except (RedisError, RedisClusterException) as e:
            raise StorageUnavailable("retire", e) from e
        log.warning("retiring model %s: no longer served or written here; its keys go in %.1f s", version, self._grace_s)
        self._drop(version)
        self._retired[version] = record
        task = asyncio.create_task(self._delete_keys(version, record), name=f"sidserve-retire-{version}")
        self._retiring[version] = (task, record)
        return record

    async def _take_over(self, version: str) -> None:
        """Resume a retirement whose deleting process stopped (its progress went stale), unless
        another replica holds the lease (SET NX, renewed with each progress write)."""
        lease = storage.retirement_lease_key(self._prefix, version)
        if not await self._redis.set(lease, self._lease_owner, nx=True, ex=int(STALLED_RETIREMENT_S)):
            return
        record = {**self._retired[version], "error": None}
        log.warning("resuming the retirement of model %s: its progress stopped at %s (%s)",
                    version, record.get("updated_at"), record.get("state"))  # fmt: skip
        task = asyncio.create_task(self._delete_keys(version, record, grace=False), name=f"sidserve-retire-{version}")
        self._retiring[version] = (task, record)

    async def _delete_keys(self, version: str, record: dict[str, Any], grace: bool = True) -> None:
        if await self._stopping(self._grace_s if grace else 0):
            return
        deleted = self._metrics.retired_keys.labels(version)

        async def progress(n: int) -> None:
            record["keys_deleted"] += n
            deleted.inc(n)
            await self._save(version, record)

        while True:
            try:
                record["state"] = "deleting"
                await self._save(version, record)
                await storage.delete_version_keys(
                    self._redis, self._prefix, version, self._retire_batch, self._retire_pause_s, progress
                )
                record["state"], record["error"] = "done", None
                await self._save(version, record)
                log.info("retired model %s: %d keys deleted", version, record["keys_deleted"])
                return
            except (RedisError, RedisClusterException) as e:  # an outage: go on when Redis is back
                record["error"] = f"{type(e).__name__}: {e}"
                log.warning("retiring model %s: %s; trying again in %.0f s", version, record["error"], RETRY_S)
                if await self._stopping(RETRY_S):
                    return
            except Exception as e:  # a bug: stop, and say so where operators look
                log.exception("retiring model %s failed", version)
                record["state"], record["error"] = "failed", f"{type(e).__name__}: {e}"
                await self._save(version, record)
                return

    async def _save(self, version: str, record: dict[str, Any]) -> None:
        record["updated_at"] = _now()
        await self._redis.hset(self._key, f"retired:{version}", json.dumps(record))
        lease = storage.retirement_lease_key(self._prefix, version)
        if record["state"] in ("draining", "deleting"):  # this process is the deleter: hold the lease
            await self._redis.set(lease, self._lease_owner, ex=int(STALLED_RETIREMENT_S))
        else:
            await self._redis.unlink(lease)

    # --- reporting -------------------------------------------------------------------------------
    @property
    def loaded(self) -> list[Serving]:
        return list(self._servings.values())

    @property
    def active_in_redis(self) -> str | None:
        return self._redis_active

    @property
    def warnings(self) -> list[str]:
        out = []
        if self._redis_active is not None and self._redis_active != self._active:
            out.append(
                f"the active model version in Redis is {self._redis_active}, which this process has not loaded: "
                f"it serves {self._active} (load that bundle on every replica before activating it)"
            )
        if self._refresh_error is not None:
            out.append(f"cannot read the active model version from Redis ({self._refresh_error}): serving {self._active}")
        if self._follower is not None and self._follower.failure is not None:
            out.append(f"update notices not received ({self._follower.failure}): SID cache entries live "
                       "SIDSERVE_CACHE_TTL_S, not SIDSERVE_CACHE_MAX_AGE_S, until they are")  # fmt: skip
        return out

    def describe(self) -> dict[str, Any]:
        """GET /v1/models: loaded versions, the active one, retirements (as Redis last said, or
        fresher for those this process is deleting)."""
        retired = {**self._retired, **{v: r for v, (_, r) in self._retiring.items()}}
        return {
            "active_version": self._active,
            "active_version_in_redis": self._redis_active,
            "collision_index": self.collision_index,
            "models": [
                {"model_version": v, "active": v == self._active, "method": str(s.model.manifest.get("method", "")),
                 "input_dim": s.model.input_dim, "levels": s.model.levels, "codebook_size": s.model.codebook_size}
                for v, s in self._servings.items()
            ],
            "retired": [
                {"model_version": v, **{k: r.get(k) for k in ("state", "keys_deleted", "requested_at", "updated_at", "error")}}
                for v, r in sorted(retired.items())
            ],
            "warnings": self.warnings,
        }  # fmt: skip
