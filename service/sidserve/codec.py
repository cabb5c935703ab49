"""Byte-level encodings of the storage layout, vectorised with numpy (no per-item Python work).

- `IdHasher`: two independent 64-bit hashes of each item ID, computed over the whole request at
  once. Part of the stored format: changing the constants or the mixing is a new layout.
- `BitPacker`: an item's L codes of b = ceil(log2 K) bits each, packed little-endian into
  ceil(L * b / 8) bytes (L = 8, K = 2048: 88 bits = 11 bytes, against 16 for uint16 codes).
- `id_records` / `unpack_ids`: item IDs as length-prefixed records, the format of the update
  notices the storage write functions publish (sidserve.notices).

storage.py decides where these bytes go in Redis; this module only turns IDs and codes into
bytes and back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MAX_ID_CHARS = 256  # schemas.MAX_ITEM_ID_BYTES: an ID has at most as many characters as bytes


class IdHasher:
    """Two 64-bit hashes of each ID, over its Unicode code points, for a whole list at once.

    Each hash is a multilinear sum  len * k_0 + sum_j cp_j * k_j  (mod 2^64) of the code points
    with fixed random odd 64-bit keys (Lemire & Kaser's multilinear family), one matrix product
    for the whole request. Zero padding (numpy's fixed-width 'U' array) adds nothing to the sum
    and the length separates "a" from "a\\x00", so the value does not depend on the other IDs of
    the request. Take the HIGH bits: for two IDs, the top t bits of a hash agree with
    probability about 2^-t over the keys; h1 and h2 use independent keys.
    Not a cryptographic hash: IDs come from authenticated writers.
    """

    def __init__(self, seed: int = 0x51D5E7) -> None:
        rng = np.random.default_rng(seed)
        keys = rng.integers(0, 2**63, size=(_MAX_ID_CHARS + 1, 2), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._keys = keys[1:]  # [256, 2]: per code-point position, for h1 and h2
        self._len_keys = keys[0]  # [2]: for the length

    def __call__(self, item_ids: Sequence[str]) -> np.ndarray:
        """uint64 [n, 2]: (h1, h2) of each ID. Use their high bits (multiply-shift: the low bits
        of a product depend only on the low bits of its factors)."""
        n = len(item_ids)
        if n == 0:
            return np.zeros((0, 2), dtype=np.uint64)
        chars = np.array(item_ids, dtype=str)
        width = chars.dtype.itemsize // 4
        if width > _MAX_ID_CHARS:
            raise ValueError(f"item IDs are at most {_MAX_ID_CHARS} characters")
        cp = chars.view(np.uint32).reshape(n, width)
        # Integer array arithmetic wraps mod 2^64 silently (numpy checks overflow only on scalars).
        h = cp @ self._keys[:width]
        h += np.fromiter(map(len, item_ids), dtype=np.uint64, count=n)[:, None] * self._len_keys
        return h


def id_records(item_ids: Sequence[str]) -> list[bytes]:
    """Each ID as one record: its UTF-8 length as 2 bytes little-endian, then the bytes. IDs may
    hold any character (no separator is safe) and have at most 256 bytes."""
    records = []
    for item_id in item_ids:
        raw = item_id.encode()
        records.append(len(raw).to_bytes(2, "little") + raw)
    return records


def unpack_ids(blob: bytes) -> list[str]:
    """The IDs of concatenated id_records; ValueError if the blob is not a whole number of records."""
    ids, pos = [], 0
    while pos < len(blob):
        end = pos + 2 + int.from_bytes(blob[pos : pos + 2], "little")
        if end > len(blob):
            raise ValueError(f"truncated ID record at byte {pos} of {len(blob)}")
        ids.append(blob[pos + 2 : end].decode())
        pos = end
    return ids


def code_bits(codebook_size: int) -> int:
    """Bits per code: ceil(log2 K), at least 1."""
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
    return max(1, (codebook_size - 1).bit_length())


class BitPacker:
    """[B, L] codes in [0, K) <-> B values of `width` bytes, codes bit-packed little-endian.

    Code l (0-based) of an item occupies bits [l*b, (l+1)*b) of the value read as one
    little-endian integer; the unused high bits of the last byte are 0.

    `index_bytes` > 0 appends an item's collision index (TIGER's disambiguating token) as that
    many little-endian bytes after the codes: `width` is then code_width + index_bytes, `pack`
    leaves the index 0 (Redis fills it in) and `unpack` ignores it (`unpack_index` reads it).
    """

    def __init__(self, levels: int, codebook_size: int, index_bytes: int = 0) -> None:
        self.levels = levels
        self.bits = code_bits(codebook_size)
        if self.bits > 32:
            raise ValueError(f"codebook_size {codebook_size} does not fit in 32 bits")
        self.code_width = (levels * self.bits + 7) // 8
        self.index_bytes = index_bytes
        self.width = self.code_width + index_bytes
        # Code l starts at bit l*b: byte l*b // 8, shift l*b % 8; 8 bytes from there hold it (b <= 32).
        offsets = np.arange(levels) * self.bits
        self._code_bytes = offsets // 8  # [L]: the byte each code starts in
        self._shift = (offsets % 8).astype(np.uint64)
        self._mask = np.uint64((1 << self.bits) - 1)
        self._starts = self._start_bytes(64)  # grown on demand: see unpack

    def pack(self, codes: np.ndarray) -> bytes:
        """[B, L] codes -> B * width bytes (value i at [i*width, (i+1)*width))."""
        codes = np.asarray(codes)
        b = codes.shape[0]
        as32 = np.ascontiguousarray(codes, dtype="<u4").reshape(b, self.levels, 1).view(np.uint8)
        bits = np.unpackbits(as32, axis=2, bitorder="little")[:, :, : self.bits]  # [B, L, b]
        flat = np.zeros((b, self.width * 8), dtype=np.uint8)
        flat[:, : self.levels * self.bits] = bits.reshape(b, self.levels * self.bits)
        return np.packbits(flat, axis=1, bitorder="little").tobytes()

    def unpack(self, blob: bytes, count: int) -> np.ndarray:
        """count * width bytes -> int64 [count, L]."""
        if len(blob) != count * self.width:
            raise ValueError(f"expected {count} values of {self.width} bytes, got {len(blob)} bytes")
        starts = self._starts
        if len(starts) < count:
            starts = self._starts = self._start_bytes(count)
        # The 8 bytes from each byte offset, as one little-endian uint64 each (an unaligned view, no
        # copy; 8 zero bytes appended so the last code's word exists), gathered at each code's start:
        # one fancy index, then shift and mask (a code of b <= 32 bits at shift <= 7 fits in 8 bytes).
        buffer = blob + bytes(8)
        at_every_byte = np.ndarray(shape=(len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
        words = at_every_byte[starts[:count]]  # [count, L]
        words >>= self._shift
        words &= self._mask
        return words.view(np.int64)  # < 2^32: the same integers

    def _start_bytes(self, count: int) -> np.ndarray:
        """[n, L] byte offsets in a blob of n >= count values of each value's codes (n a power of two)."""
        n = 1 << max(count - 1, 1).bit_length()
        return np.arange(n)[:, None] * self.width + self._code_bytes

    def unpack_index(self, blob: bytes, count: int) -> np.ndarray:
        """count * width bytes -> int64 [count]: each value's collision index."""
        values = np.frombuffer(blob, dtype=np.uint8).reshape(count, self.width)
        padded = np.zeros((count, 8), dtype=np.uint8)
        padded[:, : self.index_bytes] = values[:, self.code_width :]
        return padded.view("<u8")[:, 0].astype(np.int64)


# --- the binary embeddings body of POST /v1/items/batch --------------------------------------------
EMBEDDINGS_MEDIA_TYPE = "application/x-sidserve-embeddings"
EMBEDDINGS_MAGIC = b"SIE1"
EMBEDDINGS_FORMAT_DOC = (
    f"`Content-Type: {EMBEDDINGS_MEDIA_TYPE}`, all integers little-endian: the 4 bytes "
    f"`{EMBEDDINGS_MAGIC.decode()}`, uint32 B (items), uint32 D (floats per embedding), B x uint32 "
    "byte lengths of the item IDs, the B IDs' UTF-8 bytes back to back, then B x D float32 "
    "(row-major: item 0's D floats first). Nothing may follow. 4 x D bytes per embedding instead "
    "of ~9 x D as JSON text, and no per-float parsing."
)


class BodyError(ValueError):
    """A request body that cannot be used; `errors` are in FastAPI's validation-error shape."""

    def __init__(self, errors: list[dict[str, object]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid body")
        self.errors = errors


def encode_embeddings(item_ids: Sequence[str], embeddings: np.ndarray) -> bytes:
    """The binary body for a batch (clients/sidserve_client has its own copy of these few lines)."""
    x = np.ascontiguousarray(embeddings, dtype="<f4")
    if x.ndim != 2 or x.shape[0] != len(item_ids):
        raise ValueError(f"embeddings must be [{len(item_ids)}, D], got {x.shape}")
    encoded = [i.encode() for i in item_ids]
    header = EMBEDDINGS_MAGIC + np.array([len(encoded), x.shape[1]], dtype="<u4").tobytes()
    lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded)).tobytes()
    return b"".join((header, lengths, *encoded, x.tobytes()))


def decode_embeddings(raw: bytes, dim: int, max_items: int, max_id_bytes: int) -> tuple[list[str], np.ndarray]:
    """Item IDs and float32 [B, D] embeddings of a binary body, with the JSON body's checks.

    Raises BodyError naming every bad item (loc ["body", "items", i, field]) or the broken part.
    """

    def fail(msg: str, loc: tuple[object, ...] = ("body",), kind: str = "binary_invalid") -> BodyError:
        return BodyError([{"type": kind, "loc": loc, "msg": msg}])

    if len(raw) < 12 or raw[:4] != EMBEDDINGS_MAGIC:
        raise fail(f"not a {EMBEDDINGS_MEDIA_TYPE} body: it must start with {EMBEDDINGS_MAGIC!r}, uint32 B, uint32 D")
    count, body_dim = (int(v) for v in np.frombuffer(raw, dtype="<u4", count=2, offset=4))
    if not 1 <= count <= max_items:
        raise fail(f"a batch holds 1 to {max_items} items, this one says {count}", ("body", "items"),
                   "too_long" if count else "too_short")  # fmt: skip
    if body_dim != dim:
        raise fail(f"embeddings have D={body_dim} values, the model expects D={dim}", ("body", "items"),
                   "embedding_length")  # fmt: skip
    if len(raw) < 12 + 4 * count:
        raise fail(f"body ends inside the {count} ID lengths")
    lengths = np.frombuffer(raw, dtype="<u4", count=count, offset=12).astype(np.int64)
    ids_start = 12 + 4 * count
    floats_start = ids_start + int(lengths.sum())
    expected = floats_start + 4 * count * dim
    if len(raw) != expected:
        raise fail(f"body is {len(raw)} bytes; its header and ID lengths make {expected}")
    errors: list[dict[str, object]] = [
        {"type": "string_too_short" if n == 0 else "string_too_long", "loc": ("body", "items", i, "item_id"),
         "msg": f"item_id must be 1 to {max_id_bytes} bytes of UTF-8, got {n} bytes"}
        for i, n in enumerate(lengths.tolist()) if not 1 <= n <= max_id_bytes
    ]  # fmt: skip
    if errors:
        raise BodyError(errors)
    ends = (np.cumsum(lengths) + ids_start).tolist()
    starts = [ids_start, *ends[:-1]]
    ids: list[str] = []
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        try:
            ids.append(raw[a:b].decode())
        except UnicodeDecodeError:
            errors.append({"type": "string_unicode", "loc": ("body", "items", i, "item_id"),
                           "msg": "item_id is not valid UTF-8"})  # fmt: skip
    x = np.frombuffer(raw, dtype="<f4", count=count * dim, offset=floats_start).reshape(count, dim)
    errors += [
        {"type": "finite_number", "loc": ("body", "items", int(i), "embedding"),
         "msg": "embedding has NaN or infinite values"}
        for i in np.flatnonzero(~np.isfinite(x).all(axis=1))
    ]  # fmt: skip
    if errors:
        raise BodyError(sorted(errors, key=lambda e: e["loc"][2]))  # type: ignore[index]
    return ids, x.astype(np.float32)  # native-endian, writable copy for onnxruntime
