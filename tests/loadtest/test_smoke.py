"""The smoke profile end to end: `python -m loadtest run --profile smoke` must pass its budgets
and produce sane figures, so the README's test command always exercises the load harness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hdrh")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_smoke_profile_passes(sid_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "run", "--profile", "smoke", "--bundle", str(sid_bundle),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**__import__("os").environ, "LOADTEST_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "all budgets met" in proc.stdout
    assert wall < 60 + 15, f"smoke took {wall:.0f} s"  # under 60 s of its own, plus interpreter start-up

    report = json.loads(out.read_text())
    assert report["passed"] is True
    names = [s["scenario"] for s in report["scenarios"]]
    assert names == ["fetch_300_zipf", "fetch_300_uniform", "fetch_1_zipf", "fetch_1000_zipf",
                     "upload_single", "upload_batch_100", "mix_zipf", "mix_batch_zipf"]  # fmt: skip
    assert report["corpus"]["items"] == 20_000
    assert 5 < report["corpus"]["redis_bytes_per_item"] < 1000
    for s in report["scenarios"]:
        lat = s["latency"]
        assert s["scheduled"] == s["sent"] == s["ok"] > 0, s
        assert s["errors"] == {} and s["error_rate"] == 0
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p999_ms"] <= lat["max_ms"]
        assert lat["count"] == s["ok"] == s["latency_ok"]["count"]
        assert s["achieved_rps"] > 0.5 * s["rate_rps"]
        assert s["service_time"]["p50_ms"] <= lat["p50_ms"] + 1e-9  # service time <= time since intended
        if Path("/proc/self/stat").exists():  # CPU per request: the service's from /proc, Redis's from INFO
            assert 0 < s["cpu"]["service_us_per_request"] < 1e6 and s["cpu"]["service_cores"] > 0, s["cpu"]
        assert s["cpu"]["redis_us_per_request"] > 0, s["cpu"]
        if s["kind"] != "mix":  # the server's histogram saw every measured request
            assert s["server_side"]["count"] == s["ok"], s["server_side"]
            assert s["server_side"]["p50_ms"] > 0
    batch = next(s for s in report["scenarios"] if s["kind"] == "upload_batch")
    assert batch["items_per_s"] == pytest.approx(100 * batch["achieved_rps"], rel=0.01)
    mixed = next(s for s in report["scenarios"] if s["scenario"] == "mix_batch_zipf")
    assert set(mixed["per_kind"]) == {"fetch_300", "upload_batch_100"}
    assert mixed["per_kind"]["upload_batch_100"]["ok"] > 0
