"""The pipeline on the tiny dataset: item rows come from the service function, unseen items get
no unique-ID row, the untrained row stays untrained, and the models learn above chance."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from sid_eval import dataset
from sid_eval.model import Ranker
from sid_eval.negatives import with_negatives
from sid_eval.pipeline import EvalConfig, run
from sid_eval.split import temporal_split
from sid_eval.train import fit, torch_threads
from sid_eval.variants import build_variants, table_size
from sidserve.features import FeatureConfig, Parameterization, feature_rows

K, L = 8, 2


@pytest.fixture(scope="module")
def tiny(tiny_dataset, cut):
    d = dataset.load(tiny_dataset)
    s = temporal_split(d, np.datetime64(cut), 5, None)
    codes = np.random.default_rng(0).integers(0, K, (len(d.item_ids), L))
    h = table_size(int(s.train_items.sum()), 5.0)
    variants = {v.name: v for v in build_variants(d.item_ids, s.train_counts, codes, K, h, seed=0)}
    return SimpleNamespace(data=d, split=s, codes=codes, table=h, variants=variants)


def test_table_size_is_prime_plus_one_at_the_collision_factor():
    assert table_size(4407, 5.0) == 884  # 883 is the first prime >= 881.4
    assert table_size(10, 5.0) == 3


def test_sid_rows_are_the_service_function(tiny):
    codes, h, variants = tiny.codes, tiny.table, tiny.variants
    for name, param, n in [("sid_unigram", "unigram", L), ("sid_bigram", "bigram", L),
                           ("sid_prefix_n1", "prefix_ngram", 1), ("sid_prefix_n2", "prefix_ngram", 2)]:  # fmt: skip
        expected = feature_rows(codes, FeatureConfig(Parameterization(param), K, L, n, h))
        assert np.array_equal(variants[name].rows, expected), name
    mix = variants["sid_prefix+hash"].rows
    assert np.array_equal(mix[:, :L], variants["sid_prefix_n2"].rows)
    assert np.array_equal(mix[:, L:], variants["hash"].rows)


def test_every_table_variant_stays_inside_its_budget(tiny):
    h, variants = tiny.table, tiny.variants
    for v in variants.values():
        if v.rows is None:
            continue
        assert v.rows.max() < v.num_rows
        assert v.num_rows == h or v.name == "unique_id"


def test_unseen_items_get_no_unique_id_row(tiny):
    s, variants = tiny.split, tiny.variants
    rows = variants["unique_id"].rows[:, 0]
    assert (rows[~s.train_items] == 0).all()
    assert len(np.unique(rows[s.train_items])) == s.train_items.sum() and rows[s.train_items].min() == 1


def test_spm_pieces_partition_each_sid(tiny):
    rows = tiny.variants["sid_spm"].rows
    n = (rows >= 0).sum(1)
    assert (n >= 1).all() and (n <= L).all()
    assert rows.max() < tiny.table


def test_shared_unseen_row_stays_untrained(tiny):
    d, s, variants = tiny.data, tiny.split, tiny.variants
    model = Ranker(variants["unique_id"], d.embeddings, dim=8)
    before = model.table.weight[0].detach().clone()
    with torch_threads(1):
        fit(model, with_negatives(s.train, 1, 0), epochs=1, batch_size=256, lr=1e-2, seed=0)
    assert np.array_equal(model.table.weight[0].detach().numpy(), before.numpy())


def test_end_to_end_learns_above_chance(tiny_dataset, cut, tmp_path):
    config = EvalConfig(
        cut=cut, history=5, max_train=None, seeds=(0, 1), levels=L, codebook_size=K, rqvae_steps=60,
        dim=8, epochs=3, batch_size=256, lr=1e-2, threads=1,
        variants=("hash", "unique_id", "content", "sid_prefix_n2", "sid_spm"),
    )  # fmt: skip
    result = run(tiny_dataset, tmp_path, config, log=lambda *_: None)
    runs = result["runs"]
    assert set(runs) == set(config.variants) and all(len(r) == 2 for r in runs.values())
    mean = {name: np.mean([r["auc_overall"] for r in rs]) for name, rs in runs.items()}
    assert min(mean.values()) > 0.55, mean  # users buy from their favourite clusters: learnable
    assert mean["sid_prefix_n2"] > mean["hash"] + 0.1, mean  # SID collisions are semantic, hashing's random
    # Content-derived representations generalise to items released after the cut; ids cannot.
    new = {name: np.mean([r["auc_new"] for r in rs]) for name, rs in runs.items()}
    assert new["content"] > 0.7 and new["sid_prefix_n2"] > 0.7 and new["sid_spm"] > 0.7, new
    assert new["unique_id"] < 0.6 and new["hash"] < 0.6, new
    for f in ("results.md", "results.json", "auc_by_slice.png", "sid_quality.txt", "bundle/manifest.json"):
        assert (tmp_path / f).exists(), f
    assert "| sid_prefix_n2 |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["info"]["new_test_items"] > 0
