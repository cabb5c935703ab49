"""Temporal split into training and test events, each with the user's history before it.

An event is one (user, item, day) purchase, deduplicated. Its history is the user's last
`history` events on earlier days only, so a basket never sees itself (no same-day leakage).
Test events keep their test-period history: the model sees what the user did before that day,
as it would online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset

PAD = -1  # history padding; never a catalog row


@dataclass(frozen=True)
class Events:
    user: np.ndarray  # int64 [n]
    item: np.ndarray  # int64 [n], catalog row
    day: np.ndarray  # int64 [n], days since the epoch
    hist: np.ndarray  # int64 [n, M], catalog rows, PAD where the user has fewer events

    def take(self, idx: np.ndarray) -> Events:
        return Events(self.user[idx], self.item[idx], self.day[idx], self.hist[idx])

    def __len__(self) -> int:
        return len(self.item)


@dataclass(frozen=True)
class Split:
    train: Events
    test: Events
    train_items: np.ndarray  # bool [n_items]: has an interaction before the cut (the "seen" items)
    train_counts: np.ndarray  # int64 [n_items]: training-period events per item (popularity)
    cut_day: int


def events_with_history(data: Dataset, history: int) -> Events:
    day = data.time.astype("datetime64[D]").astype(np.int64)
    # Dedupe (user, item, day), then order by user and day.
    key = np.unique(np.stack([data.user, day, data.item], axis=1), axis=0)
    user, day, item = key[:, 0], key[:, 1], key[:, 2]
    n = len(item)
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_day = new_user | np.r_[True, day[1:] != day[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    day_start = np.maximum.accumulate(np.where(new_day, np.arange(n), 0))
    # History of event i: rows [day_start - M, day_start) that belong to the same user.
    idx = day_start[:, None] - history + np.arange(history)[None, :]
    hist = np.where(idx >= user_start[:, None], item[np.clip(idx, 0, None)], PAD)
    return Events(user, item, day, hist)


def temporal_split(data: Dataset, cut: np.datetime64 | None, history: int, max_train: int | None) -> Split:
    """Train on events before `cut` (default: the 80% time quantile), test on the rest.

    max_train keeps only the most recent training events, to bound training time; popularity
    and the seen-item set still count the whole training period.
    """
    ev = events_with_history(data, history)
    if cut is None:
        cut_day = int(np.quantile(ev.day, 0.8))
    else:
        cut_day = int(np.datetime64(cut, "D").astype(np.int64))
    is_train = ev.day < cut_day
    train_counts = np.bincount(ev.item[is_train], minlength=len(data.item_ids))
    train_idx = np.flatnonzero(is_train)
    if max_train is not None and len(train_idx) > max_train:
        train_idx = train_idx[np.argsort(ev.day[train_idx], kind="stable")[-max_train:]]
    return Split(ev.take(train_idx), ev.take(np.flatnonzero(~is_train)), train_counts > 0, train_counts, cut_day)


def popularity_slices(train_counts: np.ndarray) -> np.ndarray:
    """Per item: 0 head, 1 torso, 2 tail (Meta paper: the most popular items covering 25% of
    training impressions, the next 50%, the last 25%); -1 for items unseen in training."""
    order = np.argsort(-train_counts, kind="stable")
    share = np.cumsum(train_counts[order]) / max(train_counts.sum(), 1)
    before = share - train_counts[order] / max(train_counts.sum(), 1)  # share covered before this item
    cls = np.where(before < 0.25, 0, np.where(before < 0.75, 1, 2))
    out = np.full(len(train_counts), -1, dtype=np.int64)
    out[order] = cls
    out[train_counts == 0] = -1
    return out
