"""The features answer assembled from fixed-width records parses to exactly what orjson writes for
the same values in FeaturesOut's shape (the bytes differ only by whitespace between elements)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidserve.features import FeatureConfig
from sidserve.responses import SID, AnswerLayout, FeaturesEncoder
from sidserve.schemas import FeatureConfigOut, FeaturesOut

K, L, N, H = 2048, 3, 2, 1000
CONFIG = FeatureConfigOut.of(FeatureConfig("prefix_ngram", K, L, N, H)).model_dump()


def _expected_block(codes: np.ndarray, rows: np.ndarray, known: np.ndarray, index: np.ndarray | None) -> dict:
    block = {
        "known": known.tolist(),
        "sids": [c.tolist() if k else None for c, k in zip(codes, known)],
        "rows": [r.tolist() if k else [0] * rows.shape[1] for r, k in zip(rows, known)],
    }
    if index is not None:
        block["collision_index"] = [int(i) if k else None for i, k in zip(index, known)]
    return block


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 12), n_candidates=st.integers(0, 12), indexed=st.booleans(), seed=st.integers(0, 2**32 - 1),
)
def test_records_parse_to_orjson_of_the_same_values(n: int, n_candidates: int, indexed: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_candidates = min(n_candidates, n)
    codes = rng.integers(0, K, size=(n, L))
    rows = rng.integers(0, H, size=(n, N))
    index = rng.integers(0, 5, size=n) if indexed else None
    if n:  # the widest values each column must hold, and the narrowest
        codes[0], rows[0], codes[-1], rows[-1] = K - 1, H - 1, 0, 0
        if index is not None:
            index[0] = 2**32 - 1
    known = rng.random(n) < 0.7
    layout = AnswerLayout(L, K, N, H, indexed)
    encoded = iter(layout.records(codes[known], rows[known], index[known] if index is not None else None))
    answers = [next(encoded) if k else layout.unknown for k in known]

    got = FeaturesEncoder("v1", CONFIG, layout).encode(answers, n_candidates)

    c = slice(None, n_candidates)
    h = slice(n_candidates, None)
    expected = {
        "model_version": "v1", "feature_config": CONFIG,
        "candidates": _expected_block(codes[c], rows[c], known[c], index[c] if index is not None else None),
        "history": _expected_block(codes[h], rows[h], known[h], index[h] if index is not None else None),
    }  # fmt: skip
    assert orjson.loads(got) == expected
    FeaturesOut.model_validate_json(got)  # and it is the documented shape


def test_a_record_column_reads_back_as_plain_json() -> None:
    layout = AnswerLayout(L, K, N, H, indexed=False)
    [record] = layout.records(np.array([[2047, 0, 9]]), np.array([[999, 1]]), None)
    assert len(record) == layout.width
    assert layout.value(record, SID) == b"[2047,0,9]" and layout.value(layout.unknown, SID) == b"null"


def test_a_value_wider_than_the_layout_is_refused() -> None:
    layout = AnswerLayout(L, K, N, H, indexed=False)
    with pytest.raises(ValueError, match="exceeds the record layout"):
        layout.records(np.array([[0, 0, 0]]), np.array([[H * 10, H * 10]]), None)  # row indexes beyond H
