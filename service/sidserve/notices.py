"""Update notices: how a process's SID cache hears, within milliseconds, that another process
changed an item's SID, so that its entries can live longer than the staleness bound.

The storage write functions PUBLISH, in the same atomic Redis call as the write, the IDs of the
items whose stored SID changed (status `updated`; created items were never cached) on their
model version's channel (`storage.updates_channel`). Every writer goes through them: uploads
through any worker or replica, and sidserve-backfill. This follower subscribes to the channels
of the loaded versions and drops those items from the process's caches (`FeatureLookup.forget`).

A lookup may keep entries for SIDSERVE_CACHE_MAX_AGE_S only while it is `following`:
- it becomes so when Redis confirms its channel's subscription, after the cache was emptied
  (`resync`): notices published while nobody listened are lost. redis-py re-subscribes by itself
  after a dropped connection; its confirmation triggers the same resync;
- it stops being so when the connection fails or no message (not even the answer to the
  follower's own PING every HEARTBEAT_S) arrived for LOST_AFTER_S; then SIDSERVE_CACHE_TTL_S
  bounds staleness again, and the follower re-subscribes after RETRY_S.
Pub/Sub delivers at most once, so what the notices add is speed; the bounds come from the TTLs.
On a Redis Cluster a PUBLISH reaches every node, so one subscription hears the writes of all masters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .codec import unpack_ids
from .lookup import FeatureLookup
from .metrics import Metrics

log = logging.getLogger("sidserve")

HEARTBEAT_S = 1.0  # the follower PINGs its subscription connection this often
LOST_AFTER_S = 3.0  # no message for this long: not following (the short TTL applies again)
RETRY_S = 1.0  # wait before subscribing again after a failure


class Lost(Exception):
    """The subscription stopped answering: notices may be missed."""


class UpdateFollower:
    """Follows the update notices of some model versions (channel -> that version's lookup)."""

    def __init__(
        self, redis: Redis | RedisCluster, lookups: Mapping[bytes, FeatureLookup], metrics: Metrics,
        stopped: asyncio.Event,
    ) -> None:  # fmt: skip
        self._redis, self._lookups, self._metrics = redis, dict(lookups), metrics
        # Checked besides cancellation: redis-py's timeouts can turn a cancellation into a ConnectionError.
        self._stopped = stopped
        self.failure: str | None = None  # why notices are not heard, from the first failure until they are again

    async def run(self) -> None:
        """Subscribe and follow until stopped; every failure falls back to the short TTL and retries."""
        while not self._stopped.is_set():
            try:
                await self._follow()
            except (RedisError, RedisClusterException, OSError, Lost) as e:
                if self._stopped.is_set():
                    return
                if self.failure is None:  # logged and counted once per outage
                    log.warning("update notices not received (%s: %s): SID cache entries live "
                                "SIDSERVE_CACHE_TTL_S until they are", type(e).__name__, e)  # fmt: skip
                    self._metrics.notices.labels("lost").inc()
                self.failure = f"{type(e).__name__}: {e}"
            except Exception:  # a bug must not end the loop: the cache would stay on the short TTL
                log.exception("following update notices failed")
            try:
                await asyncio.wait_for(self._stopped.wait(), RETRY_S)
            except TimeoutError:
                pass

    async def _follow(self) -> None:
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # its Pub/Sub needs the slot map, which a fresh client lacks
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(*self._lookups)
            heard = next_ping = time.monotonic()
            while not self._stopped.is_set():
                message = await pubsub.get_message(timeout=HEARTBEAT_S / 2)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._handle(message)
                elif now - heard > LOST_AFTER_S:
                    raise Lost(f"no message for {now - heard:.1f} s, not even a PING's answer")
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + HEARTBEAT_S
        finally:  # whatever ended the subscription: entries fall back to the short TTL
            for lookup in self._lookups.values():
                lookup.following = False
            await pubsub.aclose()

    def _handle(self, message: dict) -> None:
        lookup = self._lookups.get(message.get("channel"))
        if lookup is None:  # a PING's answer
            return
        if message["type"] == "subscribe":  # first subscription, or redis-py's after a reconnect
            lookup.resync()
            lookup.following = True
            self._metrics.notices.labels("subscribed").inc()
            if self.failure is not None:
                log.info("update notices received again")
                self.failure = None
        elif message["type"] == "message":
            ids = unpack_ids(message["data"])
            lookup.forget(ids)
            self._metrics.notices.labels("item_dropped").inc(len(ids))
