"""Synthetic content embeddings with a known hierarchy, for tests and the demo.

Items are drawn from a tree of Gaussian clusters (branching b_1 x b_2 x ...): each level adds
an offset whose scale shrinks with depth, so a good residual quantizer should recover the tree
coarse-to-fine and items sharing a longer code prefix should be more similar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def hierarchical_clusters(
    n: int,
    dim: int,
    branching: tuple[int, ...] = (8, 8, 8),
    seed: int = 0,
    decay: float = 0.5,
    noise: float = 0.05,
    normalize: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """n float32 embeddings of dimension dim from a Gaussian cluster tree, plus ids "item-<i>".

    Level l offsets have scale decay**l; leaf noise has scale `noise`. With normalize=True rows
    are L2-normalised, like sentence-embedding models output.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float64)
    path = np.zeros(n, dtype=np.int64)  # index of each item's node at the current depth
    for depth, b in enumerate(branching):
        # One centre per (parent node, child): draw all children of all parents at once.
        n_nodes = int(np.prod(branching[: depth + 1]))
        offsets = rng.normal(size=(n_nodes, dim)) * (decay**depth) / np.sqrt(dim)
        path = path * b + rng.integers(0, b, size=n)
        x += offsets[path]
    x += rng.normal(size=(n, dim)) * noise / np.sqrt(dim)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"item-{i}" for i in range(n)]


def build_demo_bundle(
    out_dir: str | Path,
    n: int = 2000,
    dim: int = 32,
    levels: int = 3,
    codebook_size: int = 16,
    seed: int = 0,
    method: str = "rqvae",
    epochs: int = 30,
    checkpoint: str | Path | None = None,
) -> tuple[Path, np.ndarray, list[str]]:
    """Train a small model on synthetic hierarchical data and export its bundle to out_dir
    (and its checkpoint to `checkpoint` if given, e.g. for `sid-exporter verify`).

    Shared by the test fixture `sid_bundle` and the demo, so both serve the same kind of model.
    Returns (bundle_dir, x, ids).
    """
    from .export import export_bundle  # torch is an optional extra: import lazily
    from .train import TrainConfig, save_checkpoint, train

    x, ids = hierarchical_clusters(n, dim, branching=(8, 8, 8), seed=seed)
    config = TrainConfig(
        method=method,
        levels=levels,
        codebook_size=codebook_size,
        latent_dim=16,
        hidden=(64, 32),
        epochs=epochs,
        batch_size=256,
        seed=seed,
        device="cpu",
        threads=1,  # a tiny model: more threads only add contention, and 1 is reproducible anywhere
    )
    model, metrics = train(x, config)
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, config, metrics, x)
    return export_bundle(model, out_dir, x, metrics), x, ids
