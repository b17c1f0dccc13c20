"""The soak (benchmarks/soak.py) in its short CI mode: mixed pushes, pulls and eviction, zero errors."""

from __future__ import annotations

from benchmarks.soak import run


def test_short_soak_has_no_errors() -> None:
    result = run(seconds=15, workers=4, budget="30MiB")
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] > 500
    assert result["evictions_seen"] > 0  # the budget really was under pressure
    assert result["rss_mib_end"] < 150
