"""`python -m loadtest bench`: the features endpoint against its floors, same run, same keys.

For 1, 300 (200 candidates + 100 history) and 1,000 IDs, with the same Zipf-drawn ID sets:
  1. the Redis floor: sync redis-py (hiredis) MGET of plain string keys holding the same items'
     packed codes, from this one process, no HTTP, closed loop; and the storage module's own read path
     (`SidStore.read`: redis.asyncio MGET + unpacking), the service's actual Redis cost;
  2. the HTTP + framework floor: the service's no-op endpoint taking the same request body
     (open model at --rate), when the service has one;
  3. the features endpoint at the same rate: client-observed, and server-side handler time from
     the service's Prometheus histogram (`sidserve_request_duration_seconds`).
Ratios: server-side / MGET floor and client-observed / (no-op + MGET floor), at p50 and p99.
Also: Redis memory per item (INFO memory used_memory delta) over the preloaded corpus.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time

import numpy as np
import redis

from . import corpus, driver, procs, promparse, schedule, workload
from .hist import LatencyHistogram
from .profiles import FULL
from .rawhttp import encode_request, pool_for
from .runner import machine_note, scrape, write_json

SIZES = {1: (1, 0), 300: (200, 100), 1000: (1000, 0)}


def id_sets(n_items: int, sets: int, sizes: list[int], seed: int = 7) -> dict[int, np.ndarray]:
    """Per request size, `sets` Zipf-drawn ID sets as corpus item numbers (int32 [sets, size])."""
    out = {}
    for size in sizes:
        sampler = workload.KeySampler(n_items, "zipf", seed=seed + size)
        out[size] = sampler.sample(sets * size).astype(np.int32).reshape(sets, size)
    return out


def http_sets(n_items: int, rate: float, seconds: float, sizes: list[int], seed: int = 7) -> dict[int, np.ndarray]:
    """ID sets of the HTTP points: one per request sent in `seconds` (warm-up + measured), so no
    set is replayed: a replayed set finds its items still in the service's cache (entries live up
    to SIDSERVE_CACHE_MAX_AGE_S, 60 s), which inflates hits. The first 2,048 sets are also the
    Redis floors' sets."""
    return id_sets(n_items, max(2048, math.ceil(rate * seconds)), sizes, seed)


def mget_floor(url: str, codes: np.ndarray, sets: list[list[str]], iters: int, rate: float | None = None) -> dict:
    """Sync redis-py MGET, one process, of plain string keys `floor:<item_id>` holding each item's
    codes packed little-endian (uint16 for K = 2048: 16 bytes), written to database 1 of the same
    Redis for the IDs the sets use: the floor whatever layout the service stores.

    Closed loop by default. With `rate`, one call every 1/rate s (the time of each call itself is
    recorded): Redis and this process then idle between calls as they do under the open-model
    HTTP points, which on a shared VM makes every round trip slower (cold caches, sleeping vCPUs:
    the same Redis read took 2.5x longer with 4 ms pauses between calls than back to back)."""
    r = redis.Redis.from_url(url, db=1)
    ids = sorted({i for s in sets for i in s})
    dtype = "<u1" if codes.max() < 256 else "<u2"
    pipe = r.pipeline(transaction=False)
    for i in ids:
        pipe.set(b"floor:" + i.encode(), codes[int(i.split("-")[1])].astype(dtype).tobytes())
    pipe.execute()
    keysets = [[b"floor:" + i.encode() for i in s] for s in sets]
    h = LatencyHistogram()
    for ks in keysets[: min(200, len(keysets))]:  # warm-up
        r.mget(ks)
    next_call = time.perf_counter()
    for n in range(iters):
        ks = keysets[n % len(keysets)]
        if rate:
            next_call += 1.0 / rate
            time.sleep(max(0.0, next_call - time.perf_counter()))
        t = time.perf_counter()
        vals = r.mget(ks)
        h.record_s(time.perf_counter() - t)
        if n == 0 and any(v is None for v in vals):
            raise RuntimeError("MGET floor: a preloaded key is missing (key layout mismatch?)")
    r.close()
    return h.summary()


def storage_read(url: str, m: dict, sets: list[list[str]], iters: int) -> dict:
    """The service's read path: sidserve.storage.SidStore.read (redis.asyncio), one coroutine."""
    from sidserve import redis_client, storage

    async def main() -> dict:
        rc = redis_client.connect(url, 5.0, 5.0, 4)
        store = storage.SidStore(rc, m["model_version"], m["levels"], m["codebook_size"])
        h = LatencyHistogram()
        try:
            for ids in sets[:200]:
                await store.read(ids)
            for n in range(iters):
                ids = sets[n % len(sets)]
                t = time.perf_counter()
                _, known = await store.read(ids)
                h.record_s(time.perf_counter() - t)
                if n == 0 and not known.all():
                    raise RuntimeError("storage read: a preloaded item is unknown")
        finally:
            await rc.aclose()
        return h.summary()

    return asyncio.run(main())


def encode_time(m: dict, codes: np.ndarray, sets: list[list[str]], size: int, iters: int) -> dict:
    """The service's response encoding alone (sidserve.responses.FeaturesEncoder) for these sets."""
    from sidserve.features import FeatureConfig, feature_rows
    from sidserve.responses import AnswerLayout, FeaturesEncoder
    from sidserve.schemas import FeatureConfigOut

    config = FeatureConfig("prefix_ngram", m["codebook_size"], m["levels"], m["levels"], 1_000_004)
    config_out = FeatureConfigOut.of(config).model_dump()
    layout = AnswerLayout(config.levels, config.codebook_size, config.num_tokens, config.table_size, False)
    encoder = FeaturesEncoder(m["model_version"], config_out, layout)
    answer_sets = []  # as the SID cache holds them: each item's answer pre-encoded when it was read
    for ids in sets[:64]:
        c = codes[[int(i.split("-")[1]) for i in ids]].astype(np.int64)
        answer_sets.append(layout.records(c, feature_rows(c, config), None))
    h = LatencyHistogram()
    for n in range(iters):
        answers = answer_sets[n % len(answer_sets)]
        t = time.perf_counter()
        encoder.encode(answers, SIZES[size][0])
        h.record_s(time.perf_counter() - t)
    return h.summary()


def http_point(svc: procs.Service, path: str, sets: np.ndarray, size: int, rate: float,
               duration_s: float, warmup_s: float, check) -> dict:
    c, _ = SIZES[size]
    host = svc.target
    reqs = [encode_request("POST", path, host, workload.features_json(items, c)) for items in sets]
    warm_offsets = schedule.constant_offsets(rate, warmup_s)
    kinds = [driver.RequestKind(path, lambda i: reqs[i % len(reqs)], check=check)]

    async def go():
        pool = pool_for(svc.ports)
        try:
            await pool.warm(8)
            await driver.drive(pool, warm_offsets, kinds, rate=rate)
            before = scrape(svc)
            res = await driver.drive(pool, schedule.constant_offsets(rate, duration_s), kinds, rate=rate,
                                     first_index=len(warm_offsets))
            after = scrape(svc)
            if not (before and after):
                return res, None, None
            return res, promparse.delta_summary(before, after, path), promparse.cache_hit_rate(before, after)
        finally:
            pool.close()

    res, server, hit_rate = driver.run(go())
    tot = res.total()
    return {"rate_rps": rate, "duration_s": duration_s, "ok": tot.ok, "errors": dict(tot.errors),
            "first_error": tot.first_error, "late_sends": tot.late,
            "achieved_rps": round(tot.ok / res.elapsed_s, 1), "client": tot.latency.summary(),
            "service_time": tot.service.summary(), "send_lag": tot.send_lag.summary(), "server_side": server,
            "cache_hit_rate": hit_rate}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def main(args) -> int:
    quick = args.quick
    n_items = args.items or (100_000 if quick else 1_000_000)
    duration = args.duration or (10.0 if quick else 60.0)
    warmup = 2.0 if quick else 5.0
    iters = {1: 2000, 300: 2000, 1000: 1000} if quick else {1: 20000, 300: 20000, 1000: 10000}
    bundle = args.bundle or corpus.ensure_bundle(FULL.dim, FULL.levels, FULL.codebook_size, FULL.train_n,
                                                 FULL.epochs)
    m = corpus.manifest(bundle)
    print(f"[bench] bundle {bundle} (D={m['input_dim']} L={m['levels']} K={m['codebook_size']}), "
          f"{n_items:,} items, {duration:g} s per HTTP point at {args.rate:g} req/s, hiredis "
          f"{redis.utils.HIREDIS_AVAILABLE}", flush=True)
    src = corpus.EmbeddingSource(m["input_dim"], train_n=FULL.train_n)
    codes = corpus.compute_codes(bundle, src, n_items)
    sizes = sorted(set(args.ids)) if args.ids else list(SIZES)
    sets = http_sets(n_items, args.rate, warmup + duration, sizes)
    floor_sets = {size: [workload.item_ids(items) for items in s[:2048]] for size, s in sets.items()}
    report: dict = {"machine": machine_note(), "bundle": str(bundle), "model_version": m["model_version"],
                    "levels": m["levels"], "codebook_size": m["codebook_size"], "items": n_items,
                    "hiredis": bool(redis.utils.HIREDIS_AVAILABLE), "rate_rps": args.rate,
                    "duration_s": duration, "workers": args.workers, "replicas": args.replicas}
    with procs.RedisServer() as rs:
        mem = {}
        base = rs.used_memory()
        steps = [n for n in (100_000, n_items) if n <= n_items]
        done = 0
        for n in sorted(set(steps)):
            corpus.preload(rs.url, bundle, codes[done:n], start=done)
            done = n
            mem[n] = rs.used_memory() - base
        report["redis_memory"] = {str(n): {"used_memory_delta_bytes": d, "bytes_per_item": round(d / n, 2)}
                                  for n, d in mem.items()}
        print("[bench] Redis used_memory per item: "
              + ", ".join(f"{d / n:.1f} B over {n:,}" for n, d in mem.items()), flush=True)

        floor = {}
        for size in sizes:
            floor[size] = {"mget": mget_floor(rs.url, codes, floor_sets[size], iters[size]),
                           "mget_paced": mget_floor(rs.url, codes, floor_sets[size], min(iters[size], int(args.rate * 10)),
                                                    rate=args.rate),
                           "storage_read": storage_read(rs.url, m, floor_sets[size], iters[size]),
                           "encode": encode_time(m, codes, floor_sets[size], size, iters[size])}
            print(f"[bench] floor {size:>4} IDs: MGET p50 {floor[size]['mget']['p50_ms']:.3f} ms "
                  f"({floor[size]['mget_paced']['p50_ms']:.3f} ms at {args.rate:g} calls/s), "
                  f"SidStore.read p50 {floor[size]['storage_read']['p50_ms']:.3f} ms, "
                  f"response encoding p50 {floor[size]['encode']['p50_ms']:.3f} ms", flush=True)

        http: dict = {}
        with procs.Service(bundle, rs.url, args.workers, replicas=args.replicas) as svc:
            status, body = svc.get("/openapi.json")
            paths = json.loads(body).get("paths", {}) if status == 200 else {}
            noop = args.noop_path if args.noop_path in paths else None
            if noop is None:
                print(f"[bench] the service has no {args.noop_path}: no-op points skipped", flush=True)
            for size in sizes:
                c, h = SIZES[size]
                http[size] = {}
                if noop:
                    http[size]["noop"] = http_point(svc, noop, sets[size], size, args.rate, duration, warmup, None)
                http[size]["features"] = http_point(svc, "/v1/features", sets[size], size, args.rate, duration,
                                                    warmup, workload.features_check(c, h))
                f = http[size]["features"]
                print(f"[bench] features {size:>4} IDs: client p50 {f['client']['p50_ms']:.3f} "
                      f"p99 {f['client']['p99_ms']:.3f} ms; server p50 "
                      f"{(f['server_side'] or {}).get('p50_ms')} ms; cache hits {f['cache_hit_rate']}", flush=True)
    rows = []
    for size in sizes:
        fl, hp = floor[size], http[size]
        f = hp["features"]
        srv = f["server_side"] or {}
        noop = hp.get("noop", {}).get("client", {})
        row = {"ids": size,
               "mget_p50_ms": fl["mget"]["p50_ms"], "mget_p99_ms": fl["mget"]["p99_ms"],
               "mget_paced_p50_ms": fl["mget_paced"]["p50_ms"], "mget_paced_p99_ms": fl["mget_paced"]["p99_ms"],
               "storage_read_p50_ms": fl["storage_read"]["p50_ms"], "storage_read_p99_ms": fl["storage_read"]["p99_ms"],
               "encode_p50_ms": fl["encode"]["p50_ms"], "encode_p99_ms": fl["encode"]["p99_ms"],
               "cache_hit_rate": f.get("cache_hit_rate"),
               "noop_p50_ms": noop.get("p50_ms"), "noop_p99_ms": noop.get("p99_ms"),
               "features_client_p50_ms": f["client"]["p50_ms"], "features_client_p99_ms": f["client"]["p99_ms"],
               "features_server_p50_ms": srv.get("p50_ms"), "features_server_p99_ms": srv.get("p99_ms"),
               "features_errors": sum(f["errors"].values()), "features_late_sends": f["late_sends"]}
        for q in ("p50", "p99"):
            row[f"server_over_mget_{q}"] = _ratio(srv.get(f"{q}_ms"), fl["mget"][f"{q}_ms"])
            row[f"server_over_mget_paced_{q}"] = _ratio(srv.get(f"{q}_ms"), fl["mget_paced"][f"{q}_ms"])
            nq = noop.get(f"{q}_ms")
            row[f"client_over_noop_plus_mget_{q}"] = (
                _ratio(f["client"][f"{q}_ms"], nq + fl["mget"][f"{q}_ms"]) if nq is not None else None)
        rows.append(row)
    report.update({"floor": {str(k): v for k, v in floor.items()}, "http": {str(k): v for k, v in http.items()},
                   "summary": rows,
                   "server_histogram_buckets_ms": next(((h["features"]["server_side"] or {}).get("bucket_bounds_ms")
                                                        for h in http.values()), None)})
    text = summary_table(rows)
    print("\n" + text)
    if args.out:
        write_json(args.out, report)
        print(f"[bench] written to {args.out}")
    print(f"[bench] {os.cpu_count()} cores, shared (load avg {os.getloadavg()[0]:.1f})")
    return 0


def summary_table(rows: list[dict]) -> str:
    f = lambda v: "    n/a" if v is None else f"{v:7.3f}"  # noqa: E731
    g = lambda v: "  n/a" if v is None else f"{v:5.2f}"  # noqa: E731
    lines = ["ms; MGET = sync redis-py+hiredis, one process, closed loop; MGET@rate = the same, one call per "
             "1/rate s; store = SidStore.read (redis.asyncio, no cache); "
             "encode = the service's response encoding alone (sidserve.responses.FeaturesEncoder); "
             "client = open-model latency from intended send; server = Prometheus histogram (interpolated)",
             f"{'IDs':>5} | {'MGET p50':>8} {'p99':>7} | {'MGET@rate p50':>13} {'p99':>7} | {'store p50':>9} {'p99':>7} | "
             f"{'encode p50':>10} | {'noop p50':>8} {'p99':>7} | "
             f"{'client p50':>10} {'p99':>7} | {'server p50':>10} {'p99':>7} | {'srv/MGET p50':>12} {'p99':>5} | "
             f"{'srv/MGET@rate p50':>17} {'p99':>5} | {'cli/(noop+MGET) p50':>19} {'p99':>5} | {'cache hits':>10}"]
    for r in rows:
        lines.append(
            f"{r['ids']:>5} | {f(r['mget_p50_ms']):>8} {f(r['mget_p99_ms'])} | {f(r['mget_paced_p50_ms']):>13} "
            f"{f(r['mget_paced_p99_ms'])} | {f(r['storage_read_p50_ms']):>9} "
            f"{f(r['storage_read_p99_ms'])} | {f(r['encode_p50_ms']):>10} | {f(r['noop_p50_ms']):>8} {f(r['noop_p99_ms'])} | "
            f"{f(r['features_client_p50_ms']):>10} {f(r['features_client_p99_ms'])} | "
            f"{f(r['features_server_p50_ms']):>10} {f(r['features_server_p99_ms'])} | "
            f"{g(r['server_over_mget_p50']):>12} {g(r['server_over_mget_p99'])} | "
            f"{g(r['server_over_mget_paced_p50']):>17} {g(r['server_over_mget_paced_p99'])} | "
            f"{g(r['client_over_noop_plus_mget_p50']):>19} {g(r['client_over_noop_plus_mget_p99'])} | "
            f"{g(r['cache_hit_rate']):>10}")
    return "\n".join(lines)
