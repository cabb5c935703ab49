"""Latency of the features call (200 candidates + 100 history ids) seen from the Python client.

Starts a private redis-server and the service (`sidserve`, 1 worker) as subprocesses, uploads
--items items through the client, warms up, then times --calls sequential calls (closed loop, one
at a time: a quick figure, not issue 4's open-model load test). For context it also times the
Redis floor: one sync redis-py MGET of the same 300 keys.

    python loadtest/measure_features.py --bundle path/to/bundle      (no --bundle: trains a small demo one)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from sidserve_client import SidServeClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(600):
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {f"p{p}": round(float(np.percentile(ms, p)), 3) for p in (50, 90, 99)} | {"max": round(float(ms.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        bundle = args.bundle
        if bundle is None:
            from sid_exporter.synthetic import build_demo_bundle

            bundle, _, _ = build_demo_bundle(Path(workdir) / "bundle", n=2000, dim=32, levels=3, codebook_size=16)
        manifest = json.loads((bundle / "manifest.json").read_text())
        redis_port, port = _free_port(), _free_port()
        procs = [subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir], stdout=subprocess.DEVNULL,
        )]  # fmt: skip
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        try:
            _wait(lambda: redis.Redis.from_url(redis_url).ping(), "redis-server")
            env = {**os.environ, "SIDSERVE_BUNDLE": str(bundle), "SIDSERVE_REDIS_URL": redis_url}
            sidserve = str(Path(sys.executable).with_name("sidserve"))
            procs.append(subprocess.Popen([sidserve, "--port", str(port), "--log-level", "warning"], env=env))
            url = f"http://127.0.0.1:{port}"
            with SidServeClient(url) as client:
                _wait(lambda: client.ready().ready, "sidserve")
                rng = np.random.default_rng(0)
                ids = [f"item-{i:07d}" for i in range(args.items)]
                x = rng.normal(size=(args.items, manifest["input_dim"])).astype(np.float32)
                start = time.perf_counter()
                client.upsert_items(ids, x)
                upload_s = time.perf_counter() - start

                requests = [rng.choice(args.items, 300, replace=False) for _ in range(args.warmup + args.calls)]
                timings = []
                for n, picks in enumerate(requests):
                    cand, hist = [ids[i] for i in picks[:200]], [ids[i] for i in picks[200:]]
                    start = time.perf_counter()
                    f = client.features(cand, hist)
                    if n >= args.warmup:
                        timings.append(time.perf_counter() - start)
                assert f.candidates.known.all() and f.history.known.all()

                r = redis.Redis.from_url(redis_url)
                floor = []
                for n, picks in enumerate(requests):
                    keys = [f"sid:{manifest['model_version']}:{ids[i]}" for i in picks]
                    start = time.perf_counter()
                    r.mget(keys)
                    if n >= args.warmup:
                        floor.append(time.perf_counter() - start)

            print(json.dumps({
                "model": {k: manifest[k] for k in ("input_dim", "levels", "codebook_size")},
                "items": args.items, "upload_items_per_s": round(args.items / upload_s),
                "features_300_ids_ms": _percentiles(timings), "calls": args.calls,
                "redis_mget_300_keys_ms": _percentiles(floor), "cpus": os.cpu_count(),
            }, indent=1))  # fmt: skip
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
