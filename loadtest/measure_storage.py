"""Redis memory per stored SID, written through sidserve.storage.SidStore (the service's own code).

Starts a private redis-server (or uses --redis-url, which it FLUSHes: never point it at real data),
writes --items items of random SIDs in batches of 1,000, and reports the `INFO memory` used_memory
delta per item for each (L, K) shape.

    python loadtest/measure_storage.py --items 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import time

import numpy as np
import redis

from sidserve.storage import SidStore, connect

ID_FORMAT = "item-{:07d}"  # 12-byte item ids


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def _fill(url: str, n: int, levels: int, k: int, id_format: str) -> float:
    store = SidStore(connect(url, 1.0, 10.0, 4), "0123456789abcdef", levels, k)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for s in range(0, n, 1000):
        ids = [id_format.format(i) for i in range(s, min(n, s + 1000))]
        await store.write(ids, rng.integers(0, k, size=(len(ids), levels)))
    elapsed = time.perf_counter() - start
    await store.redis.aclose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--redis-url", help="use this Redis (FLUSHDB'd before each shape) instead of a private one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        proc, url = (None, args.redis_url) if args.redis_url else _start_redis(workdir)
        r = redis.Redis.from_url(url)
        results: list[dict[str, object]] = []
        try:
            for levels, k in ((3, 16), (8, 256), (8, 2048)):
                r.flushdb()
                before = r.info("memory")["used_memory"]
                seconds = asyncio.run(_fill(url, args.items, levels, k, ID_FORMAT))
                after = r.info("memory")["used_memory"]
                key = f"sid:0123456789abcdef:{ID_FORMAT.format(0)}"
                results.append({
                    "levels": levels, "codebook_size": k, "items": args.items,
                    "key_bytes": len(key), "value_bytes": len(r.get(key)),
                    "bytes_per_item": round((after - before) / args.items, 1),
                    "write_items_per_s": round(args.items / seconds),
                })  # fmt: skip
                print(json.dumps(results[-1]))
            print(f"redis {r.info('server')['redis_version']}, allocator {r.info('memory')['mem_allocator']}")
        finally:
            r.close()
            if proc is not None:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
