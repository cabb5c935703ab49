"""sid-exporter: train a Semantic-ID quantizer, export it as a bundle, prove parity, report quality.

sid-exporter train  --embeddings x.npy --ids ids.txt --out model.pt
sid-exporter export --checkpoint model.pt --out bundle/
sid-exporter verify --bundle bundle/ --checkpoint model.pt --embeddings x.npy --json verify.json
sid-exporter report --bundle bundle/ [--bundle other/] --embeddings x.npy --ids ids.txt --json report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from .data import InputError, fingerprint, load_dataset, load_embeddings


def _train_defaults() -> Any:
    from .train import TrainConfig

    return TrainConfig()


def _write_json(path: str | None, obj: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, save_checkpoint, train

    x, _ = load_dataset(args.embeddings, args.ids)
    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    config.max_steps = config.max_steps or None  # --max-steps 0: no cap
    model, metrics = train(x, config)
    save_checkpoint(args.out, model, config, metrics, x)
    util = ", ".join(f"{u:.0%}" for u in metrics["utilization"])
    print(
        f"trained {config.method} L={config.levels} K={config.codebook_size} on {x.shape[0]} x {x.shape[1]} "
        f"in {metrics['train_seconds']:.1f}s ({metrics['device']}): recon_rel_error="
        f"{metrics['recon_rel_error']:.4f}, utilisation [{util}], unique SIDs "
        f"{metrics['unique_sid_fraction']:.1%} -> {args.out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_bundle
    from .train import load_checkpoint

    model, metrics, training_data = load_checkpoint(args.checkpoint)
    out = export_bundle(model, args.out, training_data, metrics)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"exported bundle {manifest['model_version']} ({manifest['method']}) -> {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .train import load_checkpoint
    from .verify import verify

    model, _, _ = load_checkpoint(args.checkpoint)
    bundle = load_bundle(args.bundle, threads=args.threads)
    from .export import model_version

    if model_version(model) != bundle.manifest["model_version"]:
        raise InputError(
            f"{args.checkpoint} is not the model of {args.bundle} (model_version differs)"
        )
    result = verify(
        model,
        bundle,
        load_embeddings(args.embeddings),
        n=args.n,
        latency_runs=(args.runs, args.runs),
    )
    _write_json(args.json, result)
    for key in ("parity", "parity_boundary"):
        p = result[key]
        print(
            f"{key}: {p['agree']}/{p['n']} rows agree ({p['agreement']:.4%}); torch coded"
            f" {p['torch_batch_dependent_rows']} of them differently inside its batch than alone"
        )
    b = result["batch_invariance"]
    print(f"batch_invariance: {b['agree']}/{b['n']} rows get the same codes alone as in one batch")
    for lat in result["latency_cpu"]:
        print(
            f"onnxruntime CPU batch {lat['batch']}: median {lat['median_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms"
        )
    return 0 if result["ok"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .report import format_table, quality_report

    x, _ = load_dataset(args.embeddings, args.ids)
    fp = fingerprint(x)["fingerprint"]
    reports = []
    for path in args.bundle:
        bundle = load_bundle(path)
        m = bundle.manifest
        tm = m["training_metrics"]
        # The bundle has no decoder: reconstruction comes from training; say which data it was on.
        recon = {k: tm[k] for k in ("recon_rel_error", "recon_rel_sq", "recon_mse") if k in tm}
        recon["measured_on"] = (
            "this data" if m["training_data"]["fingerprint"] == fp else "training data"
        )
        report = quality_report(
            x, bundle.codes(x), m["codebook_size"], recon, f"{m['method']} {m['model_version'][:8]}"
        )
        report.update(bundle=str(path), model_version=m["model_version"], method=m["method"])
        reports.append(report)
    print(format_table(reports))
    _write_json(
        args.json, {"embeddings": str(args.embeddings), "data_fingerprint": fp, "bundles": reports}
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = _train_defaults()
    p = argparse.ArgumentParser(
        prog="sid-exporter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
        help="train an RQ-VAE or RQ-KMeans quantizer, write a checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--embeddings", required=True, help="N x D float32 .npy of content embeddings")
    t.add_argument("--ids", required=True, help="item ids, one per line, in the order of the rows")
    t.add_argument("--out", required=True, help="checkpoint (.pt) to write")
    t.add_argument(
        "--method",
        choices=("rqvae", "rqkmeans"),
        default=d.method,
        help="rqvae: learned encoder + residual quantizer; rqkmeans: residual k-means on x (OneRec)",
    )
    t.add_argument("--levels", type=int, default=d.levels, help="L, codes per Semantic ID")
    t.add_argument("--codebook-size", type=int, default=d.codebook_size, help="K, codes per level")
    t.add_argument("--latent-dim", type=int, default=d.latent_dim, help="D', rqvae latent size")
    t.add_argument(
        "--hidden", type=int, nargs="+", default=list(d.hidden), help="rqvae encoder widths"
    )
    t.add_argument("--epochs", type=int, default=d.epochs, help="rqvae passes over the data")
    t.add_argument(
        "--max-steps", type=int, default=d.max_steps, help="rqvae optimizer steps cap (0: none)"
    )
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    t.add_argument("--beta", type=float, default=d.beta, help="commitment loss weight")
    t.add_argument(
        "--seed", type=int, default=d.seed, help="same seed + data (+ thread count) => same weights"
    )
    t.add_argument(
        "--dead-code-window",
        type=int,
        default=d.dead_code_window,
        help="steps; codes unused over a window are reset to residuals of batch items",
    )
    t.add_argument(
        "--init-samples",
        type=int,
        default=d.init_samples,
        help="items used for k-means codebook init",
    )
    t.add_argument("--kmeans-iters", type=int, default=d.kmeans_iters)
    t.add_argument("--balanced", action="store_true", help="rqkmeans: equal-size clusters (OneRec)")
    t.add_argument(
        "--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:1, ..."
    )
    t.add_argument("--threads", type=int, default=d.threads, help="CPU threads (default: torch's)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "export", help="write a model bundle (encoder.onnx + manifest.json) from a checkpoint"
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint written by `train`")
    e.add_argument("--out", required=True, help="bundle directory to write")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser(
        "verify",
        help="torch vs onnxruntime code agreement, the graph's batch invariance, ORT CPU latency",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument("--bundle", required=True)
    v.add_argument(
        "--checkpoint", required=True, help="the checkpoint the bundle was exported from"
    )
    v.add_argument(
        "--embeddings", required=True, help=".npy; padded with jittered copies up to --n rows"
    )
    v.add_argument("--n", type=int, default=10_000, help="rows compared")
    v.add_argument("--runs", type=int, default=200, help="timed runs per batch size")
    v.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: ORT's)"
    )
    v.add_argument("--json", help="write the figures here")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser(
        "report", help="Semantic-ID quality table; repeat --bundle to compare models side by side"
    )
    r.add_argument("--bundle", required=True, action="append", help="bundle directory (repeatable)")
    r.add_argument("--embeddings", required=True)
    r.add_argument("--ids", required=True)
    r.add_argument("--json", help="write the figures here")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except InputError as e:
        print(f"sid-exporter {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
