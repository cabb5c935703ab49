"""How the service talks to Redis: an asyncio client whose every call ends in bounded time, the
connections of the SID reads and writes (CallConnections), and command arguments packed once
(PackedArgs). sidserve.storage decides what is sent; this module only sends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class PackedArgs:
    """Several command arguments already in RESP form (b"$<len>\\r\\n<arg>\\r\\n" each), spliced
    verbatim into the command by `_PrepackingConnection`."""

    __slots__ = ("count", "resp")

    def __init__(self, count: int, resp: bytes) -> None:
        self.count, self.resp = count, resp


class _PrepackingConnection(Connection):
    """redis-py's TCP connection, plus PackedArgs.

    redis-py packs a command argument by argument in Python, re-joining a growing buffer each
    time: for a 300-key FCALL_RO that was a third of the features handler's time (pyinstrument).
    The bucket keys' RESP encodings are precomputed instead, and a read's arguments become one
    b"".join. Commands without PackedArgs are packed by redis-py as usual.
    """

    packs_prepacked = True

    def pack_command(self, *args: Any) -> list[bytes]:
        if not any(isinstance(a, PackedArgs) for a in args):
            return super().pack_command(*args)
        count = sum(a.count if isinstance(a, PackedArgs) else 1 for a in args)
        parts = [b"*%d\r\n" % count]
        for arg in args:
            if isinstance(arg, PackedArgs):
                parts.append(arg.resp)
            else:
                encoded = self.encoder.encode(arg)
                parts += (b"$%d\r\n" % len(encoded), encoded, b"\r\n")
        return [b"".join(parts)]


def resp_encoded(arg: bytes) -> bytes:
    """One command argument in RESP form, for PackedArgs."""
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


class _SidCluster(RedisCluster):
    """redis-py's asyncio cluster client, routing FCALL/FCALL_RO by their first key locally.

    redis-py finds the keys of a command with "movable keys" (FCALL) by asking a node
    (COMMAND GETKEYS): one more round trip per call. Every sidserve call passes keys of one hash
    tag (one slot; Redis refuses a CROSSSLOT call anyway), so the first key's slot is the call's.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("FCALL", "FCALL_RO") and len(args) > 2 and int(args[1]) > 0:
            return self.keyslot(args[2])
        return await super()._determine_slot(command, *args)


async def _exchange(conn: AbstractConnection, packed: list[bytes]) -> Any:
    """Send one packed command and read its reply; a connection error is retried once at once on a
    new connection (a connection that died with a Redis restart), like connect()'s
    Retry(NoBackoff(), 1). redis-py drops the connection of a command that failed or was cancelled
    mid-flight, so its reply cannot reach the next command."""
    try:
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response()
    except RedisConnectionError:
        await conn.disconnect()
        await conn.send_packed_command(packed, check_health=False)  # reconnects
        return await conn.read_response()


class CallConnections:
    """The connections of SidStore's function calls (every SID read and write): idle ones are
    reused last in, first out, and at most `size` are busy at once. Each call ends within
    `timeout` (the socket timeout), waiting for a free connection included; then it fails with
    redis-py's TimeoutError, which SidStore reports as StorageUnavailable (a 503).

    Why not the client's BlockingConnectionPool: its checkout takes a condition, a lock, a timeout
    scope, a probe of the socket for unread data and observability timing, and its release a lock
    and an event dispatch. An FCALL_RO took 28-40 us less back to back and 60-95 us less with a
    2 ms pause before each call (1 and 55 IDs; the two interleaved in one process), on a features
    request of ~0.8 ms in-process. The probe is not needed here: a connection comes back only after
    a whole command/reply exchange, or dropped by redis-py (then it reconnects on its next use).

    Why one deadline per call instead of redis-py's socket timeout: redis-py bounds a send with
    asyncio.wait_for (a task per command) and a read with a timeout scope of its own. The
    connections made here have no socket timeout; one asyncio.timeout covers the call: 10-50 us
    less per FCALL_RO with a 2 ms pause before each call (same benchmark).
    """

    def __init__(self, make_connection: Callable[[], AbstractConnection], size: int, timeout: float | None) -> None:
        self._make, self._timeout = make_connection, timeout
        self._idle: list[AbstractConnection] = []
        self._made: list[AbstractConnection] = []  # every connection, for aclose()
        self._size = size
        self._free = asyncio.Semaphore(size)

    async def execute(self, command: tuple[Any, ...]) -> Any:
        got_connection = False
        try:
            async with asyncio.timeout(self._timeout):
                await self._free.acquire()  # returns at once unless all are busy
                got_connection = True
                try:
                    conn = self._idle.pop() if self._idle else self._new()
                    try:
                        return await _exchange(conn, conn.pack_command(*command))
                    finally:  # a cancelled exchange left it disconnected: it reconnects on its next use
                        self._idle.append(conn)
                finally:
                    self._free.release()
        except TimeoutError as e:
            if got_connection:
                raise RedisTimeoutError(f"Timeout: no reply within {self._timeout} s") from e
            # Seen in load tests when the worker, not Redis, was saturated: its replies waited unread.
            raise RedisTimeoutError(
                f"Timeout: no free connection within {self._timeout} s (all {self._size} busy: this process "
                "is overloaded, or Redis is slow)"
            ) from e

    def _new(self) -> AbstractConnection:
        conn = self._make()
        self._made.append(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self._made:
            await conn.disconnect()


class SidRedis(Redis):
    """redis-py's asyncio client, plus the connections of SidStore's function calls (`calls`: as
    many as the pool's max_connections, made like the pool's but without a socket timeout, each call
    bounded by `call_timeout` instead), closed with it. Every other command uses the client's pool."""

    def __init__(self, *, call_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = self.connection_pool
        untimed = {**pool.connection_kwargs, "socket_timeout": None}
        self.calls = CallConnections(lambda: pool.connection_class(**untimed), pool.max_connections, call_timeout)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.calls.aclose()
        await super().aclose(close_connection_pool)


def connect(
    url: str, connect_timeout: float, socket_timeout: float, max_connections: int, cluster: bool = False
) -> Redis | RedisCluster:
    """An asyncio Redis client whose every call ends within bounded time.

    One immediate retry on a connection error replaces a pooled connection that died (Redis
    restarted) without failing the request; a down Redis still fails in ~2 connect attempts.
    The pool blocks (up to socket_timeout) when all max_connections are busy, so a burst of
    concurrent requests queues for a connection instead of failing with "Too many connections".
    SidStore's function calls (all SID reads and writes) use the client's CallConnections, which
    behave alike with up to max_connections of their own: a process may hold up to twice
    max_connections connections to Redis.

    cluster=True: a Redis Cluster client seeded by `url` (the other nodes are discovered), same
    timeouts and one retry; max_connections is per node, and redis-py's cluster pools do not
    block: a request beyond it fails (503). SidStore uses one connection per node per request.
    """
    if cluster:
        return _SidCluster.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
    # Plain TCP only: for rediss:// or unix:// redis-py picks its own connection class (then the
    # store passes keys the ordinary way).
    extra: dict[str, Any] = {"connection_class": _PrepackingConnection} if url.startswith("redis://") else {}
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    pool = BlockingConnectionPool.from_url(
        url,
        **extra,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        timeout=socket_timeout,
        retry=retry,
    )
    return SidRedis(connection_pool=pool, retry=retry, decode_responses=False, call_timeout=socket_timeout)
