"""What the requests carry: item IDs, popularity (Zipf or uniform), request bodies.

Corpus item i has ID `item_id(i)` (13 bytes). Popularity ranks are shuffled over the corpus
(seeded), so the most requested items are spread over the ID space as in real traffic.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import orjson

from sidserve import codec

from .rawhttp import encode_request


def item_id(i: int) -> str:
    return f"item-{i:08d}"


class KeySampler:
    """Item indices in [0, n): Zipf (P(rank r) ~ 1 / r^s) or uniform."""

    def __init__(self, n: int, dist: str = "zipf", s: float = 1.0, seed: int = 0) -> None:
        if n < 1:
            raise ValueError("need n >= 1 items")
        if dist not in ("zipf", "uniform"):
            raise ValueError(f"unknown popularity {dist!r} (zipf, uniform)")
        self.n, self.dist, self.s = n, dist, s
        self.rng = np.random.default_rng(seed)
        if dist == "zipf":
            w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
            self.cdf = np.cumsum(w)
            self.cdf /= self.cdf[-1]
            self.perm = np.random.default_rng(seed + 1).permutation(n)

    def sample(self, k: int) -> np.ndarray:
        if self.dist == "uniform":
            return self.rng.integers(0, self.n, size=k)
        ranks = np.searchsorted(self.cdf, self.rng.random(k), side="right")
        return self.perm[np.minimum(ranks, self.n - 1)]

    def top_share(self, top: int) -> float:
        """Share of requests that go to the `top` most popular items."""
        if self.dist == "uniform":
            return min(top, self.n) / self.n
        return float(self.cdf[min(top, self.n) - 1])


def features_body(sampler: KeySampler, n_candidates: int, n_history: int) -> bytes:
    return features_json(sampler.sample(n_candidates + n_history), n_candidates)


def item_ids(items: np.ndarray) -> list[str]:
    """The IDs of these corpus items."""
    return [item_id(int(i)) for i in items]


def features_json(items: np.ndarray, n_candidates: int) -> bytes:
    """The features body asking for these corpus items, the first n_candidates as candidates."""
    names = item_ids(items)
    return orjson.dumps({"candidates": names[:n_candidates], "history": names[n_candidates:]})


def features_maker(host: str, sampler: KeySampler, n_candidates: int, n_history: int,
                   pool_size: int, path: str = "/v1/features") -> Callable[[int], bytes]:
    """Pre-built requests (built before the timed phase, so the generator stays cheap)."""
    pool = [encode_request("POST", path, host, features_body(sampler, n_candidates, n_history))
            for _ in range(pool_size)]
    return lambda i: pool[i % len(pool)]


def features_check(n_candidates: int, n_history: int, all_known: bool = True) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        try:
            d = orjson.loads(body)
            c, h = d["candidates"], d["history"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            return f"features answer unreadable: {e!r}: {body[:200]!r}"
        if len(c["known"]) != n_candidates or len(h["known"]) != n_history:
            return f"expected {n_candidates}+{n_history} answers, got {len(c['known'])}+{len(h['known'])}"
        if len(c["rows"]) != n_candidates or len(h["rows"]) != n_history:
            return "rows not aligned with the request"
        if all_known and not (all(c["known"]) and all(h["known"])):
            return "a preloaded item came back unknown"
        return None

    return check


def embedding_fragments(x: np.ndarray) -> list[bytes]:
    """JSON arrays of each row (orjson, float32 as written by the exporter's data)."""
    return [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in np.ascontiguousarray(x)]


ID_DIGITS = 12  # batch uploads' item numbers, zero-padded: every request of a kind has one length


def upload_single_maker(host: str, frags: list[bytes], id_prefix: str) -> Callable[[int], bytes]:
    pre = b'{"item_id":"' + id_prefix.encode()

    def make(i: int) -> bytes:
        body = pre + str(i).encode() + b'","embedding":' + frags[i % len(frags)] + b"}"
        return encode_request("POST", "/v1/items", host, body)

    return make


def upload_batch_maker(
    host: str, rows: np.ndarray, id_prefix: str, batch: int, binary: bool = False
) -> Callable[[int], bytearray]:
    """Batch i holds items i * batch ... i * batch + batch - 1 (IDs zero-padded to ID_DIGITS), item j
    with embedding rows[j % len(rows)], as a JSON body or (binary) the compact one of
    sidserve.codec. Each request is a copy of one pre-built request whose ID digits are written in
    one numpy scatter, returned as the bytearray (no copy to bytes): 0.3-0.4 ms at 1,000 items and
    D = 384 (4.2 MB of JSON). The generator builds it in its loop at send time, so every
    millisecond here delays the sends scheduled meanwhile: a copy plus 1,000 slice assignments and
    a copy to bytes took ~0.9 ms (max 2.5), and joining 2,000 parts ~5 ms."""
    x = rows[np.arange(batch) % len(rows)]
    placeholder = f"{id_prefix}{0:0{ID_DIGITS}d}".encode()  # each item's ID, digits overwritten per request
    if binary:
        body = codec.encode_embeddings([placeholder.decode()] * batch, x)
        content_type = codec.EMBEDDINGS_MEDIA_TYPE
    else:
        items = [b'{"item_id":"' + placeholder + b'","embedding":' + frag + b"}" for frag in embedding_fragments(x)]
        body, content_type = b'{"items":[' + b",".join(items) + b"]}", "application/json"
    template = encode_request("POST", "/v1/items/batch", host, body, content_type)
    # Where each item's ID digits start, in either body format: after its placeholder's prefix.
    digits = [m.start() + len(id_prefix.encode()) for m in re.finditer(re.escape(placeholder), template)]
    if len(digits) != batch:
        raise ValueError(f"found {len(digits)} ID placeholders for {batch} items (is {id_prefix!r} in the data?)")
    at = np.array(digits)[:, None] + np.arange(ID_DIGITS)  # [batch, ID_DIGITS] byte positions
    place = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)  # each digit's place value
    numbers = np.arange(batch, dtype=np.int64)

    def make(i: int) -> bytearray:
        request = bytearray(template)
        ascii_digits = (i * batch + numbers)[:, None] // place % 10 + ord("0")
        np.frombuffer(request, dtype=np.uint8)[at] = ascii_digits
        return request

    return make


def upload_check(expect_items: int) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        try:
            d = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return f"upload answer unreadable: {e!r}"
        items = d.get("items", [d])
        if len(items) != expect_items or any("sid" not in it for it in items):
            return f"expected {expect_items} items with SIDs, got {body[:200]!r}"
        return None

    return check
