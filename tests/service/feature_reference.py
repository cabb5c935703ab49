"""A plain big-integer reference of the feature contract, written from the README formulas.

Deliberately naive (Python ints, one item at a time) so it can be checked by eye.
"""

from sidserve.features import FeatureConfig, Parameterization


def reference_tokens(sid: list[int], cfg: FeatureConfig) -> list[int]:
    """Token integers straight from the README's formulas, in Python big ints."""
    k, levels = cfg.codebook_size, cfg.levels
    match cfg.parameterization:
        case Parameterization.PREFIX_NGRAM:
            return [
                sum(k ** (n - t) * (sid[t - 1] + 1) for t in range(1, n + 1)) - 1
                for n in range(1, cfg.ngram + 1)
            ]
        case Parameterization.UNIGRAM:
            return [(l - 1) * k + sid[l - 1] for l in range(1, levels + 1)]
        case Parameterization.BIGRAM:
            return [(i - 1) * k * k + k * sid[2 * i - 2] + sid[2 * i - 1] for i in range(1, levels // 2 + 1)]
        case Parameterization.OVERLAPPING_BIGRAM:
            return [(i - 1) * k * k + k * sid[i - 1] + sid[i] for i in range(1, levels)]


def reference_rows(sid: list[int], cfg: FeatureConfig) -> list[int]:
    tokens = reference_tokens(sid, cfg)
    if cfg.vocab_size <= cfg.table_size - 1:
        return [1 + g for g in tokens]  # exact branch, written separately on purpose
    return [1 + g % (cfg.table_size - 1) for g in tokens]
