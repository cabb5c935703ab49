"""`python -m loadtest run`: start Redis + bundle + corpus + service, drive each scenario, check budgets."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import budgets as budgets_mod
from . import corpus, driver, procs, promparse, schedule, workload
from .profiles import Profile, Scenario
from .rawhttp import HttpxPool, RawHttpPool, pool_for


def machine_note() -> dict:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in load],
            "python": platform.python_version(), "platform": platform.platform(),
            "note": "shared machine: other processes compete for the same cores (see loadavg)"}


def build_kinds(sc: Scenario, host: str, n_requests: int, n_items: int, src: corpus.EmbeddingSource,
                seed: int, run_tag: str, zipf_s: float = 1.0) -> tuple[list[driver.RequestKind], np.ndarray]:
    """Request kinds of a scenario and which kind each of the n_requests is."""
    rng = np.random.default_rng(seed)
    choice = np.zeros(n_requests, dtype=np.int64)

    def fetch_kind() -> driver.RequestKind:
        sampler = workload.KeySampler(n_items, sc.popularity, s=zipf_s, seed=seed)
        # One distinct pre-built request per send, none replayed: a replayed ID set finds its items
        # still in the service's cache (entries live up to SIDSERVE_CACHE_MAX_AGE_S, 60 s), so a
        # replayed pool inflates cache hits (a 12 s cycle let a 500k-entry cache answer 96 % of the
        # IDs). Full profile, 300 IDs at 1,000 req/s: 70k requests, ~330 MB, built in seconds.
        return driver.RequestKind(
            f"fetch_{sc.candidates + sc.history}",
            workload.features_maker(host, sampler, sc.candidates, sc.history, max(1, n_requests)),
            check=workload.features_check(sc.candidates, sc.history),
            items_per_request=sc.candidates + sc.history,
        )

    def upload_kind(kind: str) -> driver.RequestKind:
        rows = src.rows(0, 1000, salt=seed + 1)
        if kind == "upload_single":
            frags = workload.embedding_fragments(rows)
            return driver.RequestKind("upload_single", workload.upload_single_maker(host, frags, f"{run_tag}-{sc.name}-"),
                                      check=workload.upload_check(1))
        make = workload.upload_batch_maker(host, rows, f"{run_tag}-{sc.name}-", sc.batch, sc.batch_body == "binary")
        return driver.RequestKind(f"upload_batch_{sc.batch}", make, check=workload.upload_check(sc.batch),
                                  items_per_request=sc.batch)

    if sc.kind == "fetch":
        kinds = [fetch_kind()]
    elif sc.kind in ("upload_single", "upload_batch"):
        kinds = [upload_kind(sc.kind)]
    elif sc.kind == "mix":
        kinds = [fetch_kind(), upload_kind(sc.mix_upload)]
        choice = (rng.random(n_requests) >= sc.fetch_share).astype(np.int64)
    else:
        raise ValueError(f"unknown scenario kind {sc.kind!r}")
    return kinds, choice


ENDPOINTS = {"fetch": "/v1/features", "upload_single": "/v1/items", "upload_batch": "/v1/items/batch"}


def _kind_endpoint(kind_name: str) -> str:
    return ENDPOINTS["fetch" if kind_name.startswith("fetch") else kind_name.rsplit("_", 1)[0]
                     if kind_name.startswith("upload_batch") else kind_name]


def summarize(sc: Scenario, res: driver.DriveResult, late_ms: float, server: dict) -> dict:
    tot = res.total()
    n_err = sum(tot.errors.values())
    achieved = tot.ok / res.elapsed_s if res.elapsed_s > 0 else 0.0
    per_kind = {}
    for k in res.kinds:
        if len(res.kinds) > 1:
            per_kind[k.name] = {"ok": k.ok, "errors": dict(k.errors), "latency": k.latency.summary(),
                                "latency_ok": k.ok_latency.summary(), "server_side": server.get(k.name)}
    items = sum(k.ok * k.items_per_request for k in res.kinds)
    out = {
        "scenario": sc.name, "kind": sc.kind, "popularity": sc.popularity if sc.kind in ("fetch", "mix") else None,
        "ids_per_request": sc.candidates + sc.history if sc.kind in ("fetch", "mix") else None,
        "batch": sc.batch if sc.kind == "upload_batch" else None,
        "rate_rps": sc.rate, "duration_s": round(res.duration_s, 3), "scheduled": res.scheduled,
        "sent": tot.sent, "ok": tot.ok, "errors": dict(tot.errors), "dropped": res.dropped,
        "error_rate": round(n_err / res.scheduled, 6) if res.scheduled else 0.0,
        "first_error": tot.first_error,
        "achieved_rps": round(achieved, 2),
        "items_per_s": round(items / res.elapsed_s, 1) if res.elapsed_s > 0 else 0.0,
        "late_sends": tot.late, "late_threshold_ms": late_ms,
        "latency": tot.latency.summary(),
        "latency_ok": tot.ok_latency.summary(),
        "service_time": tot.service.summary(),
        "send_lag": tot.send_lag.summary(),
        "server_side": server.get(res.kinds[0].name) if len(res.kinds) == 1 else None,
        "cache_hit_rate": getattr(res, "cache_hit_rate", None),
        "service_loop_stalls": getattr(res, "loop_stalls", None),
        "generator": {"cpu_us_per_request": round(res.gen_cpu_s / max(1, res.scheduled) * 1e6, 1),
                      "cpu_share_of_one_core": round(res.gen_cpu_s / max(res.elapsed_s, 1e-9), 3),
                      "connections_opened": res.connections,
                      "max_waiting_for_connection": res.max_waiting_for_connection},
        "cpu": cpu_use(*getattr(res, "cpu_used_s", (None, None)), ok=tot.ok, elapsed_s=res.elapsed_s),
    }
    if per_kind:
        out["per_kind"] = per_kind
    return out


def cpu_use(service_s: float | None, redis_s: float | None, ok: int, elapsed_s: float) -> dict:
    """CPU per successful request and cores busy on average, of the service's processes and of Redis,
    over the measured phase. Unlike latency, CPU per request hardly moves with the machine's noise
    (queueing, a descheduled worker), so it compares two versions of the code more steadily; it
    also sizes a deployment (requests/s per core)."""
    out: dict = {}
    for name, used in (("service", service_s), ("redis", redis_s)):
        if used is not None and ok and elapsed_s > 0:
            out[f"{name}_us_per_request"] = round(used / ok * 1e6, 1)
            out[f"{name}_cores"] = round(used / elapsed_s, 3)
    return out


def scrape(svc: procs.Service) -> str | None:
    """/metrics, or None when an overloaded service does not answer it in time (no server-side figure)."""
    try:
        status, body = svc.get("/metrics", timeout=30.0)
        return body.decode() if status == 200 else None
    except OSError:
        return None


def drive_scenario(svc: procs.Service, sc: Scenario, profile: Profile, n_items: int,
                   src: corpus.EmbeddingSource, seed: int, run_tag: str, client: str = "raw",
                   duration_s: float | None = None, warmup_s: float | None = None,
                   redis_srv: procs.RedisServer | None = None) -> dict:
    duration_s = profile.duration_s if duration_s is None else duration_s
    warmup_s = profile.warmup_s if warmup_s is None else warmup_s
    offsets = schedule.constant_offsets(sc.rate, duration_s)
    warm = schedule.constant_offsets(sc.rate, warmup_s) if warmup_s > 0 else None
    host = svc.target
    n_total = len(offsets) + (len(warm) if warm is not None else 0)
    kinds, choice = build_kinds(sc, host, n_total, n_items, src, seed, run_tag, profile.zipf_s)
    late_s = profile.late_ms / 1000
    pool_cls = RawHttpPool if client == "raw" else HttpxPool

    async def go() -> driver.DriveResult:
        pool = pool_for(svc.ports, pool_cls)
        try:
            await pool.warm(min(32, max(2, int(sc.rate // 50))))
            if warm is not None:  # same rate, same kinds, results dropped
                await driver.drive(pool, warm, kinds, choice[len(offsets):], late_s, rate=sc.rate)
            before = scrape(svc)
            cpu_before = svc.cpu_s(), redis_srv.cpu_s() if redis_srv else None
            res = await driver.drive(pool, offsets, kinds, choice[: len(offsets)], late_s, rate=sc.rate,
                                     first_index=len(warm) if warm is not None else 0)
            cpu_after = svc.cpu_s(), redis_srv.cpu_s() if redis_srv else None
            after = scrape(svc)
            res.cpu_used_s = [b - a if a is not None and b is not None else None for a, b in zip(cpu_before, cpu_after)]
            res.server = {k.name: promparse.delta_summary(before, after, _kind_endpoint(k.name))
                          if before is not None and after is not None else None for k in kinds}
            res.cache_hit_rate = promparse.cache_hit_rate(before, after) if before and after else None
            res.loop_stalls = promparse.loop_stalls(before, after) if before and after else None
            return res
        finally:
            pool.close()

    res = driver.run(go())
    return summarize(sc, res, profile.late_ms, res.server)


def run(profile: Profile, bundle: Path | None, out: Path | None, budgets_file: Path, client: str = "raw",
        only: list[str] | None = None, log=print) -> int:
    t_start = time.perf_counter()
    budgets = budgets_mod.load(budgets_file)
    if bundle is None:
        log(f"[loadtest] bundle: training/caching D={profile.dim} L={profile.levels} K={profile.codebook_size}")
        bundle = corpus.ensure_bundle(profile.dim, profile.levels, profile.codebook_size, profile.train_n,
                                      profile.epochs)
    m = corpus.manifest(bundle)
    log(f"[loadtest] bundle {bundle} (model {m['model_version']}, D={m['input_dim']} L={m['levels']} "
        f"K={m['codebook_size']})")
    src = corpus.EmbeddingSource(m["input_dim"], train_n=profile.train_n)
    t = time.perf_counter()
    codes = corpus.compute_codes(bundle, src, profile.corpus)
    codes_s = time.perf_counter() - t
    scenarios = [s for s in profile.scenarios if not only or s.name in only]
    if only and len(scenarios) != len(only):
        raise SystemExit(f"unknown scenario in {only}; profile {profile.name} has "
                         f"{[s.name for s in profile.scenarios]}")
    results: list[dict] = []
    with procs.RedisServer() as redis_srv:
        mem0 = redis_srv.used_memory()
        load_s = corpus.preload(redis_srv.url, bundle, codes)
        mem1 = redis_srv.used_memory()
        log(f"[loadtest] corpus: {len(codes):,} items with SIDs (onnxruntime {codes_s:.1f} s incl. cache), "
            f"written in {load_s:.1f} s; Redis used_memory +{(mem1 - mem0) / len(codes):.1f} B/item")
        with procs.Service(bundle, redis_srv.url, profile.workers, replicas=profile.replicas) as svc:
            log(f"[loadtest] sidserve ready in {svc.ready_s:.2f} s ({profile.replicas} replica(s) x "
                f"{profile.workers} worker(s), ports {', '.join(map(str, svc.ports))})")
            run_tag = f"lt{int(time.time())}"
            for i, sc in enumerate(scenarios):
                r = drive_scenario(svc, sc, profile, len(codes), src, seed=1000 + i, run_tag=run_tag, client=client,
                                   redis_srv=redis_srv)
                r["budget"] = budgets_mod.for_scenario(budgets, profile.name, sc.name)
                r["budget_misses"] = budgets_mod.check(r, r["budget"])
                results.append(r)
                log(row(r))
                if out:  # partial results survive a crash or a stop mid-run
                    write_json(out, {"profile": profile.name, "partial": True, "scenarios": results})
    report = {
        "profile": profile.name, "client": client,
        "config": {**{k: v for k, v in asdict(profile).items() if k != "scenarios"}, "bundle": str(bundle),
                   "model_version": m["model_version"]},
        "machine": machine_note(),
        "corpus": {"items": len(codes), "preload_s": round(load_s, 2),
                   "redis_used_memory_delta_bytes": mem1 - mem0,
                   "redis_bytes_per_item": round((mem1 - mem0) / len(codes), 2)},
        "service_ready_s": round(svc.ready_s, 3),
        "scenarios": results,
        "passed": not any(r["budget_misses"] for r in results),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    log("")
    log(table(results))
    misses = [f"{r['scenario']}: {miss}" for r in results for miss in r["budget_misses"]]
    if out:
        write_json(out, report)
        log(f"[loadtest] results written to {out}")
    log(f"[loadtest] profile {profile.name}: {len(results)} scenarios in {report['wall_s']} s on "
        f"{os.cpu_count()} cores (load avg {os.getloadavg()[0]:.1f}, shared)")
    if misses:
        log("[loadtest] BUDGETS MISSED:\n  " + "\n  ".join(misses))
        return 1
    log("[loadtest] all budgets met")
    return 0


def write_json(path: Path, report: dict) -> None:
    """A run's report as JSON at `path` (parent folders created; NaN and paths made JSON-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


HEADER = (f"{'scenario':<24} {'rate':>6} {'ok/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>8} "
          f"{'ok p99':>7} {'srv p50':>7} {'srv p99':>7} {'err':>5} {'late':>5} {'stall':>5} {'cpu us':>6} {'gen us':>6}  budget")


def row(r: dict) -> str:
    lat, srv = r["latency"], r.get("server_side") or {}
    f = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:7.3f}"  # noqa: E731
    status = "ok" if not r.get("budget_misses") else "MISSED: " + "; ".join(r["budget_misses"])
    stalls = (r.get("service_loop_stalls") or {}).get("over_10ms", "n/a")
    return (f"{r['scenario']:<24} {r['rate_rps']:>6g} {r['achieved_rps']:>8.1f} {f(lat['p50_ms'])} {f(lat['p90_ms'])} "
            f"{f(lat['p99_ms'])} {f(lat['p999_ms'])} {lat['max_ms']:>8.2f} {f(r['latency_ok']['p99_ms'])} {f(srv.get('p50_ms'))} "
            f"{f(srv.get('p99_ms'))} {sum(r['errors'].values()):>5} {r['late_sends']:>5} {stalls:>5} "
            f"{r['cpu'].get('service_us_per_request', float('nan')):>6.0f} "
            f"{r['generator']['cpu_us_per_request']:>6.0f}  {status}")


def table(results: list[dict]) -> str:
    return ("latency in ms from each request's intended send time (client-observed, open model), of all "
            "answers; ok p99 = of the successful answers alone; "
            "srv = server-side handler time (Prometheus buckets, interpolated); stall = rounds in which a "
            "service worker's event loop woke > 10 ms late (sidserve_event_loop_lag_seconds); cpu us = the "
            "service's CPU per request; gen us = the generator's\n"
            + HEADER + "\n" + "\n".join(row(r) for r in results))
