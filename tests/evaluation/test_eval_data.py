"""Data loading, split, histories, popularity slices and negatives on the tiny dataset."""

from __future__ import annotations

import numpy as np
import pytest

from sid_eval import dataset
from sid_eval.negatives import with_negatives
from sid_eval.split import PAD, events_with_history, popularity_slices, temporal_split


def test_load_maps_items_to_catalog_rows(tiny_dataset):
    d = dataset.load(tiny_dataset)
    assert d.embeddings.shape == (240, 16) and d.dropped == 0
    assert d.item.min() >= 0 and d.item.max() < len(d.item_ids)
    assert d.item_ids[0] == "item 0"  # ids with spaces survive


def test_history_holds_only_earlier_days_of_the_same_user(tiny_dataset):
    d = dataset.load(tiny_dataset)
    ev = events_with_history(d, history=5)
    day = d.time.astype("datetime64[D]").astype(np.int64)
    for i in np.random.default_rng(0).choice(len(ev), 200, replace=False):
        mine = (d.user == ev.user[i]) & (day < ev.day[i])
        order = np.lexsort((d.item[mine], day[mine]))
        # Deduplicated (day, item) pairs of the user's earlier days, the last 5 of them.
        pairs = np.unique(np.stack([day[mine][order], d.item[mine][order]], 1), axis=0)
        expected = pairs[-5:, 1]
        got = ev.hist[i][ev.hist[i] != PAD]
        assert np.array_equal(got, expected)


def test_split_is_temporal_and_new_items_are_unseen(tiny_dataset, cut):
    s = temporal_split(dataset.load(tiny_dataset), np.datetime64(cut), history=5, max_train=None)
    cut_day = np.datetime64(cut, "D").astype(np.int64)
    assert s.train.day.max() < cut_day <= s.test.day.min()
    assert s.train_items[s.train.item].all()
    new = ~s.train_items[s.test.item]
    assert 0 < new.mean() < 1  # the fixture releases items after the cut


def test_max_train_keeps_the_most_recent_events(tiny_dataset, cut):
    d = dataset.load(tiny_dataset)
    full = temporal_split(d, np.datetime64(cut), 5, None)
    part = temporal_split(d, np.datetime64(cut), 5, 500)
    assert len(part.train) == 500 and part.train.day.min() >= np.sort(full.train.day)[-500]
    assert np.array_equal(part.train_counts, full.train_counts)  # popularity counts the whole period


def test_popularity_slices_cover_quarter_half_quarter():
    counts = np.array([50, 30, 20, 10, 10, 8, 6, 4, 2, 1, 1, 0])
    sl = popularity_slices(counts)
    assert sl[-1] == -1  # unseen
    share = [counts[sl == c].sum() / counts.sum() for c in range(3)]
    assert sl[0] == 0 and sl[-2] == 2 and all(np.diff(sl[:-1]) >= 0)
    assert share[0] >= 0.25 and share[2] <= 0.25 + 1e-9


def test_negatives_avoid_same_day_purchases_and_match_item_mix(tiny_dataset, cut):
    s = temporal_split(dataset.load(tiny_dataset), np.datetime64(cut), 5, None)
    ex = with_negatives(s.test, n_neg=3, seed=0)
    n_pos = len(s.test)
    assert ex.label[:n_pos].all() and not ex.label[n_pos:].any()
    assert len(ex) > 3.5 * n_pos  # almost no negative dropped
    bought = set(zip(s.test.user, s.test.day, s.test.item))
    assert not any((u, d, i) in bought for u, d, i in zip(ex.user[n_pos:], ex.day[n_pos:], ex.item[n_pos:]))
    # Drawn from items bought in the same week.
    week_items = set(zip(s.test.day // 7, s.test.item))
    assert all((d // 7, i) in week_items for d, i in zip(ex.day[n_pos:], ex.item[n_pos:]))
    new = ~s.train_items[ex.item]
    assert new[ex.label == 0].mean() == pytest.approx(new[ex.label == 1].mean(), abs=0.05)
