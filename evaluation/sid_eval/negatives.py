"""Labelled examples: each positive event plus sampled negatives that share its user history.

Negatives for an event are drawn from the positive events of the same week (so from items
someone bought that week), with probability proportional to their purchases. That matches the
item distribution of negatives to that of positives: new / head / torso / tail items are as
common among negatives as among positives, so a slice's AUC measures user-item affinity rather
than rewarding a model for scoring popular items high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .split import Events

_RESAMPLE_ROUNDS = 5  # collisions with the user's own same-day purchases are redrawn, then dropped


@dataclass(frozen=True)
class Examples:
    user: np.ndarray  # int64 [n]
    day: np.ndarray  # int64 [n]
    item: np.ndarray  # int64 [n], candidate catalog row
    hist: np.ndarray  # int64 [n, M], history catalog rows (PAD = -1)
    label: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.item)


def with_negatives(events: Events, n_neg: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    week = events.day // 7
    order = np.argsort(week, kind="stable")
    weeks, start, size = np.unique(week[order], return_index=True, return_counts=True)
    w = np.searchsorted(weeks, week)
    n_items = int(events.item.max()) + 1 if len(events) else 1
    bought = np.unique(_key(events.user, events.day, events.item, n_items))

    src = np.repeat(np.arange(len(events)), n_neg)  # the positive each negative belongs to
    neg = np.full(len(src), -1, dtype=np.int64)
    todo = np.arange(len(src))
    for _ in range(_RESAMPLE_ROUNDS):
        s = src[todo]
        pick = order[start[w[s]] + (rng.random(len(s)) * size[w[s]]).astype(np.int64)]
        neg[todo] = events.item[pick]
        clash = np.isin(_key(events.user[s], events.day[s], neg[todo], n_items), bought)
        todo = todo[clash]
        if not len(todo):
            break
    keep = np.ones(len(src), dtype=bool)
    keep[todo] = False
    src, neg = src[keep], neg[keep]
    return Examples(
        user=np.concatenate([events.user, events.user[src]]),
        day=np.concatenate([events.day, events.day[src]]),
        item=np.concatenate([events.item, neg]),
        hist=np.concatenate([events.hist, events.hist[src]]),
        label=np.concatenate([np.ones(len(events), np.float32), np.zeros(len(neg), np.float32)]),
    )


def _key(user: np.ndarray, day: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return ((user << 20) + day) * n_items + item  # day: days since 1970, < 2^20 until year 4840
