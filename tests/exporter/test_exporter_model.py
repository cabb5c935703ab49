"""Properties of trained models and their bundles: utilisation, parity, meaning, determinism."""

import json

import numpy as np
import pytest
import torch

from sid_exporter.bundle import load_bundle
from sid_exporter.export import export_bundle, model_version
from sid_exporter.report import quality_report
from sid_exporter.synthetic import hierarchical_clusters
from sid_exporter.train import TrainConfig, load_checkpoint, train
from sid_exporter.verify import agreement, boundary_inputs, pad_with_jitter

TINY = {
    "levels": 3,
    "codebook_size": 16,
    "latent_dim": 16,
    "hidden": (64, 32),
    "batch_size": 256,
    "device": "cpu",
    "threads": 1,
}


@pytest.fixture(scope="module")
def data():
    return hierarchical_clusters(2000, 32, seed=0)[0]


@pytest.fixture(scope="module")
def rqkmeans(data, tmp_path_factory):
    model, metrics = train(data, TrainConfig(method="rqkmeans", **TINY))
    return model, export_bundle(model, tmp_path_factory.mktemp("rqk"), data, metrics)


def test_rqvae_bundle_uses_codebooks_and_codes_carry_meaning(sid_bundle, sid_bundle_data):
    x, _ = sid_bundle_data
    bundle = load_bundle(sid_bundle)
    report = quality_report(x, bundle.codes(x), 16)
    for level in report["levels"]:
        assert (
            level["utilization"] >= 0.75 and level["perplexity"] >= 6
        )  # no collapse onto a few codes
    cos = report["cosine"]["by_prefix"]
    assert cos[0] > report["cosine"]["random"] + 0.3
    assert cos[0] < cos[1] < cos[2]  # longer shared prefix => more similar items
    assert bundle.manifest["training_metrics"]["recon_rel_error"] < 0.6


def test_rqvae_torch_onnx_parity(sid_bundle, sid_bundle_data, sid_bundle_checkpoint):
    x, _ = sid_bundle_data
    model, _, _ = load_checkpoint(sid_bundle_checkpoint)
    bundle = load_bundle(sid_bundle)
    assert model_version(model) == bundle.manifest["model_version"]
    for sample in (pad_with_jitter(x, 10_000), boundary_inputs(model, x, 5_000)):
        result = agreement(model, bundle, sample)
        assert result["agree"] == result["n"], result


def test_rqkmeans_exports_same_format_and_agrees_on_ties(rqkmeans, sid_bundle, data):
    model, path = rqkmeans
    manifest = json.loads((path / "manifest.json").read_text())
    reference = json.loads((sid_bundle / "manifest.json").read_text())
    assert manifest["method"] == "rqkmeans" and manifest["latent_dim"] == 32
    assert set(manifest) == set(reference)
    assert {
        k: manifest[k]
        for k in ("format", "onnx_input", "onnx_output", "opset", "levels", "codebook_size")
    } == {
        k: reference[k]
        for k in ("format", "onnx_input", "onnx_output", "opset", "levels", "codebook_size")
    }
    bundle = load_bundle(path)
    # Exact midpoints of codeword pairs are mathematical ties; float32 distances split them
    # differently in torch and onnxruntime, the float64 graph must not.
    result = agreement(model, bundle, boundary_inputs(model, data, 10_000))
    assert result["agree"] == result["n"], result
    assert all(
        level["utilization"] == 1.0
        for level in quality_report(data, bundle.codes(data), 16)["levels"]
    )


def test_rqkmeans_reconstructs_better_than_its_first_level(rqkmeans, data):
    model, _ = rqkmeans
    x = torch.from_numpy(data)
    first = model.quantizer.codebooks[0][model.codes(x)[:, 0]]
    assert (x - model.reconstruct(x)).pow(2).sum() < 0.5 * (x - first).pow(2).sum()


def test_balanced_rqkmeans_equalises_cluster_sizes(data):
    from sid_exporter.kmeans import _balanced_assign, kmeans

    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(data)
    centres = kmeans(x, 16, gen, iters=5, balanced=True)
    sizes = torch.bincount(_balanced_assign(x, centres, gen), minlength=16)
    assert sizes.tolist() == [125] * 16  # 2000 / 16: every cluster takes exactly its share


def test_determinism_and_version_is_a_content_hash(data, tmp_path):
    config = TrainConfig(epochs=3, seed=7, **TINY)
    a, _ = train(data, config)
    b, _ = train(data, config)
    c, _ = train(data, TrainConfig(epochs=3, seed=8, **TINY))
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert model_version(a) == model_version(b) != model_version(c)
    pa = export_bundle(a, tmp_path / "a", data, {})
    pb = export_bundle(b, tmp_path / "b", data, {})
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (pa, pb))
    assert ma["onnx_sha256"] == mb["onnx_sha256"] and ma["model_version"] == mb["model_version"]
    with torch.no_grad():
        a.quantizer.codebooks[0, 0, 0] += 1e-3
    assert model_version(a) != model_version(b)


def test_training_rejects_bad_input():
    from sid_exporter.data import InputError

    x = np.zeros((10, 4), dtype=np.float32)
    x[2, 0] = np.nan
    with pytest.raises(InputError, match="rows 2"):
        train(x, TrainConfig(**TINY))
