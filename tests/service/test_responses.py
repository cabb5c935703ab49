"""The features answer assembled from pre-encoded fragments is byte for byte what orjson writes
for the same values in FeaturesOut's shape (and so what the endpoint answered before)."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sidserve.features import FeatureConfig
from sidserve.responses import FeaturesEncoder, encode_answers, unknown_answer
from sidserve.schemas import FeatureConfigOut, FeaturesOut

CONFIG = FeatureConfigOut.of(FeatureConfig("prefix_ngram", 2048, 3, 2, 1000)).model_dump()


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
def test_fragments_match_orjson_of_the_same_values(n: int, n_candidates: int, indexed: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_candidates = min(n_candidates, n)
    codes = rng.integers(0, 2048, size=(n, 3))
    rows = rng.integers(0, 2**40, size=(n, 2))  # wide values: no assumption on digit counts
    known = rng.random(n) < 0.7
    index = rng.integers(0, 5, size=n) if indexed else None
    encoded = iter(encode_answers(codes[known], rows[known], index[known] if index is not None else None))
    unknown = unknown_answer(2, indexed)
    answers = [next(encoded) if k else unknown for k in known]

    got = FeaturesEncoder("v1", CONFIG, indexed).encode(answers, n_candidates)

    c = slice(None, n_candidates)
    h = slice(n_candidates, None)
    expected = {
        "model_version": "v1", "feature_config": CONFIG,
        "candidates": _expected_block(codes[c], rows[c], known[c], index[c] if index is not None else None),
        "history": _expected_block(codes[h], rows[h], known[h], index[h] if index is not None else None),
    }  # fmt: skip
    assert got == orjson.dumps(expected)
    FeaturesOut.model_validate_json(got)  # and it is the documented shape
