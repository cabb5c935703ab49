"""A tiny synthetic dataset in the sid_eval format: items in content clusters, users who buy
from their favourite clusters, some items introduced only after the cut (new items)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CUT = "2020-03-01"


def make_dataset(path: Path, n_items: int = 240, n_users: int = 120, n_clusters: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    dim = 16
    centres = rng.normal(size=(n_clusters, dim))
    cluster = rng.integers(0, n_clusters, n_items)
    emb = centres[cluster] + 0.3 * rng.normal(size=(n_items, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # Items released over Jan-Apr; those released after the cut are the new items.
    release = np.datetime64("2020-01-01") + rng.integers(0, 110, n_items).astype("timedelta64[D]")
    taste = rng.integers(0, n_clusters, (n_users, 2))  # two favourite clusters per user
    popularity = rng.pareto(1.2, n_items) + 1
    rows = []
    for u in range(n_users):
        for day in np.sort(rng.choice(120, size=12, replace=False)):
            t = np.datetime64("2020-01-01") + np.timedelta64(int(day), "D")
            ok = (release <= t) & np.isin(cluster, taste[u])
            if not ok.any():
                continue
            p = popularity * ok
            for i in rng.choice(n_items, size=min(3, int(ok.sum())), replace=False, p=p / p.sum()):
                rows.append((f"u{u}", f"item {i}", t + np.timedelta64(int(rng.integers(0, 86400)), "s")))
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path / "interactions.csv", index=False)
    (path / "item_ids.txt").write_text("\n".join(f"item {i}" for i in range(n_items)) + "\n")
    np.save(path / "item_embeddings.npy", emb.astype(np.float32))
    return path


@pytest.fixture(scope="session")
def cut() -> str:
    return CUT


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return make_dataset(tmp_path_factory.mktemp("sid_eval_data"))
