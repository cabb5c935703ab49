"""Semantic IDs for the evaluation, made the way production makes them: the exporter trains an
RQ-VAE on the training-period items only and exports its frozen bundle; every item, new ones
included, then gets its codes from that bundle through the service's own loader and encoder
(`sidserve.model.SidModel`, onnxruntime), exactly as the service computes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sid_exporter.export import export_bundle
from sid_exporter.report import format_table, quality_report
from sid_exporter.train import TrainConfig, train
from sidserve.model import SidModel


def build_bundle(x_train: np.ndarray, out_dir: Path, config: TrainConfig) -> tuple[Path, dict[str, Any]]:
    model, metrics = train(x_train, config)
    return export_bundle(model, out_dir, x_train, metrics), metrics


def encode_all(bundle: Path, embeddings: np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, int]:
    """(codes int64 [n_items, L], K) of every catalog item from the frozen bundle."""
    model = SidModel.load(bundle)
    parts = [model.encode(embeddings[s : s + batch_size]) for s in range(0, len(embeddings), batch_size)]
    return np.concatenate(parts), model.codebook_size


def quality_text(embeddings: np.ndarray, codes: np.ndarray, train_items: np.ndarray, k: int, metrics: dict[str, Any]) -> str:
    """The exporter's SID quality report, for the training items and for the new items."""
    recon = {key: metrics[key] for key in ("recon_rel_error", "recon_rel_sq") if key in metrics}
    reports = [quality_report(embeddings[train_items], codes[train_items], k, recon, name="training items")]
    if (~train_items).sum() > 1:
        reports.append(quality_report(embeddings[~train_items], codes[~train_items], k, name="new items"))
    return format_table(reports)
