"""The protocol end to end: load, split, SIDs from a frozen bundle, examples, then every variant
trained and scored over several seeds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sid_exporter.train import TrainConfig

from . import dataset, report, sids
from .metrics import slice_metrics
from .model import Ranker
from .negatives import Examples, with_negatives
from .split import Split, popularity_slices, temporal_split
from .train import fit, predict, torch_threads
from .variants import build_variants, table_size

SLICES = ("overall", "new", "head", "torso", "tail")


@dataclass
class EvalConfig:
    cut: str | None = None  # temporal cut (ISO date); None: the 80% quantile of event days
    history: int = 20  # history items per event
    max_train: int | None = 150_000  # most recent training events kept (bounds the runtime)
    negatives: int = 1  # sampled negatives per positive, train and test alike
    seeds: tuple[int, ...] = (0, 1, 2)
    levels: int = 4  # L; even, so non-overlapping bigrams apply
    codebook_size: int = 64  # K
    rqvae_steps: int = 3000
    collision_factor: float = 5.0  # training items per table row (Meta paper's random-hashing setting)
    dim: int = 32
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 2e-3
    variants: tuple[str, ...] | None = None  # None: all
    data_seed: int = 0  # negatives; fixed across model seeds so every variant sees the same examples
    threads: int = 1  # small batches gain little from intra-op threads; leaves a core free


def slice_masks(examples: Examples, split: Split) -> dict[str, np.ndarray]:
    pop = popularity_slices(split.train_counts)[examples.item]
    return {
        "overall": np.ones(len(examples), dtype=bool),
        "new": ~split.train_items[examples.item],
        "head": pop == 0,
        "torso": pop == 1,
        "tail": pop == 2,
    }


def run(
    data_dir: str | Path, out_dir: str | Path, config: EvalConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Writes results.md, results.json, auc_by_slice.png, sid_quality.txt and bundle/ to out_dir."""
    with torch_threads(config.threads):
        return _run(data_dir, out_dir, config, log)


def _run(data_dir: str | Path, out_dir: str | Path, config: EvalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dataset.load(data_dir)
    split = temporal_split(data, None if config.cut is None else np.datetime64(config.cut), config.history, config.max_train)
    train_x = data.embeddings[split.train_items]  # the quantizer never sees a test-period item
    bundle, rq_metrics = sids.build_bundle(
        train_x, out / "bundle",
        TrainConfig(levels=config.levels, codebook_size=config.codebook_size, max_steps=config.rqvae_steps, device="cpu"),
    )  # fmt: skip
    codes, k = sids.encode_all(bundle, data.embeddings)
    quality = sids.quality_text(data.embeddings, codes, split.train_items, k, rq_metrics)
    (out / "sid_quality.txt").write_text(quality + "\n")
    log(f"bundle trained on {len(train_x)} items in {rq_metrics['train_seconds']:.0f}s\n{quality}")

    train_ex = with_negatives(split.train, config.negatives, config.data_seed)
    test_ex = with_negatives(split.test, config.negatives, config.data_seed + 1)
    masks = slice_masks(test_ex, split)
    table = table_size(int(split.train_items.sum()), config.collision_factor)
    info = {
        "train_examples": len(train_ex), "test_examples": len(test_ex), "table_rows": table,
        "train_items": int(split.train_items.sum()), "new_test_items": int(np.unique(test_ex.item[masks["new"]]).size),
        "slice_examples": {s: int(m.sum()) for s, m in masks.items()},
        "cut_day": str(np.datetime64(split.cut_day, "D")),
    }  # fmt: skip
    log(json.dumps(info))

    runs: dict[str, list[dict[str, float]]] = {}
    rows: dict[str, int] = {}
    for seed in config.seeds:
        for v in build_variants(data.item_ids, split.train_counts, codes, k, table, seed):
            if config.variants is not None and v.name not in config.variants:
                continue
            t = time.perf_counter()
            model = Ranker(v, data.embeddings, dim=config.dim)
            losses = fit(model, train_ex, config.epochs, config.batch_size, config.lr, seed)
            m = slice_metrics(test_ex.label, predict(model, test_ex), masks)
            runs.setdefault(v.name, []).append(m)
            rows[v.name] = v.num_rows
            log(f"seed {seed} {v.name:16s} {time.perf_counter() - t:5.1f}s loss {losses[-1]:.4f} "
                + " ".join(f"{key}={val:.4f}" for key, val in m.items()))  # fmt: skip
    info["seconds"] = round(time.perf_counter() - start, 1)
    result = {"config": asdict(config), "info": info, "rows": rows, "runs": runs, "rq_metrics": {
        key: rq_metrics[key] for key in ("recon_rel_error", "recon_rel_sq", "utilization", "unique_sid_fraction")}}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(report.markdown(result, SLICES))
    report.plot(result, SLICES, out / "auc_by_slice.png")
    return result
