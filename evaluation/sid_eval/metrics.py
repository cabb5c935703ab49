"""AUC and normalised entropy, overall and per item slice."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half. NaN without both classes."""
    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average rank within each run of tied scores.
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def normalized_entropy(label: np.ndarray, prob: np.ndarray) -> float:
    """Mean log loss divided by the entropy of the base rate (the Meta paper's NE): < 1 means
    better than predicting the average click-through for everyone. NaN if one class only."""
    p = float(label.mean()) if len(label) else 0.0
    if p <= 0.0 or p >= 1.0:
        return float("nan")
    q = np.clip(prob.astype(np.float64), _EPS, 1 - _EPS)
    logloss = -np.mean(label * np.log(q) + (1 - label) * np.log(1 - q))
    return float(logloss / -(p * np.log(p) + (1 - p) * np.log(1 - p)))


def slice_metrics(label: np.ndarray, prob: np.ndarray, slices: dict[str, np.ndarray]) -> dict[str, float]:
    """auc_<slice> for every slice mask, and ne_overall / ne_new where those slices exist."""
    out = {f"auc_{name}": auc(label[m], prob[m]) for name, m in slices.items()}
    for name in ("overall", "new"):
        if name in slices:
            out[f"ne_{name}"] = normalized_entropy(label[slices[name]], prob[slices[name]])
    return out
