"""Input validation: bad files fail at load time with a message that says what is wrong."""

import numpy as np
import pytest

from sid_exporter.data import InputError, fingerprint, load_dataset, load_embeddings, load_ids


def write(tmp_path, x, ids=None):
    np.save(tmp_path / "x.npy", x)
    if ids is not None:
        (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / "x.npy", tmp_path / "ids.txt"


def test_valid_files_round_trip_and_ids_keep_spaces(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    ex, ip = write(tmp_path, x, ["A1", "BANK CHARGES", "C 3 "])
    got, ids = load_dataset(ex, ip)
    assert np.array_equal(got, x) and ids == ["A1", "BANK CHARGES", "C 3 "]


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_wrong_dtype_names_expected_float32(tmp_path, dtype):
    ex, _ = write(tmp_path, np.zeros((3, 4), dtype=dtype))
    with pytest.raises(InputError, match=rf"expected dtype float32, got {np.dtype(dtype)}"):
        load_embeddings(ex)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_wrong_ndim(tmp_path, shape):
    ex, _ = write(tmp_path, np.zeros(shape, dtype=np.float32))
    with pytest.raises(InputError, match=r"expected a 2-D array N x D, got shape"):
        load_embeddings(ex)


def test_empty_array(tmp_path):
    ex, _ = write(tmp_path, np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(InputError, match="empty"):
        load_embeddings(ex)


def test_nan_and_inf_rows_are_named(tmp_path):
    x = np.zeros((10, 4), dtype=np.float32)
    x[3, 1], x[7, 0] = np.nan, np.inf
    ex, _ = write(tmp_path, x)
    with pytest.raises(InputError, match=r"2 row\(s\) contain NaN or Inf, rows 3, 7"):
        load_embeddings(ex)


def test_not_an_npy_file(tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    with pytest.raises(InputError, match="not a readable .npy"):
        load_embeddings(tmp_path / "x.npy")


def test_mismatched_id_count(tmp_path):
    ex, ip = write(tmp_path, np.zeros((3, 4), dtype=np.float32), ["a", "b"])
    with pytest.raises(InputError, match=r"2 ids but .* has 3 rows"):
        load_dataset(ex, ip)


def test_duplicate_blank_and_empty_ids(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("a\nb\na\n")
    with pytest.raises(InputError, match=r"duplicate id.*'a' \(lines 1 and 3\)"):
        load_ids(p)
    p.write_text("a\n\nb\n")
    with pytest.raises(InputError, match="blank id on line"):
        load_ids(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty id file"):
        load_ids(p)


def test_fingerprint_is_hash_of_bytes():
    x = np.ones((2, 3), dtype=np.float32)
    y = x.copy()
    y[1, 2] = 1.0000001
    assert fingerprint(x)["fingerprint"] != fingerprint(y)["fingerprint"]
    assert fingerprint(x) == {
        "n_items": 2,
        "mean_norm": pytest.approx(3**0.5),
        "fingerprint": fingerprint(x.copy())["fingerprint"],
    }
