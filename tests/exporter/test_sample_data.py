"""The committed real sample (data/sample) loads, and RQ-KMeans codes on it carry meaning."""

from pathlib import Path

import pytest
import torch

from sid_exporter.data import load_dataset
from sid_exporter.report import quality_report
from sid_exporter.train import TrainConfig, train

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def test_sample_pipeline_on_real_text_embeddings():
    x, ids = load_dataset(SAMPLE / "item_embeddings.npy", SAMPLE / "item_ids.txt")
    assert x.shape == (900, 384) and len(set(ids)) == 900
    model, metrics = train(x, TrainConfig(method="rqkmeans", levels=3, codebook_size=32, threads=1))
    report = quality_report(x, model.codes(torch.from_numpy(x)).numpy(), 32, metrics)
    assert report["duplicate_embeddings"] == 4
    assert report["unique_sid_fraction"] <= report["max_unique_sid_fraction"]
    cos = report["cosine"]["by_prefix"]
    assert cos[0] > report["cosine"]["random"] + 0.15
    assert cos[0] < cos[1] < cos[2]
    assert metrics["recon_rel_sq"] == pytest.approx(report["reconstruction"]["recon_rel_sq"])
