"""Budget checks and the Prometheus histogram delta used for server-side times."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("hdrh")

from loadtest import budgets, promparse, runner  # noqa: E402


def _result(**kw):
    r = {"latency": {"p50_ms": 1.0, "p99_ms": 2.0}, "error_rate": 0.0, "errors": {},
         "achieved_rps": 500.0, "late_sends": 0}  # fmt: skip
    r.update(kw)
    return r


def test_budget_file_loads_and_merges_defaults():
    b = budgets.load()
    for profile in ("smoke", "full"):
        assert profile in b
    full = budgets.for_scenario(b, "full", "fetch_300_zipf")
    assert full["p99_ms"] == 2.5 and full["max_late_sends"] == 0 and full["max_error_rate"] == 0
    from loadtest.profiles import PROFILES

    for p in PROFILES.values():  # every scenario of every profile has a throughput budget
        for s in p.scenarios:
            assert "min_throughput_rps" in budgets.for_scenario(b, p.name, s.name), (p.name, s.name)


def test_budget_check_names_each_miss():
    budget = {"p50_ms": 1.5, "p99_ms": 2.5, "max_error_rate": 0.0, "min_throughput_rps": 495, "max_late_sends": 0}
    assert budgets.check(_result(), budget) == []
    misses = budgets.check(
        _result(latency={"p50_ms": 2.0, "p99_ms": math.nan}, error_rate=0.01, errors={"http_503": 3},
                achieved_rps=400.0, late_sends=7),
        budget,
    )  # fmt: skip
    assert len(misses) == 5
    assert misses[0].startswith("p50_ms 2.0 > 1.5") and "p99_ms" in misses[1]  # NaN = no answer = miss
    assert "http_503" in misses[2] and "throughput" in misses[3] and "late sends 7" in misses[4]


def test_ok_p99_budget_reads_the_successful_answers():
    overloaded = _result(latency={"p50_ms": 1.0, "p99_ms": 2.0}, latency_ok={"p99_ms": 900.0})
    assert budgets.check(overloaded, {"p99_ms": 5.0}) == []
    assert budgets.check(overloaded, {"ok_p99_ms": 500.0}) == ["ok_p99_ms 900.0 > 500.0"]
    assert budgets.check(_result(latency_ok={"p99_ms": math.nan}), {"ok_p99_ms": 500.0})  # none served: a miss


def test_budget_file_rejects_unknown_keys(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text("[smoke.x]\np95_ms = 3\n")
    with pytest.raises(ValueError, match="p95_ms"):
        budgets.load(f)


SCRAPE = """# HELP sidserve_request_duration_seconds x
# TYPE sidserve_request_duration_seconds histogram
sidserve_request_duration_seconds_bucket{endpoint="/v1/features",le="0.0005",method="POST"} %d.0
sidserve_request_duration_seconds_bucket{endpoint="/v1/features",le="0.001",method="POST"} %d.0
sidserve_request_duration_seconds_bucket{endpoint="/v1/features",le="+Inf",method="POST"} %d.0
sidserve_request_duration_seconds_bucket{endpoint="/v1/items",le="+Inf",method="POST"} 99.0
sidserve_request_duration_seconds_count{endpoint="/v1/features",method="POST"} %d.0
"""


def test_server_side_quantiles_from_scrape_delta():
    before = SCRAPE % (10, 10, 10, 10)
    after = SCRAPE % (10, 110, 210, 210)  # 200 new: 100 in (0.5, 1] ms, 100 above 1 ms
    s = promparse.delta_summary(before, after, "/v1/features")
    assert s["count"] == 200
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["p90_ms"] == pytest.approx(1.0)  # in the +Inf bucket: the highest finite bound
    assert s["bucket_bounds_ms"] == [0.5, 1.0]
    assert promparse.delta_summary(before, after, "/v1/nothing") is None


LAG_SCRAPE = """sidserve_event_loop_lag_seconds_bucket{le="0.002"} %d.0
sidserve_event_loop_lag_seconds_bucket{le="0.01"} %d.0
sidserve_event_loop_lag_seconds_bucket{le="0.1"} %d.0
sidserve_event_loop_lag_seconds_bucket{le="+Inf"} %d.0
sidserve_event_loop_lag_seconds_count %d.0
"""


def test_loop_stalls_from_scrape_delta():
    before = LAG_SCRAPE % (5, 6, 7, 8, 8)
    after = LAG_SCRAPE % (1005, 1006, 1011, 1013, 1013)  # 1,005 new: 5 over 10 ms, 1 of them over 100 ms
    assert promparse.loop_stalls(before, after) == {"rounds": 1005, "over_10ms": 5, "over_100ms": 1}
    assert promparse.loop_stalls(before, SCRAPE % (1, 1, 1, 1)) is None  # a service without the watcher


def test_kind_to_endpoint():
    assert runner._kind_endpoint("fetch_300") == "/v1/features"
    assert runner._kind_endpoint("upload_single") == "/v1/items"
    assert runner._kind_endpoint("upload_batch_1000") == "/v1/items/batch"
