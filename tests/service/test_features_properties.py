"""Property-based tests (hypothesis) of feature_rows against the big-integer reference."""

import numpy as np
from feature_reference import reference_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from sidserve.features import FeatureConfig, Parameterization, _prefix_weights, feature_rows


@st.composite
def configs_and_codes(draw: st.DrawFn) -> tuple[FeatureConfig, np.ndarray]:
    param = draw(st.sampled_from(list(Parameterization)))
    k = draw(st.integers(2, 4096))
    levels = draw(st.integers(2 if param is not Parameterization.PREFIX_NGRAM else 1, 10))
    if param is Parameterization.BIGRAM and levels % 2:
        levels += 1
    ngram = draw(st.integers(1, levels))
    table_size = draw(st.integers(2, 2**40))
    cfg = FeatureConfig(param, codebook_size=k, levels=levels, ngram=ngram, table_size=table_size)
    batch = draw(st.integers(1, 20))
    codes = draw(st.lists(st.lists(st.integers(0, k - 1), min_size=levels, max_size=levels), min_size=batch, max_size=batch))
    return cfg, np.array(codes, dtype=np.int64)


@settings(max_examples=500, deadline=None)
@given(configs_and_codes())
def test_feature_rows_match_reference(case: tuple[FeatureConfig, np.ndarray]) -> None:
    cfg, codes = case
    rows = feature_rows(codes, cfg)
    assert rows.tolist() == [reference_rows(sid, cfg) for sid in codes.tolist()]
    assert ((rows >= 1) & (rows < cfg.table_size)).all()


@settings(max_examples=200, deadline=None)
@given(configs_and_codes(), st.data())
def test_unknown_mask_zeroes_exactly_the_unknown_items(case: tuple[FeatureConfig, np.ndarray], data: st.DataObject) -> None:
    cfg, codes = case
    known = np.array(data.draw(st.lists(st.booleans(), min_size=len(codes), max_size=len(codes))))
    rows = feature_rows(codes, cfg, known=known)
    assert (rows[~known] == 0).all()
    assert (rows[known] == feature_rows(codes, cfg)[known]).all()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_prefix_ngrams_of_huge_tables_match_reference(data: st.DataObject) -> None:
    """Tables so large that the one-product form could overflow int64 take Horner's rule: same rows."""
    int64_max = 2**63 - 1
    k = data.draw(st.integers(2, 4096))
    levels = data.draw(st.integers(2, 10))
    ngram = data.draw(st.integers(2, levels))
    modulus = data.draw(st.integers(int64_max // (ngram * k) + 2, (int64_max - k) // k))  # N K (M - 1) > int64
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=k, levels=levels, ngram=ngram, table_size=modulus + 1)
    assert _prefix_weights(k, modulus, ngram) is None  # the Horner path
    codes = np.array(data.draw(st.lists(st.lists(st.integers(0, k - 1), min_size=levels, max_size=levels), min_size=1, max_size=20)))
    assert feature_rows(codes, cfg).tolist() == [reference_rows(sid, cfg) for sid in codes.tolist()]


def test_prefix_ngrams_at_the_largest_table_of_the_one_product_form() -> None:
    k, levels = 2048, 8
    modulus = (2**63 - 1) // (levels * k) + 1  # N K (M - 1) <= int64 max, just
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=k, levels=levels, ngram=levels, table_size=modulus + 1)
    assert _prefix_weights(k, modulus, levels) is not None
    codes = np.array([[k - 1] * levels, [0] * levels, list(range(levels))])  # all-max codes: the largest sums
    assert feature_rows(codes, cfg).tolist() == [reference_rows(sid, cfg) for sid in codes.tolist()]
