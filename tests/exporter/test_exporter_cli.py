"""sid-exporter end to end through cli.main: train -> export -> verify -> report, both methods."""

import json

import numpy as np
import pytest

from sid_exporter.cli import main
from sid_exporter.synthetic import hierarchical_clusters

SMALL = ["--levels", "3", "--codebook-size", "16", "--threads", "1"]


@pytest.fixture
def files(tmp_path):
    x, ids = hierarchical_clusters(1500, 24, seed=3)
    ids[5] = "BANK CHARGES"  # ids may contain spaces
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, str(tmp_path / "x.npy"), str(tmp_path / "ids.txt")


def test_train_export_verify_report(files, capsys):
    tmp, x, ids = files
    rqvae = ["--latent-dim", "8", "--hidden", "32", "--epochs", "8", "--batch-size", "256"]
    assert (
        main(["train", "--embeddings", x, "--ids", ids, "--out", f"{tmp}/vae.pt", *SMALL, *rqvae])
        == 0
    )
    assert (
        main(
            [
                "train",
                "--embeddings",
                x,
                "--ids",
                ids,
                "--out",
                f"{tmp}/rqk.pt",
                "--method",
                "rqkmeans",
                *SMALL,
            ]
        )
        == 0
    )
    for name in ("vae", "rqk"):
        assert main(["export", "--checkpoint", f"{tmp}/{name}.pt", "--out", f"{tmp}/{name}"]) == 0
        assert (
            main(
                [
                    "verify",
                    "--bundle",
                    f"{tmp}/{name}",
                    "--checkpoint",
                    f"{tmp}/{name}.pt",
                    "--embeddings",
                    x,
                    "--runs",
                    "5",
                    "--json",
                    f"{tmp}/verify_{name}.json",
                ]
            )
            == 0
        )
        v = json.loads((tmp / f"verify_{name}.json").read_text())
        assert v["ok"] and v["parity"]["n"] == 10_000 and v["parity"]["agree"] == 10_000
        assert v["batch_invariance"]["agree"] == v["batch_invariance"]["n"] == 20_000
        assert [lat["batch"] for lat in v["latency_cpu"]] == [1, 1024]
        assert all(lat["median_ms"] > 0 for lat in v["latency_cpu"])

    capsys.readouterr()
    assert (
        main(
            [
                "report",
                "--bundle",
                f"{tmp}/vae",
                "--bundle",
                f"{tmp}/rqk",
                "--embeddings",
                x,
                "--ids",
                ids,
                "--json",
                f"{tmp}/report.json",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "rqvae" in table.splitlines()[0] and "rqkmeans" in table.splitlines()[0]
    report = json.loads((tmp / "report.json").read_text())
    assert [b["method"] for b in report["bundles"]] == ["rqvae", "rqkmeans"]
    for b in report["bundles"]:
        assert b["n_items"] == 1500 and len(b["levels"]) == 3
        assert b["reconstruction"]["measured_on"] == "this data"
        assert b["cosine"]["by_prefix"][0] > b["cosine"]["random"]


def test_verify_refuses_a_checkpoint_of_another_model(files, capsys):
    tmp, x, ids = files
    for seed in ("1", "2"):
        main(
            [
                "train",
                "--embeddings",
                x,
                "--ids",
                ids,
                "--out",
                f"{tmp}/{seed}.pt",
                "--method",
                "rqkmeans",
                "--seed",
                seed,
                *SMALL,
            ]
        )
    main(["export", "--checkpoint", f"{tmp}/1.pt", "--out", f"{tmp}/b1"])
    assert (
        main(["verify", "--bundle", f"{tmp}/b1", "--checkpoint", f"{tmp}/2.pt", "--embeddings", x])
        == 2
    )
    assert "model_version differs" in capsys.readouterr().err


def test_bad_input_is_a_clean_error(files, capsys):
    tmp, x, _ = files
    (tmp / "short.txt").write_text("a\nb\n")
    assert (
        main(["train", "--embeddings", x, "--ids", f"{tmp}/short.txt", "--out", f"{tmp}/m.pt"]) == 2
    )
    assert "2 ids but" in capsys.readouterr().err
    np.save(tmp / "f64.npy", np.zeros((2, 3)))
    assert (
        main(
            [
                "train",
                "--embeddings",
                f"{tmp}/f64.npy",
                "--ids",
                f"{tmp}/short.txt",
                "--out",
                f"{tmp}/m.pt",
            ]
        )
        == 2
    )
    assert "expected dtype float32, got float64" in capsys.readouterr().err
    assert not (tmp / "m.pt").exists()


@pytest.mark.parametrize("command", ["train", "export", "verify", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--" in capsys.readouterr().out
