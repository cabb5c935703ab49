"""Loading and validating the exporter's inputs: an N x D float32 .npy and an item-id file.

Bad input should fail loudly at load time with a message naming the file and the problem,
never as a shape error deep inside training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

_MAX_LISTED = 5  # row indices named in an error message


class InputError(ValueError):
    """An input file is unusable; the message says which file and why."""


def validate_embeddings(x: np.ndarray, source: str = "embeddings") -> np.ndarray:
    """Check an in-memory array: float32, 2-D, non-empty, finite. Returns it C-contiguous.

    Other float dtypes are rejected rather than converted: a float64/float16 file usually means
    a different pipeline produced it, and a silent cast would also change the data fingerprint.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"{source}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(
            f"{source}: expected dtype float32, got {x.dtype}; convert explicitly, "
            "e.g. np.save(path, x.astype(np.float32))"
        )
    if x.ndim != 2:
        raise InputError(f"{source}: expected a 2-D array N x D, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{source}: empty array of shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        listed = ", ".join(str(i) for i in bad[:_MAX_LISTED])
        more = f" (and {bad.size - _MAX_LISTED} more)" if bad.size > _MAX_LISTED else ""
        raise InputError(f"{source}: {bad.size} row(s) contain NaN or Inf, rows {listed}{more}")
    return np.ascontiguousarray(x)


def load_embeddings(path: str | Path) -> np.ndarray:
    """Load and validate an N x D float32 .npy file."""
    path = Path(path)
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:  # not an .npy, truncated, or an object array
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    return validate_embeddings(x, str(path))


def load_ids(path: str | Path) -> list[str]:
    """Item ids, one per line. splitlines() because ids may contain spaces ("BANK CHARGES")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    ids = text.splitlines()
    if not ids:
        raise InputError(f"{path}: empty id file")
    empty = [i for i, s in enumerate(ids) if not s.strip()]
    if empty:
        raise InputError(
            f"{path}: blank id on line(s) {', '.join(str(i + 1) for i in empty[:_MAX_LISTED])}"
        )
    seen: dict[str, int] = {}
    dups = []
    for i, s in enumerate(ids):
        if s in seen:
            dups.append(f"{s!r} (lines {seen[s] + 1} and {i + 1})")
        seen.setdefault(s, i)
    if dups:
        raise InputError(f"{path}: {len(dups)} duplicate id(s): {', '.join(dups[:_MAX_LISTED])}")
    return ids


def load_dataset(embeddings: str | Path, ids: str | Path) -> tuple[np.ndarray, list[str]]:
    """Embeddings and ids, checked against each other (one id per row)."""
    x, id_list = load_embeddings(embeddings), load_ids(ids)
    if len(id_list) != x.shape[0]:
        raise InputError(
            f"{ids}: {len(id_list)} ids but {embeddings} has {x.shape[0]} rows; "
            "they must match one to one, in the same order"
        )
    return x, id_list


def fingerprint(x: np.ndarray) -> dict[str, int | float | str]:
    """What the bundle records about its training data: N, mean L2 norm, hash of the bytes.

    The hash is over the float32 little-endian row-major bytes, so anyone can recompute it with
    hashlib.sha256(np.ascontiguousarray(x, '<f4').tobytes()).
    """
    data = np.ascontiguousarray(x, dtype="<f4")
    return {
        "n_items": int(data.shape[0]),
        "mean_norm": float(np.linalg.norm(data.astype(np.float64), axis=1).mean()),
        "fingerprint": hashlib.sha256(data.tobytes()).hexdigest()[:16],
    }
