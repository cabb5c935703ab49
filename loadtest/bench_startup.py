"""Seconds from starting `sidserve` to its first 200 on /readyz, with a corpus already in Redis.

    python loadtest/bench_startup.py [--items 1000000] [--runs 3]

Preloads --items SIDs through sidserve.storage (the real layout), then starts the service
--runs times (1 worker) and times process start -> /readyz 200. Nothing at startup may depend
on the corpus size: the service loads the bundle, FUNCTION LOADs its library and reads the
layout key, and never scans keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest import corpus, procs  # noqa: E402
from loadtest.profiles import FULL  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bundle", type=Path)
    args = p.parse_args()
    bundle = args.bundle or corpus.ensure_bundle(FULL.dim, FULL.levels, FULL.codebook_size, FULL.train_n, FULL.epochs)
    m = corpus.manifest(bundle)
    codes = np.random.default_rng(0).integers(0, m["codebook_size"], size=(args.items, m["levels"]))
    times = []
    with procs.RedisServer() as rs:
        corpus.preload(rs.url, bundle, codes)
        for _ in range(args.runs):
            t0 = time.monotonic()
            with procs.Service(bundle, rs.url, 1):
                times.append(time.monotonic() - t0)
    out = {"items": args.items, "ready_s": [round(t, 3) for t in times], "median_s": round(float(np.median(times)), 3),
           "load_avg": os.getloadavg()[0]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
