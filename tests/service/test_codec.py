"""codec: ID hashes independent of the rest of the request, bit-packing and ID-record round trips."""

from __future__ import annotations

import numpy as np
import pytest

from sidserve import codec
from sidserve.codec import BitPacker, IdHasher, code_bits


def test_hashes_do_not_depend_on_the_other_ids() -> None:
    h = IdHasher()
    ids = [f"item-{i:08d}" for i in range(50)]
    alone = np.vstack([h([i]) for i in ids])
    assert (h(ids) == alone).all()
    assert (h(ids + ["x" * 256]) [:50] == alone).all()  # a long ID widens the array: same hashes
    assert h([]).shape == (0, 2)


def test_trailing_nul_and_unicode_are_distinct() -> None:
    h = IdHasher()
    got = h(["a", "a\x00", "a\x00\x00", "\x00", "é", "e", "é/ü:{x}", "😀"])
    assert len({tuple(row) for row in got.tolist()}) == 8
    assert (h(["a\x00", "b"])[0] == got[1]).all()  # a NUL counts in the length whatever the other IDs


def test_hashes_follow_the_documented_formula() -> None:
    """len * k_0 + sum_j cp_j * k_j (mod 2^64) with the fixed keys: stored buckets and fingerprints
    depend on these exact values, so a faster implementation must not change them."""
    h = IdHasher()
    keys, len_keys = h._keys.tolist(), h._len_keys.tolist()
    ids = ["a", "a\x00", "\x00", "", "é/ü:{x}", "😀z", "x" * 256, "item-00012345"]
    for item_id, got in zip(ids, h(ids).tolist()):
        want = [
            (len(item_id) * len_keys[i] + sum(ord(c) * keys[j][i] for j, c in enumerate(item_id))) % 2**64
            for i in (0, 1)
        ]
        assert got == want, item_id


def test_hash_high_bits_spread_and_distinct() -> None:
    h = IdHasher()
    got = h([f"item-{i:08d}" for i in range(200_000)])
    buckets = np.bincount((got[:, 0] >> np.uint64(52)).astype(np.int64), minlength=4096)
    assert buckets.min() > 20 and buckets.max() < 80  # ~49 each
    assert len(set((got[:, 1] >> np.uint64(16)).tolist())) == 200_000


@pytest.mark.parametrize("k", [2, 3, 16, 256, 2048, 2049, 65536, 2**32])
@pytest.mark.parametrize("levels", [1, 3, 8])
def test_bit_packing_round_trip(k: int, levels: int) -> None:
    p = BitPacker(levels, k)
    assert p.bits == code_bits(k) and p.width == (levels * p.bits + 7) // 8
    codes = np.random.default_rng(k + levels).integers(0, k, size=(64, levels))
    codes[0] = k - 1
    codes[1] = 0
    blob = p.pack(codes)
    assert len(blob) == 64 * p.width
    assert (p.unpack(blob, 64) == codes).all()
    assert p.unpack(b"", 0).shape == (0, levels)
    assert p.pack(np.zeros((0, levels), dtype=np.int64)) == b""
    indexed = BitPacker(levels, k, index_bytes=4)  # values followed by 4 bytes that unpack skips
    for count in (1, 65, 1000):  # beyond the 64 values unpack's offsets table starts with
        many = np.random.default_rng(count).integers(0, k, size=(count, levels))
        for packer in (p, indexed):
            got = packer.unpack(packer.pack(many), count)
            assert got.dtype == np.int64 and got.shape == (count, levels) and (got == many).all()


def test_bit_layout_is_little_endian() -> None:
    p = BitPacker(8, 2048)
    assert p.width == 11
    blob = p.pack(np.array([[2047, 1, 2, 3, 4, 5, 6, 258]]))
    assert int.from_bytes(blob, "little") == sum(c << (11 * i) for i, c in enumerate([2047, 1, 2, 3, 4, 5, 6, 258]))
    with pytest.raises(ValueError):
        p.unpack(blob[:-1], 1)


def test_id_records_round_trip_any_characters() -> None:
    ids = ["a", "line\nbreak", "ünïcödé-商品", "x" * 256, "nul\x00inside"]
    blob = b"".join(codec.id_records(ids))
    assert codec.unpack_ids(blob) == ids
    assert codec.unpack_ids(b"") == []
    with pytest.raises(ValueError, match="truncated"):
        codec.unpack_ids(blob[:-1])
