"""Semantic-ID quality figures from codes and embeddings alone (numpy, no torch), so the same
report runs on the exporter's output and on codes the service computed.

Utilisation alone says little (reseeding empty clusters makes it 100% while most items crowd
into a few codes), hence perplexity and Gini next to it; cosine-by-prefix checks that the codes
carry meaning (Google, arXiv 2306.08121, Table 1: 0.41, 0.68, 0.91, 0.97 for n = 1..4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def level_usage(codes: np.ndarray, codebook_size: int) -> dict[str, float | int]:
    """Usage of one level's K codes by a column of codes."""
    counts = np.bincount(codes, minlength=codebook_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    sorted_counts = np.sort(counts)
    k = codebook_size
    # Gini over all K codes, unused ones included: 0 = perfectly even, -> 1 = all in one code.
    gini = float(((2 * np.arange(1, k + 1) - k - 1) * sorted_counts).sum() / (k * counts.sum()))
    used = int((counts > 0).sum())
    return {
        "used": used,
        "dead": k - used,
        "utilization": used / k,
        "perplexity": float(np.exp(-(p * np.log(p)).sum())),  # effective number of codes in use
        "gini": gini,
    }


def sid_stats(codes: np.ndarray) -> dict[str, float | int]:
    """How many items share each full SID."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "distinct_sids": len(counts),
        "unique_sid_fraction": float((counts == 1).sum() / len(codes)),
        "max_items_per_sid": int(counts.max()),
        "mean_items_per_sid": float(len(codes) / len(counts)),
    }


def duplicate_stats(x: np.ndarray) -> dict[str, float | int]:
    """Exact-duplicate embeddings necessarily share a SID: they cap the unique-SID fraction."""
    _, counts = np.unique(x, axis=0, return_counts=True)
    return {
        "duplicate_embeddings": int(len(x) - len(counts)),  # rows repeating an earlier row
        "max_unique_sid_fraction": float((counts == 1).sum() / len(x)),
    }


def _mean_pair_cosine(u: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Exact mean cosine over all pairs within the same group, from per-group sums of unit
    vectors: sum_{i<j in g} u_i.u_j = (||S_g||^2 - m_g) / 2. O(N D), no pair sampling."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sums = np.add.reduceat(u[order], starts, axis=0)
    m = np.diff(np.r_[starts, len(g)]).astype(np.float64)
    pairs = (m * (m - 1)).sum()
    if pairs == 0:
        return float("nan"), 0
    return float(((sums * sums).sum(1) - m).sum() / pairs), int(pairs // 2)


def prefix_cosine(x: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """Mean cosine of item pairs sharing a SID prefix of length n = 1..L, and of random pairs."""
    u = x.astype(np.float64)
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    by_prefix, n_pairs = [], []
    for n in range(1, codes.shape[1] + 1):
        groups = np.unique(codes[:, :n], axis=0, return_inverse=True)[1].reshape(-1)
        mean, pairs = _mean_pair_cosine(u, groups)
        by_prefix.append(mean)
        n_pairs.append(pairs)
    random_pairs = _mean_pair_cosine(u, np.zeros(len(u), dtype=np.int64))[0]
    return {"by_prefix": by_prefix, "pairs": n_pairs, "random": random_pairs}


def quality_report(
    x: np.ndarray,
    codes: np.ndarray,
    codebook_size: int,
    recon: dict[str, Any] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """All figures for one set of codes of the items x."""
    if len(x) != len(codes):
        raise ValueError(f"{len(x)} embeddings but {len(codes)} codes")
    return {
        "name": name,
        "n_items": len(x),
        "levels": [level_usage(codes[:, level], codebook_size) for level in range(codes.shape[1])],
        **sid_stats(codes),
        **duplicate_stats(x),
        "cosine": prefix_cosine(x, codes),
        "reconstruction": recon or {},
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """Side-by-side text table, one column per report."""
    rows: list[tuple[str, list[Any]]] = [("items", [r["n_items"] for r in reports])]
    depth = max(len(r["levels"]) for r in reports)

    def at(lst: list[Any], i: int) -> Any:
        return lst[i] if i < len(lst) else ""

    for key in ("utilization", "dead", "perplexity", "gini"):
        for i in range(depth):
            rows.append(
                (
                    f"level {i + 1} {key}",
                    [at(r["levels"], i) and r["levels"][i][key] for r in reports],
                )
            )
    for key in (
        "distinct_sids",
        "unique_sid_fraction",
        "max_unique_sid_fraction",
        "duplicate_embeddings",
        "max_items_per_sid",
        "mean_items_per_sid",
    ):
        rows.append((key, [r[key] for r in reports]))
    for key in ("recon_rel_error", "recon_rel_sq"):
        rows.append((key, [r["reconstruction"].get(key, "") for r in reports]))
    for i in range(depth):
        rows.append(
            (f"cosine, prefix n={i + 1}", [at(r["cosine"]["by_prefix"], i) for r in reports])
        )
    rows.append(("cosine, random pairs", [r["cosine"]["random"] for r in reports]))

    header = ["metric", *[r["name"] or f"#{i + 1}" for i, r in enumerate(reports)]]
    cells = [header, *[[label, *map(_fmt, vals)] for label, vals in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
