"""Tests' view of a FeatureLookup answer as arrays (the service itself only joins the fragments)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from sidserve.lookup import Lookup
from sidserve.responses import INDEX, ROWS, SID


@dataclass(frozen=True)
class Decoded:
    codes: np.ndarray  # int64 [n, L], 0 for unknown items
    rows: np.ndarray  # int64 [n, num_tokens]
    known: np.ndarray  # bool [n]
    index: np.ndarray | None  # int64 [n] with the collision index, 0 for unknown items


def decoded(found: Lookup, levels: int) -> Decoded:
    answers = found.answers
    known = np.array([a[0] == b"true" for a in answers], dtype=bool)
    assert found.unknown == int((~known).sum())
    codes = np.array([orjson.loads(a[SID]) or [0] * levels for a in answers], dtype=np.int64).reshape(len(answers), levels)
    rows = np.array([orjson.loads(a[ROWS]) for a in answers], dtype=np.int64)
    indexed = bool(answers) and len(answers[0]) > INDEX
    index = np.array([orjson.loads(a[INDEX]) or 0 for a in answers], dtype=np.int64) if indexed else None
    return Decoded(codes, rows, known, index)
