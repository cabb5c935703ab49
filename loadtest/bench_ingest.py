"""Batch upload throughput, JSON body vs binary body, end to end (client encoding included).

    python loadtest/bench_ingest.py [--items 40000] [--workers 2] [--concurrency 4] [--batch 1000]
                                    [--out FILE]

Starts a private Redis and the service (`sidserve`, --workers uvicorn workers), then uploads
--items new items (D = 384, batches of --batch, --concurrency batches in flight) once with the JSON
body and once with application/x-sidserve-embeddings, alternating rounds of 5,000 items so that
machine noise hits both alike. Also, in this process: the per-item cost of each step (JSON parse
+ validation vs binary decode, onnxruntime encode with 1 intra-op thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest import corpus, procs  # noqa: E402
from loadtest.profiles import FULL  # noqa: E402
from loadtest.runner import write_json  # noqa: E402
from sidserve.codec import EMBEDDINGS_MEDIA_TYPE, decode_embeddings, encode_embeddings  # noqa: E402


def json_body(ids: list[str], x: np.ndarray) -> bytes:  # what the client sent before
    return orjson.dumps({"items": [{"item_id": i, "embedding": row} for i, row in zip(ids, x, strict=True)]},
                        option=orjson.OPT_SERIALIZE_NUMPY)


async def upload(base: str, key: str, ids: list[str], x: np.ndarray, binary: bool, concurrency: int,
                 batch: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {key}",
               "content-type": EMBEDDINGS_MEDIA_TYPE if binary else "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as http:
        async def one(s: int) -> None:
            async with sem:
                chunk_ids, chunk = ids[s:s + batch], x[s:s + batch]
                body = encode_embeddings(chunk_ids, chunk) if binary else json_body(chunk_ids, chunk)
                r = await http.post("/v1/items/batch", content=body)
                r.raise_for_status()
                assert r.json()["items"][0]["status"] == "created"

        t = time.perf_counter()
        await asyncio.gather(*(one(s) for s in range(0, len(ids), batch)))
        return time.perf_counter() - t


def in_process(bundle: Path, x: np.ndarray, batch: int) -> dict:
    from sidserve.model import SidModel
    from sidserve.schemas import ItemBatchIn

    model = SidModel.load(bundle, 1, False)
    ids = [f"p-{i}" for i in range(batch)]
    jb, bb = json_body(ids, x[:batch]), encode_embeddings(ids, x[:batch])
    out = {}
    for name, fn in (
        ("json_parse_validate", lambda: np.array([i.embedding for i in ItemBatchIn.model_validate(json.loads(jb)).items],
                                                  dtype=np.float32)),
        ("binary_decode", lambda: decode_embeddings(bb, x.shape[1], batch, 256)),
        ("onnx_encode_1_thread", lambda: model.encode(x[:batch])),
    ):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name + "_us_per_item"] = round(float(np.median(times)) / batch * 1e6, 2)
    out["json_body_bytes_per_item"] = round(len(jb) / batch)
    out["binary_body_bytes_per_item"] = round(len(bb) / batch)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=40_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000, help="items per upload request")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    bundle = args.bundle or corpus.ensure_bundle(FULL.dim, FULL.levels, FULL.codebook_size, FULL.train_n, FULL.epochs)
    dim = corpus.manifest(bundle)["input_dim"]
    x = corpus.EmbeddingSource(dim, train_n=FULL.train_n).rows(0, args.items, salt=99)
    report: dict = {"items": args.items, "dim": dim, "workers": args.workers, "concurrency": args.concurrency,
                    "batch": args.batch,
                    "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "in_process": in_process(bundle, x, args.batch)}
    print(f"[ingest] in process, per item: {report['in_process']}", flush=True)
    seconds = {"json": 0.0, "binary": 0.0}
    with procs.RedisServer() as rs, procs.Service(bundle, rs.url, args.workers) as svc:
        rounds = range(0, args.items, 5000)
        for r, s in enumerate(rounds):
            for mode in (("json", "binary") if r % 2 == 0 else ("binary", "json")):
                ids = [f"{mode}-{i:08d}" for i in range(s, min(args.items, s + 5000))]
                seconds[mode] += asyncio.run(upload(svc.base, svc.api_key, ids, x[s:s + 5000], mode == "binary",
                                                    args.concurrency, args.batch))
    report["items_per_s"] = {m: round(args.items / t) for m, t in seconds.items()}
    report["load_avg_end"] = os.getloadavg()[0]
    print(f"[ingest] end to end, {args.workers} workers, {args.concurrency} batches of {args.batch} in flight: "
          f"{report['items_per_s']} items/s (load avg {report['load_avg_start']:.1f} -> {report['load_avg_end']:.1f})")
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
