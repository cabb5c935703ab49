"""Shared fixtures. Each block is self-contained; add new fixtures below, keep the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


# --- sid_exporter: a real small model bundle, trained once per test session -------------------
@pytest.fixture(scope="session")
def sid_bundle_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """RQ-VAE (D=32, L=3, K=16) trained on 2,000 synthetic hierarchical items, exported.

    {"bundle": Path, "checkpoint": Path, "x": float32 [2000, 32], "ids": list[str]}
    """
    pytest.importorskip("torch")  # the exporter extra; service-only installs skip these tests
    from sid_exporter.synthetic import build_demo_bundle

    checkpoint = tmp_path_factory.mktemp("sid_bundle_checkpoint") / "model.pt"
    bundle, x, ids = build_demo_bundle(
        tmp_path_factory.mktemp("sid_bundle"), n=2000, dim=32, levels=3, codebook_size=16, checkpoint=checkpoint
    )
    return {"bundle": bundle, "checkpoint": checkpoint, "x": x, "ids": ids}


@pytest.fixture(scope="session")
def sid_bundle(sid_bundle_build: dict[str, Any]) -> Path:
    """Directory holding encoder.onnx + manifest.json (format sidserve-bundle/1)."""
    return sid_bundle_build["bundle"]


@pytest.fixture(scope="session")
def sid_bundle_data(sid_bundle_build: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """(x float32 [2000, 32], ids) the sid_bundle model was trained on."""
    return sid_bundle_build["x"], sid_bundle_build["ids"]


@pytest.fixture(scope="session")
def sid_bundle_checkpoint(sid_bundle_build: dict[str, Any]) -> Path:
    """The torch checkpoint sid_bundle was exported from (sid_exporter.train.load_checkpoint)."""
    return sid_bundle_build["checkpoint"]


# --- a second model bundle, another model version taking the same embeddings (model lifecycle) ---
@pytest.fixture(scope="session")
def sid_bundle_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RQ-VAE (D=32 like sid_bundle, but L=4, K=8, seed 1): another model_version, ~3 s."""
    pytest.importorskip("torch")
    from sid_exporter.synthetic import build_demo_bundle

    bundle, _, _ = build_demo_bundle(
        tmp_path_factory.mktemp("sid_bundle_b"), n=2000, dim=32, levels=4, codebook_size=8, seed=1
    )
    return bundle


# --- sidserve: a real Redis (private redis-server or REDIS_URL) and the service under uvicorn --
from redis_fixtures import redis_cluster, redis_cluster_url, redis_process, redis_url  # noqa: E402,F401  (tests/ is on sys.path)
from service_fixtures import live_service  # noqa: E402,F401
