"""The dataset format the evaluation reads, and its loader.

A dataset is a directory holding:
- `interactions.parquet` or `interactions.csv`: one row per positive interaction, columns
  `user_id` (str), `item_id` (str), `timestamp` (datetime, or anything `pd.to_datetime` parses).
- `item_ids.txt`: the item catalog, one id per line (read with splitlines: ids may hold spaces).
- `item_embeddings.npy`: float32 [n_items, D] content embeddings, row i for line i of item_ids.txt.

Interactions on items missing from the catalog are dropped (they have no content, so no SID).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

INTERACTIONS = ("interactions.parquet", "interactions.csv")
ITEM_IDS = "item_ids.txt"
EMBEDDINGS = "item_embeddings.npy"


@dataclass(frozen=True)
class Dataset:
    """Interactions with items as integer indices into the catalog (`item_ids`, `embeddings`)."""

    item_ids: list[str]
    embeddings: np.ndarray  # float32 [n_items, D]
    user: np.ndarray  # int64 [n], dense user index
    item: np.ndarray  # int64 [n], catalog row
    time: np.ndarray  # datetime64[s] [n]
    dropped: int  # interactions whose item is not in the catalog


def load(path: str | Path) -> Dataset:
    path = Path(path)
    found = [path / name for name in INTERACTIONS if (path / name).exists()]
    if not found:
        raise FileNotFoundError(f"{path}: needs one of {INTERACTIONS} (see sid_eval.dataset)")
    src = found[0]
    df = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_csv(src, dtype={"user_id": str, "item_id": str})
    missing = {"user_id", "item_id", "timestamp"} - set(df.columns)
    if missing:
        raise ValueError(f"{src}: missing columns {sorted(missing)}")
    item_ids = (path / ITEM_IDS).read_text(encoding="utf-8").splitlines()
    emb = np.load(path / EMBEDDINGS, allow_pickle=False)
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != len(item_ids):
        raise ValueError(f"{path / EMBEDDINGS}: need float32 [{len(item_ids)}, D], got {emb.dtype} {emb.shape}")
    index = pd.Index(item_ids)
    item = index.get_indexer(df["item_id"].astype(str))
    keep = item >= 0
    user = pd.factorize(df["user_id"].astype(str)[keep])[0]
    time = pd.to_datetime(df["timestamp"][keep]).to_numpy(dtype="datetime64[s]")
    return Dataset(item_ids, emb, user.astype(np.int64), item[keep].astype(np.int64), time, int((~keep).sum()))
