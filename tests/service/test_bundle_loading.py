"""Loading and verifying model bundles; settings and the console script."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sidserve.cli import _parser
from sidserve.features import Parameterization
from sidserve.model import BundleError, SidModel
from sidserve.settings import Settings


@pytest.fixture
def bundle_copy(sid_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sid_bundle, tmp_path / "bundle"))


def test_load_and_encode_like_onnxruntime(sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]]) -> None:
    x, _ = sid_bundle_data
    model = SidModel.load(sid_bundle)
    assert (model.input_dim, model.levels, model.codebook_size, len(model.version)) == (32, 3, 16, 16)
    direct = ort.InferenceSession(str(sid_bundle / "encoder.onnx")).run(None, {"embeddings": x})[0]
    assert np.array_equal(model.encode(x), direct)
    assert model.encode(x[:0]).shape == (0, 3)


def test_sha256_mismatch_is_refused(bundle_copy: Path) -> None:
    onnx = bundle_copy / "encoder.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256 .* does not match the manifest"):
        SidModel.load(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="other/1"), "format 'other/1'"),
        (lambda m: m.pop("onnx_sha256"), r"missing fields \['onnx_sha256'\]"),
        (lambda m: m.update(input_dim=33), "disagree with the manifest's input_dim=33"),
        (lambda m: m.update(onnx_output="sid"), "the manifest declares"),
        (lambda m: m.update(onnx_file="nope.onnx"), "'nope.onnx', which is missing"),
    ],
)
def test_inconsistent_manifest_is_refused(bundle_copy: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        SidModel.load(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest.json"):
        SidModel.load(tmp_path)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.parameterization, defaults.ngram, defaults.table_size) == (Parameterization.PREFIX_NGRAM, None, 1_000_004)
    assert (defaults.onnx_intra_op_threads, defaults.onnx_spinning) == (1, False)
    monkeypatch.setenv("SIDSERVE_REDIS_URL", "redis://example:6380/1")
    monkeypatch.setenv("SIDSERVE_PARAMETERIZATION", "unigram")
    monkeypatch.setenv("SIDSERVE_TABLE_SIZE", "5000")
    monkeypatch.setenv("SIDSERVE_ONNX_SPINNING", "true")
    s = Settings()
    assert (s.redis_url, s.parameterization, s.table_size, s.onnx_spinning) == (
        "redis://example:6380/1", Parameterization.UNIGRAM, 5000, True
    )


def test_cli_offers_every_setting_with_its_env_var() -> None:
    help_text = _parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text
        assert "SIDSERVE_" + name.upper() in help_text
