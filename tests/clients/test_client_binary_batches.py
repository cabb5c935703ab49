"""The client's batch uploads use the server's binary body, and its encoder matches the server's codec."""

from __future__ import annotations

import numpy as np

from sidserve.codec import EMBEDDINGS_MEDIA_TYPE, decode_embeddings, encode_embeddings
from sidserve_client import client as c


def test_batches_are_binary_and_decode_on_the_server_side() -> None:
    ids = ["a", "é/ü:{x}", "85123A", "z" * 256]
    x = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    calls = c._upsert_batches(ids, x, batch_size=3)
    assert [len(decode_embeddings(call.body, 7, 1000, 256)[0]) for call in calls] == [3, 1]
    assert all(call.content_type == EMBEDDINGS_MEDIA_TYPE == c.EMBEDDINGS_MEDIA_TYPE for call in calls)
    got_ids, got_x = decode_embeddings(calls[0].body, 7, 1000, 256)
    assert got_ids == ids[:3] and (got_x == x[:3]).all()
    assert c._embeddings_body(ids, x) == encode_embeddings(ids, x)
