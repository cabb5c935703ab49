"""Tests' view of a FeatureLookup answer as arrays (the service itself only joins the records)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from sidserve.lookup import Lookup


@dataclass(frozen=True)
class Decoded:
    codes: np.ndarray  # int64 [n, L], 0 for unknown items
    rows: np.ndarray  # int64 [n, num_tokens]
    known: np.ndarray  # bool [n]
    index: np.ndarray | None  # int64 [n] with the collision index, 0 for unknown items


def decoded(found: Lookup, levels: int) -> Decoded:
    # A record is its columns' JSON values, each followed by a comma: in brackets, a JSON array.
    records = [orjson.loads(b"[" + answer[:-1] + b"]") for answer in found.answers]
    known = np.array([r[0] for r in records], dtype=bool)
    assert found.unknown == int((~known).sum())
    codes = np.array([r[1] or [0] * levels for r in records], dtype=np.int64).reshape(len(records), levels)
    rows = np.array([r[2] for r in records], dtype=np.int64)
    indexed = bool(records) and len(records[0]) == 4
    index = np.array([r[3] or 0 for r in records], dtype=np.int64) if indexed else None
    return Decoded(codes, rows, known, index)
