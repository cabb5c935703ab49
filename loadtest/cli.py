"""python -m loadtest run|bench — see README "Load tests and benchmarks"."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import budgets, profiles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="open-model load test of every scenario of a profile, checked against budgets")
    r.add_argument("--profile", default="smoke", choices=sorted(profiles.PROFILES))
    r.add_argument("--workers", type=int, help="uvicorn workers per replica (default: the profile's)")
    r.add_argument("--replicas", type=int,
                   help="service processes on their own ports, requests spread over them (default: the profile's)")
    r.add_argument("--out", type=Path, help="write the results as JSON here")
    r.add_argument("--bundle", type=Path, help="model bundle to serve (default: train and cache a demo one)")
    r.add_argument("--budgets", type=Path, default=budgets.DEFAULT_FILE, help="budgets file (TOML)")
    r.add_argument("--duration", type=float, help="seconds measured per scenario (default: the profile's)")
    r.add_argument("--warmup", type=float, help="seconds of warm-up per scenario, not measured")
    r.add_argument("--corpus", type=int, help="items preloaded (default: the profile's)")
    r.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    r.add_argument("--client", default="raw", choices=("raw", "httpx"),
                   help="HTTP client of the generator (httpx only to compare client cost)")

    b = sub.add_parser("bench", help="the Redis floor vs no-op endpoint vs features endpoint, same run and keys")
    b.add_argument("--quick", action="store_true", help="100k items, 10 s per point (default: 1M items, 60 s)")
    b.add_argument("--workers", type=int, default=1, help="uvicorn workers per replica")
    b.add_argument("--replicas", type=int, default=2,
                   help="service processes on their own ports, requests spread over them (default: the "
                   "full profile's 2)")
    b.add_argument("--bundle", type=Path)
    b.add_argument("--rate", type=float, default=500.0,
                   help="requests/s of the HTTP points (open model; default: issue 4's target rate)")
    b.add_argument("--duration", type=float, help="seconds per point")
    b.add_argument("--items", type=int, help="corpus size")
    b.add_argument("--ids", type=int, action="append", choices=(1, 300, 1000),
                   help="run only this request size (repeatable; default: 1, 300 and 1,000 IDs)")
    b.add_argument("--noop-path", default="/v1/_noop", help="the service's no-op endpoint taking a features body")
    b.add_argument("--out", type=Path)

    r.add_argument("--rate-scale", type=float, default=1.0,
                   help="multiply every scenario's rate (e.g. 0.4 on a machine that cannot sustain the "
                   "profile's rates; throughput budgets stay as written)")

    args = p.parse_args(argv)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so Redis and the service are stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.cmd == "run":
        from . import runner

        prof = profiles.get(args.profile, workers=args.workers, replicas=args.replicas, duration_s=args.duration,
                            warmup_s=args.warmup, corpus=args.corpus)
        if args.rate_scale != 1.0:
            prof = profiles.scale_rates(prof, args.rate_scale)
        return runner.run(prof, args.bundle, args.out, args.budgets, client=args.client, only=args.scenario)
    from . import bench

    return bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
