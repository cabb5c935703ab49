"""AUC and NE against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from sid_eval.metrics import auc, normalized_entropy, slice_metrics


def brute_auc(label, score):
    pos, neg = score[label == 1], score[label == 0]
    return ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 400).astype(np.float32)
    score = rng.integers(0, 10, 400).astype(np.float32) + label  # many ties, some signal
    assert auc(label, score) == pytest.approx(brute_auc(label, score), abs=1e-12)
    assert auc(label, -score) == pytest.approx(1 - brute_auc(label, score), abs=1e-12)
    assert np.isnan(auc(np.ones(3), np.arange(3.0)))


def test_ne_is_one_for_the_base_rate_and_below_for_signal():
    label = np.array([1, 0, 0, 0] * 50, dtype=np.float32)
    assert normalized_entropy(label, np.full(200, 0.25)) == pytest.approx(1.0)
    assert normalized_entropy(label, np.where(label == 1, 0.8, 0.1)) < 0.6


def test_slice_metrics_keys():
    label = np.array([1, 0, 1, 0], dtype=np.float32)
    m = slice_metrics(label, np.array([0.9, 0.1, 0.4, 0.6]), {"overall": np.ones(4, bool), "new": np.array([0, 0, 1, 1], bool)})
    assert m == {"auc_overall": 0.75, "auc_new": 0.0, "ne_overall": pytest.approx(m["ne_overall"]), "ne_new": pytest.approx(m["ne_new"])}
