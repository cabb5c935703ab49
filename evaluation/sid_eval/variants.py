"""Item representations compared by the evaluation: each maps every catalog item to a bag of
rows of one embedding table (summed by the model), or, for `content`, to its dense embedding.

Row budget: every hashed or SID variant gets the same table of H rows (H - 1 prime, about
(training items) / collision_factor, the Meta paper's setting), row 0 reserved. The unique-ID
baseline gets one row per training item instead (its budget is the point of comparison), and
`content` has no table, only a D x dim projection. SID rows come from the service's own
`feature_rows`; only the hashing and SentencePiece tokens, which the service does not serve,
are computed here.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm

from sidserve.features import FeatureConfig, Parameterization, feature_rows

TOKEN_PAD = -1  # padding inside an item's bag of rows; masked out by the model
_SPM_BASE = 0x4E00  # SentencePiece sees each (level, code) as one CJK character: one symbol, no splitting


@dataclass(frozen=True)
class Variant:
    name: str
    rows: np.ndarray | None  # int64 [n_items, T] table rows, TOKEN_PAD for padding; None = dense
    num_rows: int  # embedding-table rows (0 for dense)


def table_size(n_train_items: int, collision_factor: float) -> int:
    """H with H - 1 the smallest prime >= n_train_items / collision_factor: a prime modulus is
    coprime with any codebook size K, so the service's modulo hash spreads prefixes evenly."""
    m = max(2, int(np.ceil(n_train_items / collision_factor)))
    while any(m % p == 0 for p in range(2, int(m**0.5) + 1)):
        m += 1
    return m + 1


def hash_rows(item_ids: list[str], table: int, seed: int) -> np.ndarray:
    """Random hashing of item ids into rows 1..H-1: a stable keyed hash, a new function per seed."""
    h = [int.from_bytes(hashlib.blake2b(f"{seed}\x00{i}".encode(), digest_size=8).digest(), "little") for i in item_ids]
    return (1 + np.array(h, dtype=np.uint64) % np.uint64(table - 1)).astype(np.int64)[:, None]


def unique_rows(train_items: np.ndarray) -> np.ndarray:
    """One row per training item (1..n); every unseen item shares row 0, which no training example
    touches, so it stays at its random initialisation."""
    rows = np.zeros(len(train_items), dtype=np.int64)
    rows[train_items] = 1 + np.arange(int(train_items.sum()))
    return rows[:, None]


def sid_rows(codes: np.ndarray, codebook_size: int, param: Parameterization, ngram: int, table: int) -> np.ndarray:
    config = FeatureConfig(param, codebook_size, codes.shape[1], ngram, table)
    return feature_rows(codes, config)


def spm_rows(codes: np.ndarray, codebook_size: int, train_counts: np.ndarray, table: int) -> np.ndarray:
    """Google's SPM over SIDs: a SentencePiece model with a vocabulary of H pieces (piece id = row;
    id 0 is <unk>, i.e. the reserved row), trained on the code strings of the training events, so
    each training item weighs by its impressions as in the paper: popular items earn long pieces,
    rare ones fall back to single codes. One sentence per item gives almost no repeated
    substrings on a small catalog, and SPM then learns little beyond the single codes. BPE, not
    SPM's unigram model: on these one-character-per-code strings the unigram trainer kept only
    single characters in our trials."""
    levels = codes.shape[1]
    chars = _SPM_BASE + np.arange(levels) * codebook_size + codes
    text = ["".join(map(chr, row)) for row in chars]
    train_text = [t for t, n in zip(text, train_counts) for _ in range(n)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_text), model_writer=model, vocab_size=table, model_type="bpe",
        character_coverage=1.0, add_dummy_prefix=False, bos_id=-1, eos_id=-1, unk_id=0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, max_sentencepiece_length=levels,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    rows = np.full((len(text), levels), TOKEN_PAD, dtype=np.int64)
    for i, ids in enumerate(sp.encode(text)):
        rows[i, : len(ids)] = ids
    return rows


def build_variants(
    item_ids: list[str],
    train_counts: np.ndarray,
    codes: np.ndarray,
    codebook_size: int,
    table: int,
    seed: int,
) -> list[Variant]:
    """All variants, in report order. `seed` picks the random hash function."""
    levels = codes.shape[1]
    train_items = train_counts > 0
    hashed = hash_rows(item_ids, table, seed)
    prefix_full = sid_rows(codes, codebook_size, Parameterization.PREFIX_NGRAM, levels, table)
    out = [
        Variant("hash", hashed, table),
        Variant("unique_id", unique_rows(train_items), int(train_items.sum()) + 1),
        Variant("content", None, 0),
        Variant("sid_unigram", sid_rows(codes, codebook_size, Parameterization.UNIGRAM, levels, table), table),
    ]
    if levels % 2 == 0:  # non-overlapping bigrams need an even L
        out.append(Variant("sid_bigram", sid_rows(codes, codebook_size, Parameterization.BIGRAM, levels, table), table))
    for n in range(1, levels + 1):
        rows = sid_rows(codes, codebook_size, Parameterization.PREFIX_NGRAM, n, table)
        out.append(Variant(f"sid_prefix_n{n}", rows, table))
    out.append(Variant("sid_spm", spm_rows(codes, codebook_size, train_counts, table), table))
    out.append(Variant("sid_prefix+hash", np.concatenate([prefix_full, hashed], axis=1), table))
    return out
