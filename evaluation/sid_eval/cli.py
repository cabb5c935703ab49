"""`sid-eval` / `python -m sid_eval`: prepare a dataset, run the evaluation."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .pipeline import EvalConfig, run
from .prep import prep_online_retail


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="sid-eval", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prep-online-retail", help="convert the raw UCI Online Retail files to the dataset format")
    prep.add_argument("raw")
    prep.add_argument("out")
    r = sub.add_parser("run", help="run the evaluation on a dataset directory")
    r.add_argument("data")
    r.add_argument("--out", default="results/evaluation")
    defaults = EvalConfig()
    for f in fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name in ("seeds", "variants"):
            r.add_argument(flag, nargs="+", type=int if f.name == "seeds" else str, default=value)
        elif f.name in ("cut", "max_train"):
            r.add_argument(flag, type=str if f.name == "cut" else int, default=value)
        else:
            r.add_argument(flag, type=type(value), default=value)
    args = p.parse_args(argv)
    if args.cmd == "prep-online-retail":
        print(prep_online_retail(args.raw, args.out))
        return
    config = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
    config.seeds = tuple(config.seeds)
    config.variants = tuple(config.variants) if config.variants else None
    run(args.data, args.out, config)
