"""The features answer as JSON bytes, assembled from each item's answer pre-encoded as JSON.

An item's answer is encoded once, when it is read from Redis (`encode_answers`): a tuple of JSON
fragments, one per column of FeaturesOut's blocks: known, sid, rows and, with the collision index,
k. The per-process cache (sidserve.lookup) keeps these tuples, so answering a cached item formats
no number at all: a block is one `b",".join` per column over the items' fragments, in C.

Why: for 300 cached Zipf IDs, cache lookup + assembly + encoding took 70 us in-process against
105-120 us for the previous design (cached int64 rows joined into arrays, then orjson's numpy
encoding of ~5,000 int64), and 125-177 us against 181-192 us with a 3 ms pause before each call,
which leaves the CPU caches cold as the paced load test does (whole requests: README "Measured
figures", loadtest/bench_inproc.py). The price: ~60 B more per cached item (tracemalloc: 268
against 208 B per entry at L = 8, not counting the ID strings), and miss-heavy requests format
each miss once: 300 IDs with 240 misses took 206-211 us against 180 us (Redis not timed), with
15 misses 78 against 104 us. The shape is FeaturesOut (schemas.py), which documents it in
OpenAPI; a test checks these bytes against orjson's encoding of the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

Answer = tuple[bytes, ...]  # (known, sid, rows) or (known, sid, rows, k): JSON fragments

SID, ROWS, INDEX = 1, 2, 3  # positions in an Answer
_KNOWN_COLUMNS = ((b'{"known":[', itemgetter(0)), (b'],"sids":[', itemgetter(SID)), (b'],"rows":[', itemgetter(ROWS)))
_INDEX_COLUMN = ((b'],"collision_index":[', itemgetter(INDEX)),)


def unknown_answer(num_tokens: int, indexed: bool) -> Answer:
    """The answer of an item without a stored SID: known false, sid null, rows all 0 (the reserved row)."""
    rows = orjson.dumps([0] * num_tokens)
    return (b"false", b"null", rows, b"null") if indexed else (b"false", b"null", rows)


def encode_answers(codes: np.ndarray, rows: np.ndarray, index: np.ndarray | None) -> list[Answer]:
    """Each item's answer as known: codes int64 [n, L], rows int64 [n, num_tokens], k int64 [n] or None
    (the caller drops the answers of items Redis did not know)."""
    sids, row_lists = _row_fragments(codes), _row_fragments(rows)
    if index is None:
        return [(b"true", sid, row) for sid, row in zip(sids, row_lists)]
    ks = orjson.dumps(index, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    return [(b"true", sid, row, k) for sid, row, k in zip(sids, row_lists, ks)]


def _row_fragments(values: np.ndarray) -> list[bytes]:
    """Each row of an int64 [n, m] array as its own JSON list (b"[3,1,4]"), from one orjson pass."""
    if not len(values):
        return []
    text = orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)  # b"[[3,1,4],[1,5,9]]"
    return text[1:-1].replace(b"],[", b"]\0[").split(b"\0")  # JSON text holds no raw NUL: a safe cut


class FeaturesEncoder:
    """Writes one model version's features answers (FeaturesOut as JSON). What every answer of the
    version shares, its model_version and feature_config (and whether the collision_index columns
    are present, SIDSERVE_COLLISION_INDEX), is encoded once, not per request."""

    def __init__(self, model_version: str, feature_config: dict[str, Any], indexed: bool) -> None:
        self._head = orjson.dumps({"model_version": model_version, "feature_config": feature_config})[:-1]
        self._columns = _KNOWN_COLUMNS + _INDEX_COLUMN if indexed else _KNOWN_COLUMNS

    def encode(self, answers: list[Answer], n_candidates: int) -> bytes:
        """The first n_candidates answers are the candidates, the rest history."""
        parts = [self._head, b',"candidates":']
        _block(parts, self._columns, answers[:n_candidates])
        parts.append(b',"history":')
        _block(parts, self._columns, answers[n_candidates:])
        parts.append(b"}")
        return b"".join(parts)


def _block(parts: list[bytes], columns: tuple[tuple[bytes, Callable[[Answer], bytes]], ...], answers: list[Answer]) -> None:
    for opening, column in columns:
        parts.append(opening)
        parts.append(b",".join(map(column, answers)))
    parts.append(b"]}")
