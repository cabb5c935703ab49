"""Storage layouts side by side, same Redis, same run: memory per item and read latency.

    python loadtest/bench_storage.py [--items 1000000] [--iters 3000] [--out results/bench_storage.json]

- "strings": the previous layout, one Redis string per item (`sid:<version>:<id>` -> L uint16
  codes, 16 bytes), written with pipelined SETs; its sync redis-py (+hiredis) MGET is the floor.
- "buckets": sidserve.storage.SidStore as it is now (listpack hash buckets, bit-packed values,
  one FCALL_RO per read), written with SidStore.write.
Memory: INFO used_memory delta per item for each layout, written into an empty private Redis.
Reads: closed loop, one process, Zipf (s = 1) ID sets of 1, 300 and 1,000 IDs, the variants
interleaved round by round so machine noise hits them alike: MGET floor (sync), SidStore.read
(redis.asyncio), and the same FCALL_RO from sync redis-py (what asyncio costs).
Also: hit rate of a per-process LRU cache of C items for that Zipf stream (for the storage
docstring's decision on caching).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import redis

from sidserve.redis_client import connect
from sidserve.storage import READ_FUNCTION, SidStore
from sidserve.testing import RedisProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest.runner import write_json  # noqa: E402
from loadtest.workload import KeySampler, item_id  # noqa: E402

VERSION = "0123456789abcdef"
SIZES = (1, 300, 1000)


def _codes(n: int, levels: int, k: int) -> np.ndarray:
    cached = sorted(Path("artifacts/loadtest").glob(f"*L{levels}-K{k}-*/codes-*-n{n}-*.npy"))
    if cached:
        return np.load(cached[0])[:n].astype(np.int64)
    return np.random.default_rng(0).integers(0, k, size=(n, levels))


def _pct(samples: list[float]) -> dict[str, float]:
    a = np.array(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4),
            "n": len(samples)}


def lru_hit_rate(n_items: int, capacity: int, lookups: int = 2_000_000, seed: int = 3) -> float:
    stream = KeySampler(n_items, "zipf", seed=seed).sample(lookups).tolist()
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for i in stream:
        if i in cache:
            hits += 1
            cache.move_to_end(i)
        else:
            cache[i] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / lookups


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--levels", type=int, default=8)
    p.add_argument("--codebook-size", type=int, default=2048)
    p.add_argument("--bucket-bits", type=int, default=14)
    p.add_argument("--iters", type=int, default=3000, help="reads per variant and size")
    p.add_argument("--cache-sim", action="store_true", help="also simulate LRU hit rates (slow)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    n, levels, k = args.items, args.levels, args.codebook_size
    codes = _codes(n, levels, k)
    ids = [item_id(i) for i in range(n)]
    report: dict = {"items": n, "levels": levels, "codebook_size": k, "bucket_bits": args.bucket_bits,
                    "id_bytes": len(ids[0]), "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp))
        server.start()
        try:
            r = redis.Redis.from_url(server.url)
            used = lambda: r.info("memory")["used_memory"]  # noqa: E731

            # strings (previous layout)
            base = used()
            t0 = time.perf_counter()
            for lo in range(0, n, 10_000):
                pipe = r.pipeline(transaction=False)
                block = np.ascontiguousarray(codes[lo:lo + 10_000], dtype="<u2")
                for j, row in enumerate(block):
                    pipe.set(f"sid:{VERSION}:{ids[lo + j]}", row.tobytes())
                pipe.execute()
            strings_s = time.perf_counter() - t0
            strings_bytes = used() - base

            # buckets (SidStore)
            async def fill() -> None:
                store = SidStore(connect(server.url, 5, 60, 4), VERSION, levels, k, bucket_bits=args.bucket_bits)
                for lo in range(0, n, 10_000):
                    await store.write(ids[lo:lo + 10_000], codes[lo:lo + 10_000])
                await store.redis.aclose()

            base = used()
            t0 = time.perf_counter()
            asyncio.run(fill())
            buckets_s = time.perf_counter() - t0
            buckets_bytes = used() - base
            enc = r.object("encoding", SidStore(None, VERSION, levels, k, bucket_bits=args.bucket_bits).bucket_key(0))
            report["memory"] = {
                "strings": {"bytes_per_item": round(strings_bytes / n, 2), "write_items_per_s": round(n / strings_s)},
                "buckets": {"bytes_per_item": round(buckets_bytes / n, 2), "write_items_per_s": round(n / buckets_s),
                            "bucket_encoding": enc.decode() if enc else None},
            }
            print(f"[storage] {n:,} items: strings {strings_bytes / n:.1f} B/item, buckets "
                  f"{buckets_bytes / n:.1f} B/item ({enc!r}); write {n / strings_s:,.0f} vs {n / buckets_s:,.0f} "
                  "items/s", flush=True)

            # reads
            sampler = {s: KeySampler(n, "zipf", seed=11 + s) for s in SIZES}
            sets = {s: [[ids[i] for i in sampler[s].sample(s)] for _ in range(256)] for s in SIZES}
            sync = redis.Redis.from_url(server.url)
            store_sync = SidStore(None, VERSION, levels, k, bucket_bits=args.bucket_bits)
            results: dict = {}

            async def reads() -> None:
                astore = SidStore(connect(server.url, 5, 5, 4), VERSION, levels, k, bucket_bits=args.bucket_bits)
                await astore.prepare()
                samples: dict = {s: {"mget": [], "store_read": [], "fcall_sync": []} for s in SIZES}
                for it in range(args.iters + 100):
                    for s in SIZES:
                        batch = sets[s][it % 256]
                        t = time.perf_counter()
                        sync.mget([f"sid:{VERSION}:{i}" for i in batch])
                        a = time.perf_counter()
                        await astore.read(batch)
                        b = time.perf_counter()
                        keys, fields = store_sync.locate(batch)
                        raw = sync.fcall_ro(READ_FUNCTION, len(keys), *keys, fields, store_sync.fingerprint_bytes,
                                            store_sync.packer.width)
                        store_sync.packer.unpack(raw[0], len(batch))
                        c = time.perf_counter()
                        if it >= 100:  # warm-up
                            samples[s]["mget"].append(a - t)
                            samples[s]["store_read"].append(b - a)
                            samples[s]["fcall_sync"].append(c - b)
                for s in SIZES:
                    results[str(s)] = {v: _pct(x) for v, x in samples[s].items()}
                    got, known = await astore.read(sets[s][0])
                    assert known.all() and (got == codes[[int(i[5:]) for i in sets[s][0]]]).all()
                await astore.redis.aclose()

            asyncio.run(reads())
            report["reads"] = results
            for s in SIZES:
                m = results[str(s)]
                print(f"[storage] {s:>4} IDs: MGET p50 {m['mget']['p50_ms']:.3f} p99 {m['mget']['p99_ms']:.3f} | "
                      f"SidStore.read p50 {m['store_read']['p50_ms']:.3f} p99 {m['store_read']['p99_ms']:.3f} | "
                      f"sync FCALL p50 {m['fcall_sync']['p50_ms']:.3f} p99 {m['fcall_sync']['p99_ms']:.3f} | "
                      f"read/MGET p50 {m['store_read']['p50_ms'] / m['mget']['p50_ms']:.2f}", flush=True)
        finally:
            server.stop()

    if args.cache_sim:
        report["lru_hit_rate"] = {str(c): round(lru_hit_rate(n, c), 3) for c in (10_000, 100_000)}
        print(f"[storage] LRU hit rate (Zipf s=1 over {n:,}): {report['lru_hit_rate']}", flush=True)
    report["load_avg_end"] = os.getloadavg()[0]
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
