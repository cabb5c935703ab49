"""Proof that the exported graph computes the model's codes: torch vs onnxruntime on the same
inputs, plus onnxruntime CPU latency. torch.codes() and the graph share one formulation
(export.py), so any disagreement is a bug to explain, never noise to tolerate.

An item's codes are those of its row computed alone: the service encodes one item per single
upload and many per batch, and an item must get the same SID either way. So the graph must be
batch-invariant (checked below), and torch's reference for a row is the row alone. torch's
batched float32 matmul is not batch-invariant: on an exact tie (a codebook holding the same
vector twice, which dead-code resets can leave) or a near-tie it can pick the other code when
the row runs inside a batch. Running 10,000s of rows one at a time through torch is slow, so the
batch is a fast path: a row whose batched codes already match the graph's agrees, and only the
others are recomputed alone."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .bundle import Bundle
from .rqvae import RQVAE


def pad_with_jitter(x: np.ndarray, n: int, seed: int = 0, scale: float = 0.02) -> np.ndarray:
    """At least n rows: x itself, then jittered copies of its rows (noise relative to each row's
    norm), so small corpora still give a large parity sample near the real distribution."""
    if len(x) >= n:
        return x
    rng = np.random.default_rng(seed)
    rows = x[rng.integers(0, len(x), n - len(x))]
    noise = (
        rng.normal(size=rows.shape)
        * scale
        * np.linalg.norm(rows, axis=1, keepdims=True)
        / np.sqrt(x.shape[1])
    )
    return np.concatenate([x, (rows + noise).astype(np.float32)])


def boundary_inputs(model: RQVAE, x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Inputs on decision boundaries, where rounding would show: for an identity encoder the exact
    midpoints of two level-1 codewords (mathematical ties); otherwise interpolations between
    random item pairs, which cross many cells' boundaries."""
    rng = np.random.default_rng(seed)
    if model.hparams["identity"]:
        cb = model.quantizer.codebooks[0].detach().cpu().numpy()
        a, b = rng.integers(0, len(cb), n), rng.integers(0, len(cb), n)
        return ((cb[a] + cb[b]) / 2).astype(np.float32)
    i, j = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
    t = rng.random((n, 1), dtype=np.float32)
    return (x[i] * t + x[j] * (1 - t)).astype(np.float32)


def _differing_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((a != b).any(axis=1))


def agreement(model: RQVAE, bundle: Bundle, x: np.ndarray) -> dict[str, Any]:
    """Rows whose graph codes equal torch's for the row alone (see the module docstring)."""
    theirs = bundle.codes(x)
    model = model.cpu().eval()
    batched = model.codes(torch.from_numpy(x)).numpy()
    recheck = _differing_rows(batched, theirs)
    alone = np.array(
        [model.codes(torch.from_numpy(x[i : i + 1]))[0].numpy() for i in recheck],
        dtype=np.int64,
    ).reshape(len(recheck), batched.shape[1])
    differ = recheck[_differing_rows(alone, theirs[recheck])]
    return {
        "n": len(x),
        "agree": int(len(x) - differ.size),
        "agreement": float(1 - differ.size / max(len(x), 1)),
        "first_differing_rows": differ[:10].tolist(),
        # Rows torch codes differently inside the batch than alone: its batch dependence, not
        # the graph's; reported so a change in it is visible.
        "torch_batch_dependent_rows": int(recheck.size - differ.size),
    }


def batch_invariance(bundle: Bundle, x: np.ndarray) -> dict[str, Any]:
    """Rows whose graph codes are the same in one batch of all of x and alone (batch 1)."""
    name = bundle.manifest["onnx_input"]
    batched = bundle.codes(x, batch_size=max(len(x), 1))
    alone = np.concatenate(
        [bundle.session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]
    )
    differ = _differing_rows(batched, alone)
    return {
        "n": len(x),
        "agree": int(len(x) - differ.size),
        "first_differing_rows": differ[:10].tolist(),
    }


def latency(bundle: Bundle, x: np.ndarray, batch: int, runs: int) -> dict[str, float]:
    """Median and p99 wall time (ms) of session.run on `batch` rows, after warm-up runs."""
    feed = {bundle.manifest["onnx_input"]: pad_with_jitter(x, batch)[:batch]}
    for _ in range(5):
        bundle.session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        bundle.session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return {
        "batch": batch,
        "runs": runs,
        "median_ms": float(np.median(times)),
        "p99_ms": float(np.percentile(times, 99)),
    }


def verify(
    model: RQVAE,
    bundle: Bundle,
    x: np.ndarray,
    n: int = 10_000,
    seed: int = 0,
    latency_runs: tuple[int, int] = (500, 50),
) -> dict[str, Any]:
    """Parity on >= n real(-ish) embeddings and on n boundary inputs, the graph's batch
    invariance on both; ORT latency at batch 1 and 1024."""
    sample, boundary = pad_with_jitter(x, n, seed), boundary_inputs(model, x, n, seed)
    result = {
        "model_version": bundle.manifest["model_version"],
        "parity": agreement(model, bundle, sample),
        "parity_boundary": agreement(model, bundle, boundary),
        "batch_invariance": batch_invariance(bundle, np.concatenate([sample, boundary])),
        "latency_cpu": [
            latency(bundle, x, 1, latency_runs[0]),
            latency(bundle, x, 1024, latency_runs[1]),
        ],
        "ort_threads": bundle.session.get_session_options().intra_op_num_threads,
    }
    result["ok"] = all(
        result[key]["agree"] == result[key]["n"]
        for key in ("parity", "parity_boundary", "batch_invariance")
    )
    return result
