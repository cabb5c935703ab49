"""Collision rate of a corpus under a bundle, measured through the service with
SIDSERVE_COLLISION_INDEX=true: the share of items whose collision index k is > 0 (another item got
the same full SID first), as the upload answers and the service's own metric report it.

    python scripts/collision_rate.py --bundle artifacts/or/bundle \\
        --embeddings ../shared/data/online_retail/item_embeddings.npy --ids ../shared/data/online_retail/item_ids.txt
    python scripts/collision_rate.py --synthetic 20000     # trains a demo bundle on synthetic data first

Starts the `sidserve` console script on a private redis-server (or --redis-url, under a fresh key
prefix), uploads the corpus in binary batches of 1,000, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from sidserve.codec import EMBEDDINGS_MEDIA_TYPE, encode_embeddings
from sidserve.testing import RedisProcess, free_port


def _corpus(args: argparse.Namespace, work: Path) -> tuple[Path, np.ndarray, list[str]]:
    if args.synthetic:
        from sid_exporter.synthetic import build_demo_bundle  # the exporter extra (torch)

        bundle, x, ids = build_demo_bundle(work / "bundle", n=args.synthetic, dim=32, levels=3, codebook_size=16)
        return bundle, x, ids
    x = np.load(args.embeddings)
    ids = args.ids.read_text().splitlines()
    return args.bundle, np.ascontiguousarray(x, dtype=np.float32), ids


def _start_service(bundle: Path, redis_url: str, prefix: str, key: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SIDSERVE_BUNDLE": str(bundle), "SIDSERVE_REDIS_URL": redis_url, "SIDSERVE_KEY_PREFIX": prefix,
           "SIDSERVE_COLLISION_INDEX": "true", "SIDSERVE_API_KEYS": key, "SIDSERVE_PORT": str(port),
           "SIDSERVE_LOG_LEVEL": "warning", "SIDSERVE_REDIS_SOCKET_TIMEOUT": "10"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "sidserve.cli"], env=env)


def _wait_ready(http: httpx.Client, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = http.get("/readyz")
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("collision_rate: the service did not become ready")


def measure(http: httpx.Client, x: np.ndarray, ids: list[str], batch: int = 1000) -> dict:
    ks, sids = [], []
    for start in range(0, len(ids), batch):
        body = encode_embeddings(ids[start : start + batch], x[start : start + batch])
        r = http.post("/v1/items/batch", content=body, headers={"content-type": EMBEDDINGS_MEDIA_TYPE})
        r.raise_for_status()
        for item in r.json()["items"]:
            ks.append(item["collision_index"])
            sids.append(tuple(item["sid"]))
    k = np.array(ks)
    metrics = http.get("/metrics").text
    counted = {m[0]: float(m[1]) for m in re.findall(r'sidserve_collision_index_assigned_total\{collision="(\w+)"[^}]*\} (\S+)', metrics)}  # fmt: skip
    return {
        "items": len(ks), "distinct_sids": len(set(sids)), "items_with_k_gt_0": int((k > 0).sum()),
        "collision_rate": round(float((k > 0).mean()), 4), "max_k": int(k.max()),
        "metric_collision_rate": round(counted.get("true", 0) / max(1.0, sum(counted.values())), 4),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path)
    p.add_argument("--embeddings", type=Path)
    p.add_argument("--ids", type=Path)
    p.add_argument("--synthetic", type=int, default=0, help="N synthetic items and a demo bundle trained on them")
    p.add_argument("--redis-url", default=None, help="an existing Redis (a fresh key prefix is used); default: private")
    args = p.parse_args()
    if not args.synthetic and not (args.bundle and args.embeddings and args.ids):
        p.error("give --bundle, --embeddings and --ids, or --synthetic N")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, x, ids = _corpus(args, work)
        server = None if args.redis_url else RedisProcess(work)
        if server is not None:
            server.start()
        key, port = secrets.token_urlsafe(24), free_port()
        service = _start_service(bundle, args.redis_url or server.url, "cr" + uuid.uuid4().hex[:8], key, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {key}"},
                              timeout=120) as http:  # fmt: skip
                ready = _wait_ready(http)
                result = {"model_version": ready["model_version"], "levels": ready["levels"],
                          "codebook_size": ready["codebook_size"], **measure(http, x, ids)}  # fmt: skip
        finally:
            service.terminate()
            service.wait(timeout=30)
            if server is not None:
                server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
