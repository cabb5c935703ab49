"""The features answer as JSON bytes, assembled from each item's answer pre-encoded as one record.

An item's answer is encoded once, when it is read from Redis (`AnswerLayout.records`), as one
bytes object of fixed width: one JSON fragment per column of FeaturesOut's blocks (known, sid,
rows and, with the collision index, k), each padded with spaces to its column's width and
followed by a comma. JSON allows whitespace between array elements, so a block is the records
joined, viewed as an [n, width] byte table, and each column one slice of that table:

    record  b'true ,[3,1,4]   ,[17,905]  ,'     (known, sid, rows; widths from K, L, N and H)
    column  b'[3,1,4]   ,[2047,0,9],[5,5,5]   '  -> "sids":[[3,1,4]   ,[2047,0,9],[5,5,5]   ]

The per-process cache (sidserve.lookup) keeps these records, so answering a cached item costs one
dict lookup and its share of one join: no number formatting, no per-item object but the record.

Why one bytes object per item, not a tuple of fragments (the previous design):
- CPython's cyclic GC never tracks a dict whose keys and values are str and bytes, so no
  collection walks the cache. A 200k-entry dict of tuples made each full collection take 5.4 ms
  (a synthetic test with cold CPU caches), against 0.0 ms for the same dict of bytes records.
- encoding a 300-ID answer is one join and a few slices per block: 18.6 / 23.9 us in-process
  (warm / paced) against 43.2 / 55.9 us for three joins over tuples; and an entry takes ~90 B
  less (RSS over 200k entries: 264 against 355 B).
The price: padding. A 300-ID answer at K = 2048, L = 8, H = 1,000,004 is 34.3 KB instead of
30.1 KB (each row index is padded to the 7 digits of H - 1; most take 6). The shape is FeaturesOut (schemas.py), which documents
it in OpenAPI; a test checks that the answer parses to exactly what orjson writes for the same
values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

Answer = bytes  # one item's record (AnswerLayout)

KNOWN, SID, ROWS, INDEX = 0, 1, 2, 3  # columns of a record
_OPENINGS = (b'{"known":[', b'],"sids":[', b'],"rows":[', b'],"collision_index":[')
_UINT32_DIGITS = len(str(2**32 - 1))  # the collision index k is a uint32 (storage.INDEX_BYTES)


def _list_width(count: int, largest: int) -> int:
    """Characters of the longest JSON list of `count` integers in [0, largest]."""
    return 2 + count * len(str(largest)) + count - 1


class AnswerLayout:
    """The record format of one model version's answers: column widths from K, L, the number of
    feature tokens and H (and k's 10 digits when the collision index is served)."""

    def __init__(self, levels: int, codebook_size: int, num_tokens: int, table_size: int, indexed: bool) -> None:
        self.indexed = indexed
        widths = [len(b"false"), _list_width(levels, codebook_size - 1), _list_width(num_tokens, table_size - 1)]
        if indexed:
            widths.append(_UINT32_DIGITS)
        self._format = b"".join(b"%%-%ds," % w for w in widths)  # b"%-5s,%-41s,%-65s,"
        self.width = sum(widths) + len(widths)
        bounds = np.cumsum([0] + [w + 1 for w in widths]).tolist()
        self.spans = tuple(zip(bounds[:-1], bounds[1:]))  # each column's [start, stop) in a record
        unknown = (b"false", b"null", orjson.dumps([0] * num_tokens)) + ((b"null",) if indexed else ())
        self.unknown: Answer = self._format % unknown  # sid null, rows all 0 (the reserved row)

    def records(self, codes: np.ndarray, rows: np.ndarray, index: np.ndarray | None) -> list[Answer]:
        """Each known item's record: codes int64 [n, L], rows int64 [n, num_tokens], k int64 [n]
        or None (the caller drops the records of items Redis did not know)."""
        sids, row_lists, fmt = _row_fragments(codes), _row_fragments(rows), self._format
        if index is None:
            out = [fmt % (b"true", sid, row) for sid, row in zip(sids, row_lists)]
        else:
            ks = orjson.dumps(index, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
            out = [fmt % (b"true", sid, row, k) for sid, row, k in zip(sids, row_lists, ks)]
        if sum(map(len, out)) != len(out) * self.width:  # a value wider than its column: never served misaligned
            raise ValueError(f"a code, row or k exceeds the record layout (K, L, H) of width {self.width}")
        return out

    def value(self, answer: Answer, column: int) -> bytes:
        """One column of a record as plain JSON text (b"[3,1,4]", b"null")."""
        start, stop = self.spans[column]
        return answer[start : stop - 1].rstrip()


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

    def __init__(self, model_version: str, feature_config: dict[str, Any], layout: AnswerLayout) -> None:
        self._head = orjson.dumps({"model_version": model_version, "feature_config": feature_config})[:-1]
        self._width = layout.width
        self._columns = tuple(zip(_OPENINGS, layout.spans))

    def encode(self, answers: list[Answer], n_candidates: int) -> bytes:
        """The first n_candidates answers are the candidates, the rest history."""
        parts = [self._head, b',"candidates":']
        self._block(parts, answers[:n_candidates])
        parts.append(b',"history":')
        self._block(parts, answers[n_candidates:])
        parts.append(b"}")
        return b"".join(parts)

    def _block(self, parts: list[bytes], answers: list[Answer]) -> None:
        table = np.frombuffer(b"".join(answers), dtype=np.uint8).reshape(len(answers), self._width)
        for opening, (start, stop) in self._columns:
            parts.append(opening)
            parts.append(table[:, start:stop].tobytes()[:-1])  # without the last item's comma
        parts.append(b"]}")
