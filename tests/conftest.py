"""Shared fixtures. Each block is self-contained; add new fixtures below, keep the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


# --- sid_exporter: a real small model bundle, trained once per test session -------------------
@pytest.fixture(scope="session")
def sid_bundle_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[str]]:
    """RQ-VAE (D=32, L=3, K=16) trained on 2,000 synthetic hierarchical items, exported."""
    pytest.importorskip("torch")  # the exporter extra; service-only installs skip these tests
    from sid_exporter.synthetic import build_demo_bundle

    return build_demo_bundle(tmp_path_factory.mktemp("sid_bundle"), n=2000, dim=32, levels=3, codebook_size=16)


@pytest.fixture(scope="session")
def sid_bundle(sid_bundle_build: tuple[Path, np.ndarray, list[str]]) -> Path:
    """Directory holding encoder.onnx + manifest.json (format sidserve-bundle/1)."""
    return sid_bundle_build[0]


@pytest.fixture(scope="session")
def sid_bundle_data(sid_bundle_build: tuple[Path, np.ndarray, list[str]]) -> tuple[np.ndarray, list[str]]:
    """(x float32 [2000, 32], ids) the sid_bundle model was trained on."""
    return sid_bundle_build[1], sid_bundle_build[2]
