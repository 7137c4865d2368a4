"""Failover figures stay within loose bounds (the full table: python -m tests.sim.figures)."""

from __future__ import annotations

import pytest

from tests.sim.figures import FAULTS, Run, measure, percentile, run_fault, summarise, table

SEEDS = 40
# Median failover bounds, seconds: timeouts for the faults the cluster must detect, a few
# round trips for the hand-overs the leader starts itself.
MEDIAN_BOUND = {
    "crash": 0.8,
    "unhealthy": 0.2,
    "frozen": 0.8,
    "partitioned": 0.8,
    "switchover": 0.2,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_failover_time_within_bounds(fault: str) -> None:
    runs = run_fault(fault, SEEDS)
    missing = [r.seed for r in runs if r.failover is None]
    assert not missing, f"{fault}: no new holder for seeds {missing}"
    assert all(r.new and r.new != r.old for r in runs)
    summary = summarise(fault, runs)
    assert summary.failures == 0
    assert summary.median <= MEDIAN_BOUND[fault], table([summary])
    # Nothing is faster than the network allows, and the fault phase really varies.
    assert min(r.failover or 0.0 for r in runs) > 0.0004
    assert len({round(r.at, 4) for r in runs}) > SEEDS // 2
    assert all(5.0 <= r.at < 5.1 for r in runs)


def test_a_detected_fault_takes_about_the_failover_timeout() -> None:
    # Lower bound: followers keep their promise for failover_timeout after the last heartbeat,
    # so a crash is never repaired sooner than failover_timeout minus one heartbeat interval.
    for seed in range(10):
        run = measure("crash", seed)
        assert run.failover is not None and run.failover >= 0.6 - 0.1 - 0.01, run


def test_percentile_and_summary() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 90) == 90.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    runs = [Run("crash", 0, 5.0, "a", "b", 0.5), Run("crash", 1, 5.0, "a", "", None)]
    s = summarise("crash", runs)
    assert (s.runs, s.failures, s.median, s.max) == (2, 1, 0.5, 0.5)
    assert "| crash | 2 | 1 | 500.0 ms |" in table([s])
