"""The main job, end to end on the bundled sample catalogue (data/sample, UCI Online Retail):

1. train a small RQ-VAE on the 900 items' MiniLM embeddings and export the ONNX bundle
   (sid-exporter train + export), and print its SID quality report;
2. use the Redis at SIDSERVE_REDIS_URL (default redis://127.0.0.1:6379/0) or, when none is
   reachable there, start a private redis-server on a free port;
3. start the service (the `sidserve` console script) on that bundle and Redis;
4. upload the items through the Python client, then fetch features as a ranking server would
   and print them.

    python scripts/demo.py [--out artifacts/demo] [--port 8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from sid_exporter.cli import main as sid_exporter
from sid_exporter.data import load_dataset
from sidserve.testing import RedisProcess, free_port
from sidserve_client import ServiceUnavailable, SidServeClient

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def train_and_export(out: Path) -> Path:
    embeddings, ids = SAMPLE / "item_embeddings.npy", SAMPLE / "item_ids.txt"
    checkpoint, bundle = out / "model.pt", out / "bundle"
    # Small corpus: L=3 levels of K=64 codes, a short training run (under a minute on 2 idle cores).
    sid_exporter(["train", "--embeddings", str(embeddings), "--ids", str(ids), "--out", str(checkpoint),
                  "--levels", "3", "--codebook-size", "64", "--hidden", "256", "128", "--max-steps", "400"])  # fmt: skip
    sid_exporter(["export", "--checkpoint", str(checkpoint), "--out", str(bundle)])
    sid_exporter(["report", "--bundle", str(bundle), "--embeddings", str(embeddings), "--ids", str(ids),
                  "--json", str(out / "report.json")])  # fmt: skip
    return bundle


def reachable(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.3).ping()
        return True
    except redis.RedisError:
        return False


def wait_ready(client: SidServeClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ready().ready:
                return
        except (ServiceUnavailable, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the service did not become ready; see its log above")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "demo", help="where the model goes")
    parser.add_argument("--port", type=int, default=None, help="service port (default: a free one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    bundle = train_and_export(args.out)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the output

    redis_url = os.environ.get("SIDSERVE_REDIS_URL", "redis://127.0.0.1:6379/0")
    private_redis = None
    if not reachable(redis_url):
        private_redis = RedisProcess(Path(tempfile.mkdtemp(prefix="sidserve-demo-redis-")))
        private_redis.start()
        redis_url = private_redis.url
        print(f"no Redis reachable: started a private redis-server at {redis_url}")

    port = args.port or free_port()
    api_key = secrets.token_urlsafe(24)  # a throwaway key for this run: writes need one
    service = subprocess.Popen(
        [sys.executable, "-m", "sidserve.cli", "--bundle", str(bundle), "--redis-url", redis_url,
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "SIDSERVE_API_KEYS": api_key},
    )  # fmt: skip
    try:
        with SidServeClient(f"http://127.0.0.1:{port}", api_key=api_key) as client:
            wait_ready(client)
            embeddings, ids = load_dataset(SAMPLE / "item_embeddings.npy", SAMPLE / "item_ids.txt")
            writes = client.upsert_items(ids, embeddings)
            counts = {s: sum(w.status == s for w in writes) for s in ("created", "updated", "unchanged")}
            print(f"\nuploaded {len(writes)} items with model {writes[0].model_version}: {counts}")

            # A ranking request: a few candidates (one never uploaded) and a short history.
            candidates, history = [ids[0], ids[1], "NOT-A-REAL-ITEM", ids[0]], ids[10:13]
            features = client.features(candidates, history)
            cfg = features.feature_config
            print(f"feature config: {cfg.parameterization}, N={cfg.ngram}, H={cfg.table_size}, "
                  f"K={cfg.codebook_size}, L={cfg.levels}")  # fmt: skip
            for name, block, requested in (("candidate", features.candidates, candidates),
                                           ("history", features.history, history)):  # fmt: skip
                for item_id, known, sid, rows in zip(requested, block.known, block.sids, block.rows):
                    shown = list(sid) if known else "unknown -> row 0"
                    print(f"  {name:9} {item_id:16} sid={shown!s:18} rows={np.asarray(rows).tolist()}")
    finally:
        service.terminate()
        service.wait(timeout=10)
        if private_redis is not None:
            private_redis.stop()


if __name__ == "__main__":
    main()
