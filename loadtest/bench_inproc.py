"""The features and no-op routes in-process: the service's ASGI app called directly, no HTTP.

    python loadtest/bench_inproc.py [--items 200000] [--requests 2000] [--pause-ms 3] [--rounds 3] [--parts]

Why: on the shared 2-core machine the HTTP benchmark's figures move by tens of percent between
runs (the generator, Redis and the service share two cores), which hides a change of 10-30 % in
the service's own code. Calling the app directly (lifespan, middleware, routing, guard, handler,
a real Redis behind it) measures only that code. Each round times --requests calls back to back
("warm": CPU caches hot) and --requests calls each after a --pause-ms sleep ("paced": caches go
cold between requests, as under the open-model HTTP points at a few hundred requests/s, where the
same work takes ~2x longer). Bodies: 200 candidates + 100 history IDs drawn Zipf(1) from the
preloaded corpus, a different body per call (never one of the warm-up's), after a warm-up that
fills the SID cache; each phase also reports the share of IDs the cache answered. (Replaying the
same bodies would measure all-hit requests: ~0.35 ms warm here, against ~1 ms at 95 % hits, where
the requests that miss pay a Redis round trip.)

Compare two versions of the service by running this alternately against each
(`PYTHONPATH=<worktree>/service python loadtest/bench_inproc.py`) and comparing the medians.

`--parts` also times the features handler's parts (`PARTS`: parsing, the lookup, the read of the
cache misses with its hashing, Redis call, unpacking, feature rows and records, the encoding) with
a wrapper around each function, and reports each part's p50 per phase. Parts nest (the lookup
holds the read of the misses, which holds the Redis call), and each wrapper adds ~0.5 us, so the
route's own p50 is a little higher in this mode than without it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import inspect
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest import corpus, procs, promparse, workload  # noqa: E402
from loadtest.profiles import FULL  # noqa: E402

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# The features handler's parts timed by --parts: (label, module, attribute path). A function is
# wrapped where the handler looks it up: `bodies.parse_features` as a module attribute, and
# `feature_rows` in sidserve.lookup, which imports it by name.
PARTS = (
    ("parse", "sidserve.bodies", "parse_features"),
    ("lookup", "sidserve.lookup", "FeatureLookup.fetch"),
    ("lookup.read_misses", "sidserve.lookup", "FeatureLookup._read"),
    ("store.hash_and_keys", "sidserve.storage", "SidStore._keys_arg"),
    ("store.redis_call", "sidserve.redis_client", "CallConnections.execute"),
    ("store.unpack", "sidserve.codec", "BitPacker.unpack"),
    ("feature_rows", "sidserve.lookup", "feature_rows"),
    ("records", "sidserve.responses", "AnswerLayout.records"),
    ("encode", "sidserve.responses", "FeaturesEncoder.encode"),
)


class PartTimers:
    """Wall time of each call of the PARTS functions, in us, collected until `take()`."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {label: [] for label, _, _ in PARTS}
        for label, module_name, path in PARTS:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            setattr(owner, name, self._timed(getattr(owner, name), self._times[label]))

    @staticmethod
    def _timed(function: Callable[..., Any], times: list[float]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter_ns()
                try:
                    return await function(*args, **kwargs)
                finally:
                    times.append((time.perf_counter_ns() - start) / 1e3)

            return timed_async

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return function(*args, **kwargs)
            finally:
                times.append((time.perf_counter_ns() - start) / 1e3)

        return timed

    def take(self) -> dict[str, float]:
        """Each part's p50 (us) over the calls since the last take (parts not called are left out)."""
        p50 = {label: round(float(np.median(times)), 1) for label, times in self._times.items() if times}
        for times in self._times.values():
            times.clear()
        return p50


async def _call(app: ASGIApp, method: str, path: str, body: bytes, auth: bytes) -> tuple[int, bytes]:
    """One request through the whole app; returns the status and the body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "state": {},
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"), (b"authorization", auth),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status, answer = [0], bytearray()

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        else:
            answer.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status[0], bytes(answer)


async def _measure(
    app: ASGIApp, path: str, bodies: list[bytes], auth: bytes, pause_s: float, parts: PartTimers | None = None
) -> dict[str, Any]:
    before = (await _call(app, "GET", "/metrics", b"", auth))[1].decode()
    if parts is not None:
        parts.take()  # drop what the warm-up or an earlier phase timed
    times = []
    for body in bodies:
        if pause_s:
            await asyncio.sleep(pause_s)
        t = time.perf_counter_ns()
        status, _ = await _call(app, "POST", path, body, auth)
        times.append(time.perf_counter_ns() - t)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
    after = (await _call(app, "GET", "/metrics", b"", auth))[1].decode()
    us = np.array(times) / 1e3
    result = {"p50_us": round(float(np.median(us)), 1), "p90_us": round(float(np.percentile(us, 90)), 1),
              "cache_hit_rate": promparse.cache_hit_rate(before, after)}  # fmt: skip
    if parts is not None:
        result["parts_p50_us"] = parts.take()
    return result


def _median_parts(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per phase, each part's median over the rounds of its per-round p50."""
    out: dict[str, dict[str, float]] = {}
    for phase in ("warm", "paced"):
        labels = [label for label, _, _ in PARTS if all(label in r[phase]["parts_p50_us"] for r in rounds)]
        out[phase] = {label: float(np.median([r[phase]["parts_p50_us"][label] for r in rounds])) for label in labels}
    return out


def _print_parts(results: dict[str, Any]) -> None:
    for path, result in results.items():
        for phase, p50 in result.get("parts_p50_us", {}).items():
            if p50:
                print(f"[inproc] {path} {phase} parts p50 (us, nested): "
                      + "  ".join(f"{label} {us:.1f}" for label, us in p50.items()), flush=True)  # fmt: skip


async def _run(args: argparse.Namespace, key: str) -> dict[str, Any]:
    from sidserve.app import create_app

    app = create_app()
    parts = PartTimers() if args.parts else None
    lifespan_in: asyncio.Queue[dict] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict] = asyncio.Queue()
    await lifespan_in.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                       lifespan_in.get, lifespan_out.put))  # fmt: skip
    started = await lifespan_out.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    sampler = workload.KeySampler(args.items, "zipf", seed=11)
    n = args.requests
    bodies = [workload.features_body(sampler, 200, 100) for _ in range(n * (1 + 2 * args.rounds))]

    def chunk(k: int) -> list[bytes]:  # chunk 0 warms up; round i uses chunks 1 + 2i (warm) and 2 + 2i (paced)
        return bodies[k * n : (k + 1) * n]

    auth = f"Bearer {key}".encode()
    results: dict[str, Any] = {}
    try:
        await _measure(app, "/v1/features", chunk(0), auth, 0.0)  # fills the SID cache
        for path in ("/v1/features", "/v1/_noop"):
            rounds = []
            for i in range(args.rounds):
                warm = await _measure(app, path, chunk(1 + 2 * i), auth, 0.0, parts)
                paced = await _measure(app, path, chunk(2 + 2 * i), auth, args.pause_ms / 1e3, parts)
                rounds.append({"warm": warm, "paced": paced})
                print(f"[inproc] {path:13s} warm p50 {warm['p50_us']:7.1f} us  paced p50 {paced['p50_us']:7.1f} us"
                      f"  cache {warm['cache_hit_rate'] or 0:.0%} / {paced['cache_hit_rate'] or 0:.0%}", flush=True)
            results[path] = {
                "rounds": rounds,
                "warm_p50_us": float(np.median([r["warm"]["p50_us"] for r in rounds])),
                "paced_p50_us": float(np.median([r["paced"]["p50_us"] for r in rounds])),
            }
            if parts is not None:
                results[path]["parts_p50_us"] = _median_parts(rounds)
    finally:
        await lifespan_in.put({"type": "lifespan.shutdown"})
        await lifespan
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=200_000, help="corpus size (random SIDs of the bundle's shape)")
    p.add_argument("--requests", type=int, default=2000, help="calls per measured phase")
    p.add_argument("--pause-ms", type=float, default=3.0, help="sleep before each paced call")
    p.add_argument("--rounds", type=int, default=3, help="warm + paced phases per route; medians are reported")
    p.add_argument("--parts", action="store_true", help="also time the features handler's parts (PARTS)")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    bundle = args.bundle or corpus.ensure_bundle(FULL.dim, FULL.levels, FULL.codebook_size, FULL.train_n, FULL.epochs)
    m = corpus.manifest(bundle)
    codes = np.random.default_rng(0).integers(0, m["codebook_size"], size=(args.items, m["levels"]))
    key = secrets.token_urlsafe(24)
    with procs.RedisServer() as redis_server:
        corpus.preload(redis_server.url, bundle, codes)
        os.environ.update(SIDSERVE_BUNDLE=str(bundle), SIDSERVE_REDIS_URL=redis_server.url, SIDSERVE_API_KEYS=key,
                          SIDSERVE_LOG_LEVEL="warning")  # fmt: skip
        import uvloop  # the service's loop under uvicorn

        results = uvloop.run(_run(args, key))
    out = {"items": args.items, "requests": args.requests, "pause_ms": args.pause_ms, "results": results,
           "load_avg": os.getloadavg()[0]}  # fmt: skip
    _print_parts(results)
    summary = {path: {k: v for k, v in r.items() if k not in ("rounds", "parts_p50_us")} for path, r in results.items()}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
