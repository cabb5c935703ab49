"""`sidserve-backfill`: recompute the SIDs of a whole corpus under a model bundle and store them.

    sidserve-backfill --bundle artifacts/bundle --embeddings items.npy --ids item_ids.txt \\
        --redis-url redis://127.0.0.1:6379/0

The same code path as the service's item upload: `SidModel.encode` (the bundle's ONNX encoder,
verified on load) and `SidStore.write` (the service's Redis layout, keyed by the bundle's model
version), so a backfilled SID is exactly what `POST /v1/items` would have stored.

- Input: a float32 [N, D] `.npy` file (memory-mapped, so N may exceed RAM) and a text file of N
  item IDs, one per line, in the same order.
- Speed: big batches (default 16,384), encoded by `--threads` worker threads at once (onnxruntime
  releases the GIL; 1 intra-op thread each), while the previous batch is written to Redis.
- Live traffic: each batch is written in calls of `--write-size` items (default 512). A write is
  one atomic Redis call (~6 us per item), and every other client of that Redis, the service's
  features reads included, waits while it runs: 512 items hold Redis ~3 ms, 16,384 ~100 ms.
- Progress: a tqdm bar on stderr (`--no-progress` to turn it off).
- Resumable: after each batch is stored, the offset of the next one is saved to a checkpoint
  file (default `<embeddings>.backfill-<model_version>.json`, written atomically). Re-running the
  same command after an interruption (Ctrl-C, kill -9, a Redis outage) starts there; at most one
  batch is written twice, which is harmless (a write of the same SID is a no-op). The checkpoint
  records the corpus' shape and a hash of the IDs file, so a checkpoint never applies to another
  corpus. `--restart` ignores it. `--max-batches` stops after that many batches (work in slices).
- Model lifecycle: a retired model version (sidserve.versions) is refused, since its keys are being
  (or were) deleted; `--collision-index` must match the service's SIDSERVE_COLLISION_INDEX (the
  version's stored layout says which; a mismatch is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from redis.exceptions import RedisError

from . import redis_client, storage
from .model import BundleError, SidModel
from .settings import Settings
from .storage import LayoutMismatch, SidStore, StorageUnavailable


class BackfillError(Exception):
    """The corpus or the checkpoint is unusable; the message says why."""


@dataclass
class Corpus:
    x: np.ndarray  # float32 [N, D], memory-mapped
    ids: list[str]
    fingerprint: str  # shape + sha256 of the IDs file: what a checkpoint must match

    @classmethod
    def load(cls, embeddings: Path, ids_path: Path, input_dim: int) -> Corpus:
        try:
            x = np.load(embeddings, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BackfillError(f"{embeddings}: cannot read as .npy: {e}") from None
        if x.ndim != 2 or x.shape[1] != input_dim:
            raise BackfillError(f"{embeddings}: shape {x.shape}, the model expects [N, {input_dim}]")
        if x.dtype != np.float32:
            raise BackfillError(f"{embeddings}: dtype {x.dtype}, expected float32")
        try:
            raw = ids_path.read_bytes()
        except OSError as e:
            raise BackfillError(f"{ids_path}: cannot read: {e.strerror}") from None
        ids = raw.decode("utf-8").splitlines()
        if len(ids) != len(x):
            raise BackfillError(f"{ids_path}: {len(ids)} IDs for {len(x)} embeddings in {embeddings}")
        bad = next((i for i, item in enumerate(ids) if not item or len(item.encode()) > 256), None)
        if bad is not None:
            raise BackfillError(f"{ids_path}: line {bad + 1}: item IDs must be 1 to 256 bytes of UTF-8")
        fingerprint = f"{x.shape[0]}x{x.shape[1]}:{hashlib.sha256(raw).hexdigest()}"
        return cls(x, ids, fingerprint)


class Checkpoint:
    """The offset of the first row not yet stored, saved atomically after each stored batch."""

    def __init__(self, path: Path, model_version: str, corpus: str) -> None:
        self.path, self.model_version, self.corpus = path, model_version, corpus

    def load(self) -> int:
        if not self.path.exists():
            return 0
        try:
            saved = json.loads(self.path.read_text())
            offset = int(saved["offset"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackfillError(f"checkpoint {self.path} is unreadable ({e}); --restart to start over") from None
        if saved.get("model_version") != self.model_version or saved.get("corpus") != self.corpus:
            raise BackfillError(
                f"checkpoint {self.path} belongs to another model or corpus "
                f"({saved.get('model_version')}, {saved.get('corpus')}); --restart or another --checkpoint"
            )
        return offset

    def save(self, offset: int, total: int) -> None:
        state = {"model_version": self.model_version, "corpus": self.corpus, "offset": offset, "total": total,
                 "done": offset >= total, "saved_at": time.time()}  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new checkpoint, never half


@dataclass
class Result:
    start: int
    end: int
    total: int
    seconds: float
    statuses: dict[str, int]

    @property
    def rate(self) -> float:
        return (self.end - self.start) / self.seconds if self.seconds > 0 else float("inf")


async def run_backfill(
    model: SidModel, store: SidStore, corpus: Corpus, checkpoint: Checkpoint, *, batch_size: int = 16_384,
    threads: int = 2, max_batches: int | None = None, start: int | None = None, progress: bool = True,
) -> Result:  # fmt: skip
    """Encode and store rows [start, N) batch by batch, checkpointing after each stored batch.
    Each batch is one store.write (in Redis calls of the store's write_chunk_items).

    Up to `threads` batches are being encoded while the oldest finished one is written, so the
    encoder threads never wait for Redis; batches are stored and checkpointed in order.
    """
    from tqdm import tqdm

    n = len(corpus.ids)
    first = checkpoint.load() if start is None else start
    offsets = range(first, n, batch_size)
    if max_batches is not None:
        offsets = offsets[:max_batches]
    loop = asyncio.get_running_loop()
    statuses: dict[str, int] = {"created": 0, "updated": 0, "unchanged": 0}

    def encode(offset: int) -> np.ndarray:
        return model.encode(np.ascontiguousarray(corpus.x[offset : offset + batch_size]))

    bar = tqdm(total=n, initial=first, unit="item", unit_scale=True, disable=not progress, smoothing=0.1,
               desc=f"backfill {model.version}", file=sys.stderr)  # fmt: skip
    started, end = time.perf_counter(), first
    with ThreadPoolExecutor(threads, thread_name_prefix="encode") as pool:
        pending = iter(offsets)
        window: deque[tuple[int, asyncio.Future[np.ndarray]]] = deque()

        def submit() -> None:
            offset = next(pending, None)
            if offset is not None:
                window.append((offset, loop.run_in_executor(pool, encode, offset)))

        for _ in range(threads + 1):
            submit()
        try:
            while window:
                offset, future = window.popleft()
                codes = await future
                submit()
                for status in await store.write(corpus.ids[offset : offset + len(codes)], codes):
                    statuses[status] += 1
                end = offset + len(codes)
                checkpoint.save(end, n)
                bar.update(len(codes))
        finally:
            for _, future in window:
                future.cancel()
            bar.close()
    return Result(first, end, n, time.perf_counter() - started, statuses)


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()  # SIDSERVE_REDIS_URL, SIDSERVE_KEY_PREFIX, ..., as the service reads them
    p = argparse.ArgumentParser(
        prog="sidserve-backfill",
        description="Recompute and store the SIDs of a corpus (.npy embeddings + IDs file) under a model "
        "bundle, through the service's encoder and Redis storage code. Resumable: re-run the same "
        "command after an interruption.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--embeddings", type=Path, required=True, help="float32 [N, D] .npy file")
    p.add_argument("--ids", type=Path, required=True, help="N item IDs, one per line, in row order")
    p.add_argument("--redis-url", default=defaults.redis_url, help="[SIDSERVE_REDIS_URL]")
    p.add_argument("--redis-cluster", action=argparse.BooleanOptionalAction, default=defaults.redis_cluster,
                   help="--redis-url names a Redis Cluster node [SIDSERVE_REDIS_CLUSTER]")  # fmt: skip
    p.add_argument("--key-prefix", default=defaults.key_prefix, help="[SIDSERVE_KEY_PREFIX]")
    # Used only when the version has no stored layout yet; a stored one is adopted, as the service does.
    p.add_argument("--bucket-bits", type=int, default=defaults.store_bucket_bits, help="[SIDSERVE_STORE_BUCKET_BITS]")
    p.add_argument("--fingerprint-bytes", type=int, default=defaults.store_fingerprint_bytes,
                   help="[SIDSERVE_STORE_FINGERPRINT_BYTES]")
    p.add_argument("--collision-index", action=argparse.BooleanOptionalAction, default=defaults.collision_index,
                   help="also assign each item its collision index k [SIDSERVE_COLLISION_INDEX]")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16_384, help="rows per encoder run and checkpoint")
    p.add_argument("--write-size", type=int, default=512,
                   help="items per Redis write: each holds that Redis ~6 us per item, live reads included")  # fmt: skip
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="encoder threads")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint file (default: <embeddings>.backfill-<model_version>.json)")  # fmt: skip
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint, start at row 0")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if min(args.batch_size, args.write_size, args.threads) < 1:
        raise SystemExit("sidserve-backfill: --batch-size, --write-size and --threads must be positive")
    try:
        model = SidModel.load(args.bundle, intra_op_threads=1)
        corpus = Corpus.load(args.embeddings, args.ids, model.input_dim)
    except (BundleError, BackfillError) as e:
        raise SystemExit(f"sidserve-backfill: {e}") from None
    path = args.checkpoint or args.embeddings.with_name(f"{args.embeddings.name}.backfill-{model.version}.json")
    checkpoint = Checkpoint(path, model.version, corpus.fingerprint)

    async def go() -> Result:
        # long reply timeout: big batch writes; on a cluster a batch that failed half-way is written
        # again when the run resumes (the same values: idempotent)
        redis = redis_client.connect(args.redis_url, 5.0, 60.0, 4, cluster=args.redis_cluster)
        try:
            try:
                retired = await redis.hexists(storage.lifecycle_key(args.key_prefix), f"retired:{model.version}")
            except RedisError as e:
                raise StorageUnavailable("backfill", e) from e
            if retired:
                raise BackfillError(f"model version {model.version} is retired (GET /v1/models): its keys are deleted")
            store = SidStore(
                redis, model.version, model.levels, model.codebook_size, args.key_prefix, args.bucket_bits,
                collision_index=args.collision_index, fingerprint_bytes=args.fingerprint_bytes,
                write_chunk_items=args.write_size,
            )  # fmt: skip
            warning = await store.capacity_warning(len(corpus.ids))
            if warning:  # go on: the items are still stored and found, only less compactly
                print(f"sidserve-backfill: warning: {warning}", file=sys.stderr)
            return await run_backfill(
                model, store, corpus, checkpoint, batch_size=args.batch_size, threads=args.threads,
                max_batches=args.max_batches, start=0 if args.restart else None, progress=not args.no_progress,
            )  # fmt: skip
        finally:
            await redis.aclose()

    try:
        result = asyncio.run(go())
    except (BackfillError, LayoutMismatch) as e:
        raise SystemExit(f"sidserve-backfill: {e}") from None
    except StorageUnavailable as e:
        raise SystemExit(f"sidserve-backfill: {e}; re-run the same command to resume from {path}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"sidserve-backfill: interrupted; re-run the same command to resume from {path}") from None
    summary = {
        "model_version": model.version, "rows": [result.start, result.end], "total": result.total,
        "items": result.end - result.start, "seconds": round(result.seconds, 3),
        "items_per_s": round(result.rate), "statuses": result.statuses, "done": result.end >= result.total,
        "batch_size": args.batch_size, "write_size": args.write_size, "threads": args.threads, "checkpoint": str(path),
    }  # fmt: skip
    print(
        f"backfilled rows {result.start}..{result.end} of {result.total} under model {model.version} in "
        f"{result.seconds:.2f} s: {result.rate:,.0f} items/s {result.statuses}"
        + ("" if result.end >= result.total else f"; not done, re-run to resume from {path}")
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
