"""The model bundle and the preloaded corpus: real SIDs from a trained model, written fast.

- Bundle: given (--bundle), or trained once with the exporter's `build_demo_bundle` (a real
  RQ-VAE on synthetic hierarchical embeddings) and cached under artifacts/loadtest/.
- Corpus: item i (ID `item-%08d`) has the embedding of training item i mod n_train plus
  fresh noise (so all items are distinct but drawn like the training data); its SID is computed
  by onnxruntime from the bundle's encoder.onnx in big batches with all cores, cached as .npy
  next to the bundle, and written to Redis through the service's own storage module
  (`sidserve.storage.SidStore.write`, the same key layout and encoding the service reads), in
  chunks of 10,000 items per round trip. Going through HTTP instead would cost JSON parsing and
  the encoder again for every item (~75 us/item, over a minute per million).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .workload import item_id

CACHE = Path(os.environ.get("LOADTEST_CACHE", "artifacts/loadtest"))


def ensure_bundle(dim: int, levels: int, codebook_size: int, train_n: int, epochs: int, seed: int = 0,
                  cache: Path = CACHE) -> Path:
    out = cache / f"bundle-D{dim}-L{levels}-K{codebook_size}-n{train_n}-e{epochs}-s{seed}"
    if (out / "manifest.json").exists():
        return out
    from sid_exporter.synthetic import build_demo_bundle  # needs the exporter extra (torch)

    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=cache))
    build_demo_bundle(tmp, n=train_n, dim=dim, levels=levels, codebook_size=codebook_size, seed=seed,
                      epochs=epochs)
    try:
        tmp.rename(out)
    except OSError:  # built concurrently by someone else
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


class EmbeddingSource:
    """Deterministic corpus embeddings near the bundle's training distribution."""

    def __init__(self, dim: int, train_n: int = 20_000, seed: int = 0, noise: float = 0.02) -> None:
        from sid_exporter.synthetic import hierarchical_clusters  # numpy only

        self.base, _ = hierarchical_clusters(train_n, dim, branching=(8, 8, 8), seed=seed)
        self.dim, self.seed, self.noise = dim, seed, noise

    def rows(self, start: int, stop: int, salt: int = 0) -> np.ndarray:
        idx = np.arange(start, stop) % len(self.base)
        rng = np.random.default_rng([self.seed, salt, start])
        x = self.base[idx] + rng.normal(size=(stop - start, self.dim)).astype(np.float32) * (
            self.noise / np.sqrt(self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)


def compute_codes(bundle: Path, source: EmbeddingSource, n: int, batch: int = 8192,
                  threads: int | None = None) -> np.ndarray:
    """SIDs [n, L] of corpus items 0..n-1, by onnxruntime with all cores; cached on disk."""
    m = manifest(bundle)
    cache = bundle / f"codes-{m['model_version']}-n{n}-s{source.seed}-z{source.noise}.npy"
    if cache.exists():
        return np.load(cache)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    sess = ort.InferenceSession(str(bundle / m["onnx_file"]), opts, providers=["CPUExecutionProvider"])
    dtype = np.uint8 if m["codebook_size"] <= 256 else np.uint16 if m["codebook_size"] <= 65536 else np.uint32
    codes = np.empty((n, m["levels"]), dtype=dtype)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        codes[start:stop] = sess.run(None, {m["onnx_input"]: source.rows(start, stop)})[0]
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, codes)
    tmp.rename(cache)
    return codes


def preload(redis_url: str, bundle: Path, codes: np.ndarray, key_prefix: str = "sid", chunk: int = 10_000,
            start: int = 0) -> float:
    """Write corpus items start..start+n-1 with their SIDs through sidserve.storage; returns seconds."""
    from sidserve import redis_client, storage

    m = manifest(bundle)

    async def main() -> None:
        r = redis_client.connect(redis_url, 5.0, 60.0, 4)
        store = storage.SidStore(r, m["model_version"], m["levels"], m["codebook_size"], key_prefix)
        try:
            for lo in range(0, len(codes), chunk):
                hi = min(len(codes), lo + chunk)
                await store.write([item_id(start + i) for i in range(lo, hi)], codes[lo:hi])
        finally:
            await r.aclose()

    t0 = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t0
