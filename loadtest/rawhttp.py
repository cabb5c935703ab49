"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, for the load generator.

Why not httpx: at 1,000 requests/s on a 2-core machine shared with the service, the client's
own CPU time competes with the service it measures. httpx costs several hundred microseconds
of CPU per request (see README "Load tests and benchmarks" for the measured figures); this
client costs a few tens: one pre-encoded request is written to an idle connection, the
response is parsed with two `find`s, and a callback fires. No tasks, no header objects.

Scope: what the load test needs and nothing more. One request in flight per connection (no
pipelining); responses framed by Content-Length or chunked encoding; connections are opened on
demand up to a limit, so a slow service cannot throttle the arrival rate (open model).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONNECTIONS = 512  # per run: with select() (driver.new_loop) every fd must stay below 1,024
# A request larger than this is written one slice per loop turn, each after the socket took the
# previous one. One write() of a 4.7 MB batch body held the generator's loop 1.7-2.5 ms (1.5 MB:
# 0.65-1.0 ms), enough to make the sends scheduled meanwhile late; 256 KB takes ~0.15 ms.
SEND_SLICE_BYTES = 256 * 1024

# on_done(status, body, t_sent, t_done, error): status 0 and error set on transport failures.
Callback = Callable[[int, bytes, float, float, "str | None"], None]
# An encoded request; large ones are built as bytearrays (workload.upload_batch_maker) and sent as is.
Request = bytes | bytearray


class Target(str):
    """host:port, plus headers sent with every request (e.g. the API key), as a str subclass so
    plain "host:port" strings work wherever a Target does."""

    headers: str = ""

    def __new__(cls, hostport: str, headers: dict[str, str] | None = None) -> Target:
        t = super().__new__(cls, hostport)
        t.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        return t


def encode_request(method: str, path: str, host: str, body: bytes = b"",
                   content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{getattr(host, 'headers', '')}"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class _Conn(asyncio.Protocol):
    __slots__ = ("pool", "transport", "buf", "cb", "t_sent", "closed", "unsent", "paused")

    def __init__(self, pool: RawHttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.cb: Callback | None = None
        self.t_sent = 0.0
        self.closed = False
        self.unsent: memoryview | None = None  # the rest of a large request, written slice by slice
        self.paused = False  # the transport's buffer is above its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=SEND_SLICE_BYTES)  # type: ignore[union-attr]

    def send(self, request: Request, cb: Callback) -> None:
        self.cb = cb
        self.t_sent = time.perf_counter()
        if len(request) <= SEND_SLICE_BYTES:
            self.transport.write(request)  # type: ignore[union-attr]
        else:
            self.unsent = memoryview(request)
            self._write_slice()

    def _write_slice(self) -> None:
        """Write the next slice of a large request, then yield the loop until the next turn (or,
        while the socket is full, until resume_writing)."""
        if self.unsent is None or self.paused or self.closed:
            return
        self.transport.write(self.unsent[:SEND_SLICE_BYTES])  # type: ignore[union-attr]
        self.unsent = self.unsent[SEND_SLICE_BYTES:] or None
        if self.unsent is not None:
            asyncio.get_running_loop().call_soon(self._write_slice)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._write_slice()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        start = end + 4
        i = head.find(b"\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r", i + 16)
            length = int(head[i + 16 : j if j >= 0 else len(head)])
            if len(buf) < start + length:
                return
            body = bytes(buf[start : start + length])
            del buf[: start + length]
        elif b"\ntransfer-encoding: chunked" in head:
            if buf.find(b"\r\n0\r\n\r\n", start - 2) < 0:
                return
            body, used = _dechunk(buf, start)
            del buf[:used]
        else:  # no framing: not produced by uvicorn for these endpoints
            self._fail("response without Content-Length or chunked encoding")
            return
        status = int(head[9:12])
        cb, self.cb = self.cb, None
        t_sent, t_done = self.t_sent, time.perf_counter()
        # Answered before its whole body was sent (e.g. an early 413): the connection's byte
        # stream no longer lines up with requests, so it is not reused.
        if b"\nconnection: close" in head or self.unsent is not None:
            self.closed = True
            self.unsent = None
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.pool._release(self)
        if cb is not None:
            cb(status, body, t_sent, t_done, None)

    def _fail(self, why: str) -> None:
        cb, self.cb = self.cb, None
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if cb is not None:
            cb(0, b"", self.t_sent, time.perf_counter(), why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self.cb is not None:
            self._fail(f"connection lost: {exc!r}")


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return bytes(out), pos + 2
        out += buf[pos : pos + size]
        pos += size + 2


@dataclass
class RawHttpPool:
    """Keep-alive connections to one host:port; `submit` never blocks the caller."""

    host: str
    port: int
    max_connections: int = MAX_CONNECTIONS
    timeout_s: float = 10.0
    idle: list[_Conn] = field(default_factory=list)
    busy: set[_Conn] = field(default_factory=set)
    waiting: deque = field(default_factory=deque)
    connecting: int = 0
    opened: int = 0
    max_waiting: int = 0

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open_one(self) -> None:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as e:
            self.connecting -= 1
            if self.waiting:  # fail one waiter, so a down service shows as errors, not a hang
                _, cb, _ = self.waiting.popleft()
                cb(0, b"", time.perf_counter(), time.perf_counter(), f"connect failed: {e!r}")
            return
        self.connecting -= 1
        self.opened += 1
        self._release(conn)

    async def warm(self, n: int) -> None:
        await asyncio.gather(*(self._open_one() for _ in range(n)))

    def submit(self, request: Request, cb: Callback) -> None:
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(request, cb)
            return
        self.waiting.append((request, cb, time.perf_counter()))
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        if len(self.busy) + self.connecting < self.max_connections:
            asyncio.get_running_loop().create_task(self._open_one())

    def _release(self, conn: _Conn) -> None:
        if conn.closed:
            self.busy.discard(conn)
            return
        if self.waiting:
            request, cb, _ = self.waiting.popleft()
            self.busy.add(conn)
            conn.send(request, cb)
        else:
            self.busy.discard(conn)
            self.idle.append(conn)

    def _lost(self, conn: _Conn) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and len(self.busy) + self.connecting < self.max_connections:
            asyncio.get_running_loop().create_task(self._open_one())

    def expire(self, now: float) -> int:
        """Fail requests in flight longer than timeout_s (their connections are closed)."""
        n = 0
        while self.waiting and now - self.waiting[0][2] > self.timeout_s:  # never got a connection
            _, cb, _ = self.waiting.popleft()
            cb(0, b"", now, now, f"timeout: no free connection for {self.timeout_s} s")
            n += 1
        for conn in list(self.busy):
            if conn.cb is not None and now - conn.t_sent > self.timeout_s:
                conn._fail(f"timeout after {self.timeout_s} s")
                n += 1
        return n

    @property
    def in_flight(self) -> int:
        return len(self.busy) + len(self.waiting)

    def close(self) -> None:
        for conn in self.idle + list(self.busy):
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()
        self.busy.clear()


class SpreadPool:
    """Requests spread round-robin over the pools of several replicas, as the load balancer in
    front of them does (nginx's default: round-robin per request, then a keep-alive connection to
    the chosen replica)."""

    def __init__(self, pools: list[RawHttpPool] | list[HttpxPool]) -> None:
        self.pools = pools
        self._turn = 0

    async def warm(self, n: int) -> None:
        await asyncio.gather(*(pool.warm(max(1, n // len(self.pools))) for pool in self.pools))

    def submit(self, request: Request, cb: Callback) -> None:
        self._turn = (self._turn + 1) % len(self.pools)
        self.pools[self._turn].submit(request, cb)

    def expire(self, now: float) -> int:
        return sum(pool.expire(now) for pool in self.pools)

    @property
    def in_flight(self) -> int:
        return sum(pool.in_flight for pool in self.pools)

    @property
    def opened(self) -> int:
        return sum(pool.opened for pool in self.pools)

    @property
    def max_waiting(self) -> int:
        return max(pool.max_waiting for pool in self.pools)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


def pool_for(ports: list[int], pool_cls: type[RawHttpPool] | type[HttpxPool] = RawHttpPool,
             host: str = "127.0.0.1") -> RawHttpPool | HttpxPool | SpreadPool:
    """One pool for one replica's port; requests spread over several. The pools share one
    connection limit: the generator's select() loop takes file descriptors below 1,024 only."""
    pools = [pool_cls(host, port, max_connections=MAX_CONNECTIONS // len(ports)) for port in ports]
    return pools[0] if len(pools) == 1 else SpreadPool(pools)


class HttpxPool:
    """The same interface on httpx.AsyncClient (one task per request), to compare client cost."""

    def __init__(self, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
                 timeout_s: float = 10.0) -> None:
        import httpx

        self.host, self.port = host, port
        self.client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}",
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=timeout_s,
        )
        self.in_flight = 0
        self.max_waiting = 0
        self.opened = 0

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"

    async def warm(self, n: int) -> None:
        await asyncio.gather(*(self.client.get("/healthz") for _ in range(n)), return_exceptions=True)

    def submit(self, request: Request, cb: Callback) -> None:
        head, _, body = bytes(request).partition(b"\r\n\r\n")  # httpx reads a bytearray as chunks of ints
        first, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = first.split(" ")
        headers = dict(line.split(": ", 1) for line in lines)
        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        self.in_flight += 1
        asyncio.get_running_loop().create_task(self._do(method, path, body, headers, cb))

    async def _do(self, method: str, path: str, body: bytes, headers: dict, cb: Callback) -> None:
        t_sent = time.perf_counter()
        try:
            r = await self.client.request(method, path, content=body or None, headers=headers)
            status, content, err = r.status_code, r.content, None
        except Exception as e:  # noqa: BLE001 - every failure is one error of the run
            status, content, err = 0, b"", repr(e)
        self.in_flight -= 1
        cb(status, content, t_sent, time.perf_counter(), err)

    def expire(self, now: float) -> int:
        return 0

    def close(self) -> None:
        asyncio.get_event_loop().create_task(self.client.aclose())
