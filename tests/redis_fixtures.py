"""A real Redis for the tests: a private redis-server on a free loopback port, never a fake and
never the machine's default 127.0.0.1:6379. Set REDIS_URL to use an existing server instead
(tests that stop and restart Redis are then skipped). `redis_cluster` starts a private 3-master
Redis Cluster (REDIS_CLUSTER_URL: an existing cluster's seed node instead)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidserve.testing import RedisClusterProcess, RedisProcess


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server) and REDIS_URL is not set")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis shared by the session: REDIS_URL, or a private redis-server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    _require_redis_server()
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server this test may stop and restart (skipped when REDIS_URL is set)."""
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL is set: the test cannot stop and restart that server")
    _require_redis_server()
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess | None]:
    """A private 3-master Redis Cluster shared by the session (~3 s to start), or None when
    REDIS_CLUSTER_URL names an existing one (use redis_cluster_url)."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield None
        return
    _require_redis_server()
    cluster = RedisClusterProcess(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisClusterProcess | None) -> str:
    """Seed node URL of the session's Redis Cluster (the service discovers the other nodes)."""
    return redis_cluster.url if redis_cluster is not None else os.environ["REDIS_CLUSTER_URL"]
