"""loadtest/bench_inproc.py end to end on a small corpus: it drives the real app (lifespan, guard,
Redis) through both routes and reports positive timings for each phase, and with --parts the
features handler's parts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench_inproc import PARTS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_inproc_bench_runs_both_routes(sid_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "inproc.json"
    proc = subprocess.run(
        [sys.executable, "loadtest/bench_inproc.py", "--items", "3000", "--requests", "40", "--rounds", "2",
         "--pause-ms", "1", "--parts", "--bundle", str(sid_bundle), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"/v1/features", "/v1/_noop"}
    for route in results.values():
        assert len(route["rounds"]) == 2
        for phase in ("warm", "paced"):
            assert all(0 < r[phase]["p50_us"] <= r[phase]["p90_us"] for r in route["rounds"])
        assert route["warm_p50_us"] > 0 and route["paced_p50_us"] > 0
    features = results["/v1/features"]["rounds"][0]["warm"]
    assert 0 < features["cache_hit_rate"] <= 1  # after the warm-up most IDs come from the SID cache
    assert not results["/v1/_noop"]["rounds"][0]["warm"]["cache_hit_rate"]  # the no-op reads nothing

    # --parts: every request parses, looks up and encodes; the no-op route only parses.
    labels = [label for label, _, _ in PARTS]
    for phase in ("warm", "paced"):
        features_parts = results["/v1/features"]["parts_p50_us"][phase]
        assert {"parse", "lookup", "encode"} <= set(features_parts) <= set(labels)
        assert all(us > 0 for us in features_parts.values())
        assert set(results["/v1/_noop"]["parts_p50_us"][phase]) == {"parse"}
    assert "parts p50" in proc.stdout
