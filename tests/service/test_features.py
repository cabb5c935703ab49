"""feature_rows against a plain big-integer reference implementation of the contract."""

import numpy as np
import pytest
from feature_reference import reference_rows, reference_tokens

from sidserve.features import FeatureConfig, Parameterization, feature_rows


def test_readme_worked_example() -> None:
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=4, levels=3, ngram=3, table_size=1000)
    assert reference_tokens([2, 1, 3], cfg) == [2, 13, 59]
    assert feature_rows(np.array([[2, 1, 3]]), cfg).tolist() == [[3, 14, 60]]
    assert cfg.exact


CASES = [
    # (K, L, N, H): exact tables, hashed tables, and the production shape K=2048, L=8 where
    # g_n overflows 64 bits from n = 6 on.
    (4, 3, 3, 1000),
    (16, 3, 2, 10_000),
    (256, 4, 4, 1_000_003),
    (2048, 8, 8, 10_000_019),
    (2048, 8, 8, 2**31),  # H - 1 odd but not prime
    (2048, 8, 6, 4_194_305),  # H - 1 = K^2: shares factors with K
    (7, 5, 5, 50),
]


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize(("k", "levels", "n", "h"), CASES)
def test_matches_big_integer_reference(param: Parameterization, k: int, levels: int, n: int, h: int) -> None:
    if param is Parameterization.BIGRAM and levels % 2:
        levels += 1
    cfg = FeatureConfig(param, codebook_size=k, levels=levels, ngram=min(n, levels), table_size=h)
    rng = np.random.default_rng(k * 31 + levels)
    codes = rng.integers(0, k, size=(300, levels))
    codes[0] = k - 1  # extremes: the largest token integers
    codes[1] = 0
    rows = feature_rows(codes, cfg)
    assert rows.dtype == np.int64 and rows.shape == (300, cfg.num_tokens)
    expected = [reference_rows(sid, cfg) for sid in codes.tolist()]
    assert rows.tolist() == expected
    assert rows.min() >= 1 and rows.max() < h


def test_exact_prefix_ngrams_never_collide() -> None:
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=5, levels=3, ngram=3, table_size=1 + 5 + 25 + 125)
    assert cfg.exact
    all_sids = np.array(np.meshgrid(range(5), range(5), range(5), indexing="ij")).reshape(3, -1).T
    rows = feature_rows(all_sids, cfg)
    # every (length, prefix) pair gets its own row, and all H - 1 rows are used
    distinct = {row for column in rows.T for row in column.tolist()}
    assert distinct == set(range(1, cfg.table_size))


def test_unknown_items_map_to_row_zero() -> None:
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=4, levels=3, ngram=2, table_size=1000)
    rows = feature_rows(np.array([[2, 1, 3], [0, 0, 0]]), cfg, known=np.array([True, False]))
    assert rows.tolist() == [[3, 14], [0, 0]]


def test_rejects_bad_shapes_and_configs() -> None:
    cfg = FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=4, levels=3, ngram=3, table_size=1000)
    with pytest.raises(ValueError, match="shape"):
        feature_rows(np.zeros((2, 4), dtype=np.int64), cfg)
    with pytest.raises(ValueError, match="ngram"):
        FeatureConfig(Parameterization.PREFIX_NGRAM, codebook_size=4, levels=3, ngram=4, table_size=1000)
    with pytest.raises(ValueError, match="even"):
        FeatureConfig(Parameterization.BIGRAM, codebook_size=4, levels=3, ngram=1, table_size=1000)
    with pytest.raises(ValueError, match="table_size"):
        FeatureConfig(Parameterization.UNIGRAM, codebook_size=4, levels=3, ngram=1, table_size=1)


def test_warns_when_modulus_shares_a_factor_with_k() -> None:
    hashed = dict(parameterization=Parameterization.PREFIX_NGRAM, codebook_size=2048, levels=8, ngram=8)
    assert FeatureConfig(**hashed, table_size=2**20 + 1).warnings()  # H - 1 = 2^20
    assert not FeatureConfig(**hashed, table_size=1_000_004).warnings()  # H - 1 = 1,000,003 (prime)
