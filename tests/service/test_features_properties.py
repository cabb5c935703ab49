"""Property-based tests (hypothesis) of feature_rows against the big-integer reference."""

import numpy as np
from feature_reference import reference_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from sidserve.features import FeatureConfig, Parameterization, feature_rows


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
