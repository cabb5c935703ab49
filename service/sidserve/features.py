"""Semantic-ID feature indices: the one function that maps SIDs to embedding-table rows.

This module is the contract between the service and every offline consumer (training
pipelines, evaluation, tests). Import `feature_rows`; never re-implement it, or offline and
online features drift apart.

All parameterizations share one embedding table of H rows. Row 0 is reserved for unknown
items and padding; a token with integer g (its id within the parameterization's vocabulary)
goes to row 1 + (g mod (H - 1)). When the whole vocabulary fits (vocab <= H - 1) that is
simply 1 + g: exact, collision-free. Otherwise it is the Meta paper's "modulo hash".

Token integers (K = codebook size, codes c_1..c_L in [0, K)):
- prefix_ngram (Meta, arXiv 2504.02137): token n = 1..N stands for the prefix (c_1..c_n),
  g_n = sum_{t=1..n} K^(n-t) (c_t + 1) - 1  (= offset_n + prefix read in base K).
- unigram (Google, arXiv 2306.08121): token l = 1..L, g = (l - 1) K + c_l.
- bigram (Google, non-overlapping): token i = 1..L/2, g = (i - 1) K^2 + K c_{2i-1} + c_{2i}.
- overlapping_bigram (Meta): token i = 1..L-1, g = (i - 1) K^2 + K c_i + c_{i+1}.

g_n of prefix_ngram exceeds 2^64 for K = 2048, n = 6, so it is computed modulo H - 1:
b_n = sum_{t=1..n} (c_t + 1) (K^(n-t) mod (H - 1)), reduced mod (H - 1), is g_n + 1 mod (H - 1), and
all N of them are one integer matrix product; then g_n mod (H - 1) = (b_n - 1) mod (H - 1). Where
that product could overflow int64 (N K (H - 2) > 2^63 - 1: tables of more than ~5.6e14 rows at
K = 2048, N = 8) Horner's rule builds the same b_n level by level: b <- (K b + c_t + 1) mod (H - 1).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# Horner's step multiplies a residue (< H - 1) by K; keep that product inside int64.
_INT64_MAX = np.iinfo(np.int64).max


@functools.cache  # a handful of configurations per process; the array is shared read-only
def _prefix_weights(k: int, m: int, n: int) -> np.ndarray | None:
    """[n, n] int64, W[t, j] = K^(j-t) mod M for t <= j, else 0, so that prefix j's b = (c + 1) @ W[:, j]
    mod M; None when such a product could overflow int64 (n terms, each below K * M)."""
    if n * k * (m - 1) > _INT64_MAX:
        return None
    weights = np.zeros((n, n), dtype=np.int64)
    for t in range(n):
        for j in range(t, n):
            weights[t, j] = pow(k, j - t, m)
    weights.flags.writeable = False
    return weights


class Parameterization(StrEnum):
    PREFIX_NGRAM = "prefix_ngram"
    UNIGRAM = "unigram"
    BIGRAM = "bigram"
    OVERLAPPING_BIGRAM = "overlapping_bigram"


@dataclass(frozen=True)
class FeatureConfig:
    """Which tokens a deployment serves and into how many rows.

    `ngram` (N) is used by prefix_ngram only; the other parameterizations emit a fixed number
    of tokens determined by `levels` (L).
    """

    parameterization: Parameterization
    codebook_size: int  # K
    levels: int  # L, codes per SID
    ngram: int  # N, prefix-ngram tokens per item (1 <= N <= L)
    table_size: int  # H, rows of the embedding table, row 0 reserved

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameterization", Parameterization(self.parameterization))
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size (K) must be >= 2, got {self.codebook_size}")
        if self.levels < 1:
            raise ValueError(f"levels (L) must be >= 1, got {self.levels}")
        if self.table_size < 2:
            raise ValueError(f"table_size (H) must be >= 2 (row 0 is reserved), got {self.table_size}")
        if self.parameterization is Parameterization.PREFIX_NGRAM:
            if not 1 <= self.ngram <= self.levels:
                raise ValueError(f"ngram (N) must be in [1, L={self.levels}], got {self.ngram}")
            if self.codebook_size * self.modulus + self.codebook_size > _INT64_MAX:
                raise ValueError("codebook_size * (table_size - 1) must fit in int64")
        if self.parameterization is Parameterization.BIGRAM and self.levels % 2:
            raise ValueError(f"non-overlapping bigrams need an even number of levels, got L={self.levels}")
        if self.parameterization is Parameterization.OVERLAPPING_BIGRAM and self.levels < 2:
            raise ValueError("overlapping bigrams need at least 2 levels")

    @property
    def modulus(self) -> int:
        """H - 1: the number of rows available to tokens."""
        return self.table_size - 1

    @property
    def num_tokens(self) -> int:
        """Rows emitted per item."""
        match self.parameterization:
            case Parameterization.PREFIX_NGRAM:
                return self.ngram
            case Parameterization.UNIGRAM:
                return self.levels
            case Parameterization.BIGRAM:
                return self.levels // 2
            case Parameterization.OVERLAPPING_BIGRAM:
                return self.levels - 1

    @property
    def vocab_size(self) -> int:
        """Distinct token integers of the parameterization (a Python int: may exceed 2^64)."""
        k = self.codebook_size
        match self.parameterization:
            case Parameterization.PREFIX_NGRAM:
                return sum(k**n for n in range(1, self.ngram + 1))  # offset_{N+1}
            case Parameterization.UNIGRAM:
                return self.levels * k
            case Parameterization.BIGRAM:
                return self.levels // 2 * k * k
            case Parameterization.OVERLAPPING_BIGRAM:
                return (self.levels - 1) * k * k

    @property
    def exact(self) -> bool:
        """True when every token has a row of its own (no hashing collisions)."""
        return self.vocab_size <= self.modulus

    def warnings(self) -> list[str]:
        """Configuration advice to log at startup."""
        if self.exact or math.gcd(self.codebook_size, self.modulus) == 1:
            return []
        return [
            f"table_size - 1 = {self.modulus} shares a factor with codebook_size K = "
            f"{self.codebook_size}: the modulo hash then maps prefixes unevenly. "
            "Choose H - 1 coprime with K (e.g. a prime)."
        ]


def feature_rows(
    codes: np.ndarray, config: FeatureConfig, known: np.ndarray | None = None
) -> np.ndarray:
    """Embedding-table rows of each item's tokens.

    codes: integer array [B, L] of Semantic IDs (0 <= c < K).
    known: optional bool array [B]; rows of items marked False are all 0 (the reserved
        unknown/padding row), whatever their codes hold.
    Returns int64 [B, config.num_tokens], each row in [0, H).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != config.levels:
        raise ValueError(f"codes must have shape [batch, {config.levels}], got {codes.shape}")
    codes = codes.astype(np.int64, copy=False)
    k, m = config.codebook_size, config.modulus

    match config.parameterization:
        case Parameterization.PREFIX_NGRAM:
            # b_n (module docstring), then row = 1 + (b - 1) mod M, i.e. b, except b = 0 -> M.
            shifted = codes[:, : config.ngram] + 1
            weights = _prefix_weights(k, m, config.ngram)
            if weights is not None:  # one product: 3x faster than Horner for a request's misses
                rows = shifted @ weights
                np.remainder(rows, m, out=rows)
            else:  # Horner, in place: one vectorised step per level, never per item
                rows = np.empty_like(shifted)
                b = np.zeros(codes.shape[0], dtype=np.int64)
                for n in range(config.ngram):
                    np.multiply(b, k, out=b)
                    np.add(b, shifted[:, n], out=b)
                    np.remainder(b, m, out=b)
                    rows[:, n] = b
            rows[rows == 0] = m
        case Parameterization.UNIGRAM:
            tokens = np.arange(config.levels, dtype=np.int64) * k + codes
            rows = 1 + tokens % m
        case Parameterization.BIGRAM:
            pairs = np.arange(config.levels // 2, dtype=np.int64) * k * k
            tokens = pairs + k * codes[:, 0::2] + codes[:, 1::2]
            rows = 1 + tokens % m
        case Parameterization.OVERLAPPING_BIGRAM:
            pairs = np.arange(config.levels - 1, dtype=np.int64) * k * k
            tokens = pairs + k * codes[:, :-1] + codes[:, 1:]
            rows = 1 + tokens % m

    if known is not None:
        rows[~np.asarray(known, dtype=bool)] = 0
    return rows
