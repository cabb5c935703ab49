"""sidserve-backfill against a real Redis: SIDs equal the encoder's, stored where the service reads
them, resumable after --max-batches and after kill -9 of the backfill process."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from sidserve import redis_client
from sidserve.backfill import main as backfill
from sidserve.model import SidModel
from sidserve.storage import SidStore


def _corpus(tmp_path: Path, x: np.ndarray, name: str = "corpus") -> tuple[Path, Path, list[str]]:
    ids = [f"bf-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(x))]
    np.save(tmp_path / f"{name}.npy", x)
    (tmp_path / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path / f"{name}.npy", tmp_path / f"{name}.txt", ids


def _stored(bundle: Path, redis_url: str, prefix: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    model = SidModel.load(bundle)

    async def read() -> tuple[np.ndarray, np.ndarray]:
        redis = redis_client.connect(redis_url, 1.0, 10.0, 2)
        try:
            return await SidStore(redis, model.version, model.levels, model.codebook_size, prefix).read(ids)
        finally:
            await redis.aclose()

    return asyncio.run(read())


def test_backfill_stores_the_encoder_sids_and_resumes(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    x, _ = sid_bundle_data
    embeddings, ids_file, ids = _corpus(tmp_path, x)
    prefix = f"bf{uuid.uuid4().hex[:6]}"
    common = ["--bundle", str(sid_bundle), "--embeddings", str(embeddings), "--ids", str(ids_file),
              "--redis-url", redis_url, "--key-prefix", prefix, "--batch-size", "300", "--no-progress"]  # fmt: skip
    backfill([*common, "--max-batches", "2"])  # an interrupted run: 600 rows stored
    assert "rows 0..600 of 2000" in capsys.readouterr().out
    codes, known = _stored(sid_bundle, redis_url, prefix, ids)
    assert known[:600].all() and not known[600:].any()
    [checkpoint] = tmp_path.glob("corpus.npy.backfill-*.json")
    assert json.loads(checkpoint.read_text())["offset"] == 600

    # The same command again resumes; each batch of 300 is written in Redis calls of <= 256 items.
    fcalls = redis.Redis.from_url(redis_url).info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)
    backfill([*common, "--write-size", "256", "--json", str(tmp_path / "result.json")])
    assert "rows 600..2000 of 2000" in capsys.readouterr().out
    calls = redis.Redis.from_url(redis_url).info("commandstats")["cmdstat_fcall"]["calls"] - fcalls
    assert calls == 4 * 2 + 1  # 4 batches of 300 (256 + 44), then one of 200
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["done"] and result["statuses"] == {"created": 1400, "updated": 0, "unchanged": 0}
    codes, known = _stored(sid_bundle, redis_url, prefix, ids)
    assert known.all() and np.array_equal(codes, SidModel.load(sid_bundle).encode(x))

    backfill([*common, "--restart", "--threads", "1", "--batch-size", "2000", "--json", str(tmp_path / "again.json")])
    assert json.loads((tmp_path / "again.json").read_text())["statuses"]["unchanged"] == 2000

    # A checkpoint of another corpus is refused, not silently applied.
    other_npy, other_ids, _ = _corpus(tmp_path, x[:1000], "other")
    shutil.copy(checkpoint, other_npy.with_name(checkpoint.name.replace("corpus", "other")))
    with pytest.raises(SystemExit, match="another model or corpus"):
        backfill([*common[:2], "--embeddings", str(other_npy), "--ids", str(other_ids), *common[6:]])
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit, match="2 IDs for 2000 embeddings"):
        backfill([*common[:4], "--ids", str(tmp_path / "short.txt"), *common[6:]])


def test_backfill_resumes_after_kill_9(sid_bundle: Path, redis_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200_000, 32), dtype=np.float32)
    embeddings, ids_file, ids = _corpus(tmp_path, x)
    prefix = f"bfk{uuid.uuid4().hex[:6]}"
    exe = shutil.which("sidserve-backfill", path=str(Path(sys.executable).parent))
    command = [exe or "sidserve-backfill", "--bundle", str(sid_bundle), "--embeddings", str(embeddings), "--ids",
               str(ids_file), "--redis-url", redis_url, "--key-prefix", prefix, "--batch-size", "500",
               "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    checkpoint = None
    while checkpoint is None:
        assert proc.poll() is None and time.monotonic() < deadline, "the backfill ended before it could be killed"
        checkpoint = next(tmp_path.glob("corpus.npy.backfill-*.json"), None)
        time.sleep(0.005)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = json.loads(checkpoint.read_text())["offset"]
    assert 0 < killed_at < len(x), killed_at

    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert f"rows {killed_at}..200000 of 200000" in done.stdout, done.stdout
    state = json.loads(checkpoint.read_text())
    assert state["done"] and state["offset"] == len(x)
    sample = np.random.default_rng(2).choice(len(x), 5000, replace=False)
    codes, known = _stored(sid_bundle, redis_url, prefix, [ids[i] for i in sample])
    assert known.all() and np.array_equal(codes, SidModel.load(sid_bundle).encode(x[sample]))


def test_backfill_with_collision_index_refuses_mismatch_and_retired_versions(
    sid_bundle: Path, sid_bundle_data: tuple[np.ndarray, list[str]], redis_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    x, _ = sid_bundle_data
    embeddings, ids_file, ids = _corpus(tmp_path, np.repeat(x[:1], 50, axis=0))  # one SID, 50 items
    prefix = f"bf{uuid.uuid4().hex[:6]}"
    common = ["--bundle", str(sid_bundle), "--embeddings", str(embeddings), "--ids", str(ids_file),
              "--redis-url", redis_url, "--key-prefix", prefix, "--batch-size", "20", "--no-progress"]  # fmt: skip
    backfill([*common, "--collision-index"])
    model = SidModel.load(sid_bundle)

    async def read_k() -> np.ndarray:
        client = redis_client.connect(redis_url, 1.0, 10.0, 2)
        try:
            store = SidStore(client, model.version, model.levels, model.codebook_size, prefix, collision_index=True)
            return (await store.read_indexed(ids))[2]
        finally:
            await client.aclose()

    assert sorted(asyncio.run(read_k()).tolist()) == list(range(50))
    with pytest.raises(SystemExit, match="index_bytes"):  # the version was written with k
        backfill([*common, "--restart"])
    redis.Redis.from_url(redis_url).hset(f"{prefix}:models", f"retired:{model.version}", "{}")
    with pytest.raises(SystemExit, match="is retired"):
        backfill([*common, "--collision-index", "--restart"])
