"""Unit tests of the load generator's measuring parts: histogram, percentiles, arrival schedule,
key popularity, and the raw HTTP client's framing."""

from __future__ import annotations

import asyncio
import hashlib
import math

import numpy as np
import orjson
import pytest

pytest.importorskip("hdrh")

from loadtest import driver, rawhttp, schedule, workload  # noqa: E402
from loadtest.hist import LatencyHistogram, bucket_quantile  # noqa: E402
from sidserve import codec  # noqa: E402


def exact_percentile(values: np.ndarray, p: float) -> float:
    """HDR semantics: smallest v with at least p % of the samples <= v."""
    v = np.sort(values)
    k = max(1, math.ceil(p / 100 * len(v)))
    return float(v[k - 1])


@pytest.mark.parametrize("p", [50, 90, 99, 99.9, 100])
def test_percentiles_match_exact_within_resolution(p):
    rng = np.random.default_rng(1)
    us = np.round(rng.lognormal(mean=np.log(800), sigma=0.6, size=50_000))  # ~0.8 ms, long tail
    h = LatencyHistogram()
    for v in us:
        h.record_us(v)
    assert h.count == len(us)
    got = h.percentile_ms(p)
    # 3 significant digits, and HDR may round the rank by one sample (sparse tail values)
    v = np.sort(us)
    k = max(1, math.ceil(p / 100 * len(v)))
    lo, hi = v[max(0, k - 2)] / 1000, v[min(len(v) - 1, k)] / 1000
    assert lo * (1 - 1e-3) - 0.001 <= got <= hi * (1 + 1e-3) + 0.001, (p, got, exact_percentile(us, p) / 1000)


def test_sub_millisecond_resolution_and_summary():
    h = LatencyHistogram()
    for us in (120, 130, 140, 150, 5000):
        h.record_s(us / 1e6)
    s = h.summary()
    assert s["count"] == 5
    assert s["p50_ms"] == pytest.approx(0.140, abs=0.001)
    assert s["max_ms"] == pytest.approx(5.0, rel=1e-3)
    assert s["p999_ms"] == pytest.approx(5.0, rel=1e-3)


def test_clamping_and_merge_and_empty():
    a, b = LatencyHistogram(), LatencyHistogram()
    assert math.isnan(a.percentile_ms(50)) and a.summary()["count"] == 0
    a.record_us(0)  # below the lowest trackable value: counted as 1 us
    b.record_s(1e6)  # above the highest: counted as 60 s
    a.merge(b)
    assert a.count == 2
    assert a.percentile_ms(50) == pytest.approx(0.001)
    assert a.max_ms() == pytest.approx(60_000, rel=1e-3)


def test_bucket_quantile_like_prometheus():
    buckets = [(0.001, 0), (0.002, 50), (0.004, 100), (math.inf, 100)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.002)
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.0015)
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.003)
    assert bucket_quantile(0.99, [(0.001, 10), (math.inf, 20)]) == 0.001  # in +Inf: highest bound
    assert math.isnan(bucket_quantile(0.5, [(0.001, 0), (math.inf, 0)]))


def test_constant_schedule():
    off = schedule.constant_offsets(500, 2.0)
    assert len(off) == 1000
    assert off[0] == 0.0
    assert np.allclose(np.diff(off), 1 / 500)
    assert off[-1] < 2.0
    assert len(schedule.constant_offsets(3, 1.0)) == 3
    with pytest.raises(ValueError):
        schedule.constant_offsets(0, 1)


def test_poisson_schedule_rate():
    off = schedule.poisson_offsets(1000, 20.0, seed=3)
    assert np.all(np.diff(off) > 0) and off[-1] < 20.0
    assert len(off) == pytest.approx(20_000, rel=0.03)
    gaps = np.diff(off)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV = 1


def test_zipf_sampler_skew_and_uniform():
    n = 100_000
    z = workload.KeySampler(n, "zipf", s=1.0, seed=0)
    draws = z.sample(200_000)
    assert draws.min() >= 0 and draws.max() < n
    counts = np.bincount(draws, minlength=n)
    top = np.sort(counts)[::-1]
    harmonic = np.sum(1 / np.arange(1, n + 1))
    assert top[0] / len(draws) == pytest.approx(1 / harmonic, rel=0.05)  # most popular item
    assert top[:1000].sum() / len(draws) == pytest.approx(z.top_share(1000), abs=0.01)
    assert z.top_share(1000) == pytest.approx(np.sum(1 / np.arange(1, 1001)) / harmonic)
    assert np.argmax(counts) == z.perm[0]  # rank 1 is a shuffled item, not item 0
    u = workload.KeySampler(n, "uniform", seed=0).sample(200_000)
    assert np.bincount(u, minlength=n).max() < 20
    assert workload.item_id(7) == "item-00000007"


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The body of the next request on a test server's connection; None when the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


def test_driver_open_model_against_a_tiny_server():
    """The driver sends on schedule whatever the server does, and latency counts from the
    intended time: a server that stalls 50 ms once shows it in the latency, not in fewer sends."""

    async def main():
        stalled = []

        async def handle(reader, writer):
            while (body := await _read_request(reader)) is not None:
                if body == b"stall" and not stalled:
                    stalled.append(1)
                    await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: x\r\n\r\nok")
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = rawhttp.RawHttpPool("127.0.0.1", port, max_connections=1)  # one connection: requests queue
        await pool.warm(1)
        reqs = [rawhttp.encode_request("POST", "/", pool.host_header, b"stall" if i == 10 else b"x")
                for i in range(200)]
        kinds = [driver.RequestKind("k", lambda i: reqs[i], check=lambda b: None if b == b"ok" else "bad")]
        res = await driver.drive(pool, schedule.constant_offsets(400, 0.5), kinds, rate=400)
        pool.close()
        server.close()
        await server.wait_closed()
        return res

    res = driver.run(main())
    t = res.total()
    assert res.scheduled == 200 and t.sent == 200 and t.ok == 200 and not t.errors
    # the 50 ms stall delayed the ~20 requests queued behind it on the single connection:
    # measured from their intended times they are slow although each was served fast.
    assert t.latency.max_ms() >= 45
    # ~16 requests (8 %) were due in the stall's first 40 ms: each waited >= 10 ms
    assert t.latency.percentile_ms(95) >= 10
    assert t.service.percentile_ms(50) < t.latency.percentile_ms(95)
    assert t.ok_latency.count == 200 and t.ok_latency.max_ms() == t.latency.max_ms()


def test_driver_counts_errors_and_transport_failures():
    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
            await writer.drain()
            writer.close()  # and drop the connection

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = rawhttp.RawHttpPool("127.0.0.1", port)
        req = rawhttp.encode_request("GET", "/", pool.host_header)
        res = await driver.drive(pool, schedule.constant_offsets(100, 0.2), [driver.RequestKind("k", lambda i: req)])
        pool.close()
        server.close()
        return res

    t = driver.run(main()).total()
    assert t.ok == 0 and sum(t.errors.values()) == 20
    assert t.errors["http_503"] >= 1
    assert t.latency.count == 20 and t.ok_latency.count == 0  # failed answers are not in the ok latency


def test_large_bodies_are_written_in_slices_and_arrive_whole():
    """A body larger than SEND_SLICE_BYTES goes out one slice per loop turn, so the generator's
    loop is not held by one multi-MB write: it arrives byte for byte, and small requests on other
    connections are answered while it is being sent."""
    big = bytes(range(256)) * (3 * rawhttp.SEND_SLICE_BYTES // 256 + 7)  # ~3 slices, not a multiple
    digest = hashlib.sha256(big).hexdigest().encode()

    async def main():
        async def handle(reader, writer):
            while (body := await _read_request(reader)) is not None:
                answer = hashlib.sha256(body).hexdigest().encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = rawhttp.RawHttpPool("127.0.0.1", port)
        await pool.warm(2)
        done: list[tuple[str, float, int, bytes]] = []
        finished = asyncio.Event()

        def on_done(name: str):
            def cb(status, body, t_sent, t_done, error):
                done.append((name, t_done, status, body))
                if len(done) == 2:
                    finished.set()
            return cb

        pool.submit(rawhttp.encode_request("POST", "/", pool.host_header, big), on_done("big"))
        pool.submit(rawhttp.encode_request("POST", "/", pool.host_header, b"x"), on_done("small"))
        await asyncio.wait_for(finished.wait(), 10)
        pool.close()
        server.close()
        await server.wait_closed()
        return done

    done = driver.run(main())
    answers = {name: (status, body) for name, _, status, body in done}
    assert answers["big"] == (200, digest)
    assert answers["small"] == (200, hashlib.sha256(b"x").hexdigest().encode())
    assert [name for name, *_ in done] == ["small", "big"]  # sent second, answered first


def test_an_answer_before_the_whole_body_retires_the_connection():
    """A server that answers (413) while a large body is still being written: the answer reaches
    the caller, and that connection is closed, not reused for the next request."""

    async def main():
        hung_up = asyncio.Event()

        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
            try:  # the rest of the body, until the client hangs up
                while await reader.read(1 << 16):
                    pass
            except ConnectionError:
                pass
            writer.close()
            hung_up.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = rawhttp.RawHttpPool("127.0.0.1", port)
        await pool.warm(1)
        statuses: list[int] = []
        answered = asyncio.Event()

        def cb(status, body, t_sent, t_done, error):
            statuses.append(status)
            answered.set()

        pool.submit(rawhttp.encode_request("POST", "/", pool.host_header, b"y" * (32 * rawhttp.SEND_SLICE_BYTES)), cb)
        await asyncio.wait_for(answered.wait(), 10)
        idle_after = len(pool.idle)
        await asyncio.wait_for(hung_up.wait(), 10)  # the client closed the connection itself
        pool.close()
        server.close()
        return statuses, idle_after

    statuses, idle_after = driver.run(main())
    assert statuses == [413]
    assert idle_after == 0  # the connection was closed, not put back as idle


def test_chunked_response_is_parsed():
    buf = bytearray(b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\nNEXT")
    body, used = rawhttp._dechunk(buf, 0)
    assert body == b"abcdefg" and buf[used:] == b"NEXT"


def test_batch_requests_carry_their_own_ids() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    make = workload.upload_batch_maker("h", rows, "run-", 3)
    binary = workload.upload_batch_maker("h", rows, "run-", 3, binary=True)
    for i in (0, 1, 41):
        expected_ids = [f"run-{n:012d}" for n in range(3 * i, 3 * i + 3)]
        head, body = make(i).split(b"\r\n\r\n", 1)
        assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"
        items = orjson.loads(body)["items"]
        assert [it["item_id"] for it in items] == expected_ids
        assert [it["embedding"] for it in items] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]

        head, body = binary(i).split(b"\r\n\r\n", 1)  # read back by the service's own decoder
        assert f"Content-Type: {codec.EMBEDDINGS_MEDIA_TYPE}\r\n".encode() in head + b"\r\n"
        ids, x = codec.decode_embeddings(body, dim=3, max_items=10, max_id_bytes=64)
        assert ids == expected_ids and x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
