"""Update notices against a real Redis: the write functions publish exactly the updated items'
IDs, atomically with the write, and the follower drops them from a process's SID cache, falls
back to the short TTL when the subscription is lost, and empties the cache when it resubscribes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from decoded import decoded
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError
from service_fixtures import AUTH, serve, service_settings

from sidserve import codec, notices
from sidserve.features import FeatureConfig, Parameterization
from sidserve.lookup import FeatureLookup
from sidserve.metrics import Metrics
from sidserve.notices import UpdateFollower
from sidserve.redis_client import connect
from sidserve.storage import WRITE_FUNCTION, SidStore
from sidserve.testing import RedisProcess

VERSION = "0123456789abcdef"
FEATURES = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=16, levels=3, ngram=3, table_size=1_000_004)


def _ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{tag}-{i}-ünï\ncode" for i in range(n)]  # any character: notices carry length-prefixed IDs


async def _message(sub, timeout_s: float = 2.0) -> dict | None:
    """The next published message (not a subscription confirmation), or None after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await sub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            return message
    return None


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("collision_index", [False, True])
def test_writes_publish_exactly_the_updated_ids(redis_url: str, collision_index: bool) -> None:
    async def main() -> None:
        store = SidStore(connect(redis_url, 0.25, 0.5, 8), VERSION + str(int(collision_index)), 3, 16,
                         collision_index=collision_index)  # fmt: skip
        sub = Redis.from_url(redis_url).pubsub()
        await sub.subscribe(store.updates_channel)
        ids = _ids(3)
        assert await store.write(ids, np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]])) == ["created"] * 3
        assert await _message(sub, 0.3) is None  # created items were never cached: nothing to announce
        statuses = await store.write(ids, np.array([[1, 1, 1], [9, 2, 2], [9, 3, 3]]))
        assert statuses == ["unchanged", "updated", "updated"]
        message = await _message(sub)
        assert message is not None and message["channel"] == store.updates_channel
        assert codec.unpack_ids(message["data"]) == ids[1:]
        await sub.aclose()
        await store.redis.aclose()

    asyncio.run(main())


def test_malformed_id_records_are_refused_before_anything_is_written(redis_url: str) -> None:
    async def main() -> None:
        store = SidStore(connect(redis_url, 0.25, 0.5, 8), VERSION, 3, 16)
        await store.prepare()
        [item] = _ids(1)
        [key], field = store.locate([item])
        value = store.packer.pack(np.array([[1, 2, 3]]))
        truncated = b"".join(codec.id_records([item]))[:-1]
        with pytest.raises(ResponseError, match="malformed ID records"):
            await store.redis.fcall(WRITE_FUNCTION, 1, key, field, value, store.fingerprint_bytes,
                                    store.packer.width, store.updates_channel, truncated)  # fmt: skip
        assert await store.redis.hget(key, field) is None
        await store.redis.aclose()

    asyncio.run(main())


def _follow(
    redis_url: str, ttl_s: float = 1.0
) -> tuple[FeatureLookup, Metrics, asyncio.Event, UpdateFollower, asyncio.Task]:
    lookup = FeatureLookup(SidStore(connect(redis_url, 0.25, 0.5, 8), VERSION, 3, 16), FEATURES, ttl_s, 1000, 60.0)
    metrics, stopped = Metrics(), asyncio.Event()
    follower = UpdateFollower(lookup.store.redis, {lookup.store.updates_channel: lookup}, metrics, stopped)
    return lookup, metrics, stopped, follower, asyncio.create_task(follower.run())


def _subscriptions(metrics: Metrics) -> float:
    return metrics.notices.labels("subscribed")._value.get()


def test_another_process_update_reaches_the_cache_within_milliseconds(redis_url: str) -> None:
    async def main() -> None:
        lookup, metrics, stopped, _, task = _follow(redis_url, ttl_s=30.0)
        await _until(lambda: lookup.following)
        writer = SidStore(connect(redis_url, 0.25, 0.5, 8), VERSION, 3, 16)  # another process
        ids = _ids(2)
        await writer.write(ids, np.array([[1, 1, 1], [2, 2, 2]]))
        assert decoded(await lookup.fetch(ids), 3).codes[:, 0].tolist() == [1, 2] and lookup.cached_items == 2
        written = time.monotonic()
        await writer.write([ids[0]], np.array([[5, 5, 5]]))
        await _until(lambda: lookup.cached_items == 1)  # the notice dropped the entry, not the 30 s TTL
        assert time.monotonic() - written < 1.0
        assert decoded(await lookup.fetch(ids), 3).codes[:, 0].tolist() == [5, 2]
        assert metrics.notices.labels("item_dropped")._value.get() == 1
        stopped.set()
        await task
        assert not lookup.following
        for store in (lookup.store, writer):
            await store.redis.aclose()

    asyncio.run(main())


def test_a_dropped_subscription_empties_the_cache_when_it_is_made_again(redis_url: str) -> None:
    async def main() -> None:
        lookup, metrics, stopped, _, task = _follow(redis_url)
        await _until(lambda: lookup.following)
        ids = _ids(1)
        await lookup.store.write(ids, np.array([[1, 1, 1]]))
        await lookup.fetch(ids)
        assert lookup.cached_items == 1 and _subscriptions(metrics) == 1
        admin = Redis.from_url(redis_url)
        assert await admin.client_kill_filter(_type="pubsub") >= 1  # notices published meanwhile are lost
        await _until(lambda: _subscriptions(metrics) == 2 and lookup.following)
        assert lookup.cached_items == 0  # resync: nothing cached before the gap is trusted
        stopped.set()
        await task
        await admin.aclose()
        await lookup.store.redis.aclose()

    asyncio.run(main())


def test_a_silent_subscription_falls_back_to_the_short_ttl(redis_process: RedisProcess, monkeypatch) -> None:
    """Redis stops answering (SIGSTOP: no error, no data): after LOST_AFTER_S the entries fall back
    to the short TTL; once Redis answers again the follower resubscribes."""
    monkeypatch.setattr(notices, "LOST_AFTER_S", 1.0)
    monkeypatch.setattr(notices, "RETRY_S", 0.2)

    async def main() -> None:
        lookup, metrics, stopped, follower, task = _follow(redis_process.url)
        await _until(lambda: lookup.following)
        redis_process.pause()
        try:
            # following drops in _follow's cleanup, which then awaits the pubsub's close; the outage is
            # counted after that, in run(): wait for both, not for the first alone.
            await _until(lambda: not lookup.following and metrics.notices.labels("lost")._value.get() >= 1, timeout_s=5)
            assert metrics.notices.labels("lost")._value.get() == 1
            assert follower.failure is not None and "Lost" in follower.failure  # /readyz shows it (warnings)
        finally:
            redis_process.resume()
        await _until(lambda: lookup.following and _subscriptions(metrics) >= 2)
        assert follower.failure is None
        stopped.set()
        await task
        await lookup.store.redis.aclose()

    asyncio.run(main())


def test_on_a_cluster_one_subscription_hears_the_writes_of_every_master(redis_cluster_url: str) -> None:
    async def main() -> None:
        redis = connect(redis_cluster_url, 0.5, 0.5, 8, cluster=True)
        lookup = FeatureLookup(SidStore(redis, VERSION, 3, 16), FEATURES, 1.0, 1000, 60.0)
        metrics, stopped = Metrics(), asyncio.Event()
        task = asyncio.create_task(UpdateFollower(redis, {lookup.store.updates_channel: lookup}, metrics, stopped).run())
        await _until(lambda: lookup.following)
        writer = SidStore(connect(redis_cluster_url, 0.5, 0.5, 8, cluster=True), VERSION, 3, 16)
        ids = _ids(60)  # spread over the 16 hash-tag groups, so over all 3 masters
        await writer.write(ids, np.ones((60, 3), dtype=np.int64))
        await lookup.fetch(ids)
        await writer.write(ids[:40], np.full((40, 3), 2))
        await _until(lambda: lookup.cached_items == 20)
        assert metrics.notices.labels("item_dropped")._value.get() == 40
        stopped.set()
        await task
        for client in (redis, writer.redis):
            await client.aclose()

    asyncio.run(main())


def test_two_services_sharing_redis_see_each_others_updates_at_once(
    sid_bundle: Path, redis_url: str, sid_bundle_data: tuple[np.ndarray, list[str]]
) -> None:
    """Replica B caches an item with a 30 s TTL; replica A re-uploads it with new content; B
    answers the new SID within a second (the notice), not after 30 s."""
    x, _ = sid_bundle_data
    settings = service_settings(sid_bundle, redis_url, cache_ttl_s=30.0)
    with serve(settings) as a, serve(settings) as b, httpx.Client(headers=AUTH) as http:
        item = _ids(1)[0]
        first = http.post(a.url + "/v1/items", json={"item_id": item, "embedding": x[0].tolist()}).json()
        other = next(i for i in range(1, len(x)) if http.post(
            a.url + "/v1/items", json={"item_id": item + "-probe", "embedding": x[i].tolist()}).json()["sid"] != first["sid"])  # fmt: skip

        def sid_at_b() -> list[int] | None:
            return http.post(b.url + "/v1/features", json={"candidates": [item]}).json()["candidates"]["sids"][0]

        deadline = time.monotonic() + 10
        while not b.app.state.sidserve.serving.lookup.following:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sid_at_b() == first["sid"]  # now cached at B
        updated = http.post(a.url + "/v1/items", json={"item_id": item, "embedding": x[other].tolist()}).json()
        assert updated["status"] == "updated"
        written = time.monotonic()
        while sid_at_b() != updated["sid"]:
            assert time.monotonic() - written < 1.0, "B still serves the old SID"
            time.sleep(0.005)


def test_a_writer_not_allowed_to_publish_still_writes(redis_url: str) -> None:
    """Redis 7 gives new ACL users no Pub/Sub channels: the notice is refused, the write must not be."""
    async def main() -> None:
        admin = Redis.from_url(redis_url)
        user = "sidserve-nopub-" + uuid.uuid4().hex[:6]
        await admin.acl_setuser(user, enabled=True, passwords=["+secret-password"], keys=["*"], commands=["+@all"],
                                channels=[], reset_channels=True)  # fmt: skip
        host_port = redis_url.split("//", 1)[1]
        store = SidStore(connect(f"redis://{user}:secret-password@{host_port}", 0.25, 0.5, 8), VERSION, 3, 16)
        ids = _ids(2)
        assert await store.write(ids, np.array([[1, 1, 1], [2, 2, 2]])) == ["created"] * 2
        assert await store.write(ids, np.array([[1, 1, 1], [7, 2, 2]])) == ["unchanged", "updated"]
        codes, _ = await store.read(ids)
        assert codes[:, 0].tolist() == [1, 7]
        with pytest.raises(NoPermissionError):  # the user really lacks the channel
            await store.redis.publish(store.updates_channel, b"x")
        await store.redis.aclose()
        await admin.acl_deluser(user)
        await admin.aclose()

    asyncio.run(main())
