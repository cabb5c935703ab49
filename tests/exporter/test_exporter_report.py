"""report.py figures against hand-computed values and brute force."""

import numpy as np
import pytest

from sid_exporter.report import (
    duplicate_stats,
    format_table,
    level_usage,
    prefix_cosine,
    quality_report,
    sid_stats,
)


def test_level_usage_even_and_collapsed():
    even = level_usage(np.repeat(np.arange(8), 5), 8)
    assert even == {
        "used": 8,
        "dead": 0,
        "utilization": 1.0,
        "perplexity": pytest.approx(8),
        "gini": pytest.approx(0),
    }
    collapsed = level_usage(np.zeros(40, dtype=np.int64), 8)
    assert collapsed["used"] == 1 and collapsed["dead"] == 7
    assert collapsed["perplexity"] == pytest.approx(1) and collapsed["gini"] == pytest.approx(7 / 8)
    # Full utilisation but crowded: perplexity and Gini expose it.
    crowded = level_usage(np.r_[np.zeros(93, dtype=np.int64), np.arange(1, 8)], 8)
    assert crowded["utilization"] == 1.0 and crowded["perplexity"] < 2 and crowded["gini"] > 0.7


def test_sid_and_duplicate_stats():
    codes = np.array([[0, 1], [0, 1], [0, 2], [3, 1]])
    assert sid_stats(codes) == {
        "distinct_sids": 3,
        "unique_sid_fraction": 0.5,
        "max_items_per_sid": 2,
        "mean_items_per_sid": pytest.approx(4 / 3),
    }
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert duplicate_stats(x) == {"duplicate_embeddings": 2, "max_unique_sid_fraction": 0.25}


def test_prefix_cosine_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    codes = rng.integers(0, 3, size=(60, 2))
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    cos = u @ u.T
    iu = np.triu_indices(60, 1)
    got = prefix_cosine(x, codes)
    for n in (1, 2):
        same = (codes[:, None, :n] == codes[None, :, :n]).all(-1)[iu]
        assert got["by_prefix"][n - 1] == pytest.approx(cos[iu][same].mean())
        assert got["pairs"][n - 1] == same.sum()
    assert got["random"] == pytest.approx(cos[iu].mean())


def test_table_lists_every_report_side_by_side():
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    codes = np.random.default_rng(2).integers(0, 4, size=(30, 3))
    reports = [quality_report(x, codes, 4, name="A"), quality_report(x, codes[:, :2], 4, name="B")]
    table = format_table(reports)
    assert table.splitlines()[0].split() == ["metric", "A", "B"]
    assert "cosine, prefix n=3" in table and "level 3 gini" in table
