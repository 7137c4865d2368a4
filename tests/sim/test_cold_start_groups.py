"""A cold start of hundreds of VIP groups on three nodes settles: the bench's real `Groups` and
real wire codec in memory, in virtual time (`tests.sim.bench_groups`)."""

from __future__ import annotations

import heapq

from hafailover.core.reasons import Role
from tests.sim.bench_groups import NODES, Bench

MAX_STEPS = 40_000  # about 13,000 here


def run(bench: Bench, t_end: float) -> None:
    """`Bench.run_until` with a bound on the steps: a timer that fires again and again at the
    same virtual time (a livelock) fails instead of hanging."""
    steps = 0
    while bench.queue and bench.queue[0][0] <= t_end:
        t, _, fn = heapq.heappop(bench.queue)
        bench.t = max(bench.t, t)
        fn()
        steps += 1
        assert steps < MAX_STEPS, f"{steps} steps and still at t={bench.t:.4f}"
    bench.t = t_end


def test_500_groups_on_three_nodes_settle_at_a_cold_start_on_their_preferred_nodes() -> None:
    """Every group ends with exactly one leader, holding its VIP, on the node it prefers, within
    15 virtual seconds of all three nodes starting at once (first elections spread over ~11 s,
    `cold_start_stagger`); one election per group, no lease
    lost. (Before: the timer step woke the same 64 groups, near their deadline but not due,
    again and again while an overdue group never ran, and virtual time stood still at 0.6 s.)"""
    bench = Bench(500, "spread")
    elected = {n: 0 for n in NODES}
    run(bench, 15.0)
    for i, group in enumerate(bench.nodes["node1"].groups.groups):
        leaders = [n for n, bn in bench.nodes.items() if bn.groups.node(group).role is Role.LEADER]
        holders = [n for n, bn in bench.nodes.items() if bn.groups.node(group).holds_vip]
        assert leaders == holders == [NODES[i % len(NODES)]], (group, leaders, holders)
        for n in leaders:
            elected[n] += 1
        assert {bn.groups.node(group).term for bn in bench.nodes.values()} == {1}, group
    assert elected == {"node1": 167, "node2": 167, "node3": 166}
