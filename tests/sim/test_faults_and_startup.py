"""Effect failures, the final stop, the cold-start settle and heartbeat coalescing (simulator).

The harness plays the engine's barrier rule (see harness.py); invariants.py checks, at every
step, no two holders (a node stuck with an address it failed to remove excepted, and bounded),
no double vote in a term, and that a stopped node never stands or acquires.
"""

from __future__ import annotations

import itertools
import random

import pytest

from hafailover.core.actions import Send
from hafailover.core.events import Effect, MessageReceived, Switchover, TimerFired
from hafailover.core.messages import Heartbeat, HeartbeatAck
from hafailover.core.node import Node
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings
from tests.sim.harness import NetworkModel, Simulator
from tests.sim.invariants import Invariants
from tests.sim.scenarios import DEFAULT, three_nodes

FT = DEFAULT.failover_timeout

# ---------------------------------------------------------------------------- failed effects


def _settled(spec: ClusterSpec, seed: int = 3) -> Simulator:
    sim = Simulator(spec, seed, NetworkModel())
    Invariants(sim)
    sim.run_until(3.0)
    assert sim.holders() == ["node1"]
    return sim


def test_votes_that_cannot_be_saved_are_not_cast_and_no_leader_is_made_of_them() -> None:
    sim = Simulator(three_nodes(), 5, NetworkModel())
    Invariants(sim)
    sim.fail_effect("node2", Effect.PERSIST, 4.0)
    sim.fail_effect("node3", Effect.PERSIST, 4.0)
    sim.run_until(4.0)
    assert not sim.elected() and not sim.holders()
    assert not [v for v in sim.votes if v[0] in ("node2", "node3")]
    sim.run_until(7.0)  # the disks are back: the retried saves succeed, node1 is elected
    assert sim.holders() == ["node1"]


def test_a_node_restarted_after_a_failed_save_never_votes_twice_in_a_term() -> None:
    for seed in range(30):
        sim = Simulator(three_nodes(), seed, NetworkModel(loss=0.05))
        Invariants(sim)
        rng = random.Random(seed)
        for t in sorted(rng.uniform(0.5, 6.0) for _ in range(6)):
            name = rng.choice(list(sim.nodes))
            sim.at(t, "call", lambda s=sim, n=name: s.fail_effect(n, Effect.PERSIST, 0.5))
            sim.at(t + 0.2, "call", lambda s=sim, n=name: s.crash(n))
            sim.at(t + 0.4, "call", lambda s=sim, n=name: s.restart(n))
        sim.run_until(10.0)  # the harness fails the run on a second vote in one term
        assert sim.holders()


def test_a_failed_release_on_switchover_holds_back_the_successor_until_it_works() -> None:
    sim = _settled(three_nodes())
    t0 = sim.t
    sim.fail_effect("node1", Effect.RELEASE, 0.25)
    sim.inject("node1", Switchover(1, "node2"))
    assert sim.nodes["node1"].stuck_since == t0
    sim.run_until(t0 + 1.0)
    # The address never was on two nodes: node2 stood only after node1's release worked.
    assert sim.stuck_overlaps == 0
    [(t_took, who)] = [(t, n) for t, n, held in sim.vip_log if held and t > t0]
    [t_left] = [t for t, n, held in sim.vip_log if not held and n == "node1" and t > t0]
    assert who == "node2" and t_left < t_took < t_left + 0.05


def test_a_release_that_keeps_failing_exits_and_nobody_takes_the_vip_before() -> None:
    sim = _settled(three_nodes())
    t0 = sim.t
    sim.fail_effect("node1", Effect.RELEASE, 60.0)
    sim.inject("node1", Switchover(1, "node2"))
    sim.run_until(t0 + 4.0)
    assert sim.exits == 1 and sim.stuck_overlaps == 0
    [exit_at] = [t for t, n, held in sim.vip_log if not held and n == "node1" and t > t0]
    assert FT <= exit_at - t0 <= FT * 1.05 + 0.01  # one failover timeout of retries
    takers = [(t, n) for t, n, held in sim.vip_log if held and t > t0]
    assert takers and takers[0][0] > exit_at  # only after the exit removed the address
    assert decided(sim, "node1", Reason.RELEASE_FAILED)


def test_a_failed_acquire_hands_over_and_the_node_retries_after_its_back_off() -> None:
    timings = Timings(preempt_delay=1.0)
    sim = Simulator(three_nodes(timings, preempt=True), 4, NetworkModel())
    Invariants(sim)
    sim.fail_effect("node1", Effect.ACQUIRE, 1.5)
    sim.run_until(1.4)
    assert sim.holders() == ["node2"]
    assert decided(sim, "node1", Reason.ACQUIRE_FAILED)
    node1 = sim.nodes["node1"].node
    assert node1 is not None and not node1.eligible and "adding the VIP" in node1.view(0).fault
    sim.run_until(8.0)  # back-off over, node1 eligible again and preempts
    assert sim.holders() == ["node1"]
    assert decided(sim, "node1", Reason.EFFECT_RECOVERED)


def decided(sim: Simulator, name: str, reason: Reason) -> list[float]:
    return [t for t, n, d in sim.decisions if n == name and d.reason is reason]


# ---------------------------------------------------------------------------- stop


def test_a_stopping_leader_hands_over_and_never_takes_the_vip_again() -> None:
    sim = _settled(three_nodes())
    t0 = sim.t
    sim.stop("node1")
    sim.run_until(t0 + 0.2)
    assert sim.holders() == ["node2"]
    sim.set_health("node2", False)
    sim.set_health("node3", False)
    sim.run_until(t0 + 5.0)  # node1 is the only healthy node left: it still never stands
    assert sim.holders() == [] and not [e for e in sim.elected() if e[0] > t0 + 0.1]


def test_every_node_stopping_at_once_leaves_no_holder() -> None:
    for seed in range(20):
        sim = _settled(three_nodes(), seed)
        t0 = sim.t
        for name in sim.nodes:
            sim.stop(name)
        sim.run_until(t0 + 3.0)
        assert sim.holders() == [], seed


# ---------------------------------------------------------------------------- cold start


def _random_cluster(rng: random.Random) -> ClusterSpec:
    count = rng.choice([3, 3, 5])
    priorities = rng.sample([50, 80, 100, 120, 150, 200], count)
    nodes = tuple(NodeSpec(f"node{i + 1}", p) for i, p in enumerate(priorities))
    return ClusterSpec(nodes, Timings(), preempt=False)


def test_cold_start_in_random_order_elects_the_highest_priority_node_first() -> None:
    """Nodes started in random order within `startup_settle` of each other, preempt off."""
    for seed in range(200):
        rng = random.Random(seed)
        spec = _random_cluster(rng)
        settle = spec.timings.startup_settle
        start_at = {n.name: rng.uniform(0.0, settle * 0.95) for n in spec.nodes}
        sim = Simulator(spec, seed, NetworkModel(), start_at=start_at)
        Invariants(sim)
        sim.run_until(settle + 2 * FT + len(spec.nodes) * settle)
        best = max(spec.nodes, key=lambda n: n.priority).name
        first = sim.elected()
        assert first and first[0][1] == best, (seed, start_at, first[:1])
        assert not [e for e in first if e[1] != best], seed  # no preemption hop either


def test_a_best_node_that_never_comes_only_delays_the_first_election_by_its_settle() -> None:
    spec = three_nodes()
    sim = Simulator(spec, 1, NetworkModel(), start_at={"node1": 1000.0})
    Invariants(sim)
    sim.run_until(FT + DEFAULT.startup_settle + 0.3)
    assert sim.holders() == ["node2"]


def test_one_way_partitions_at_cold_start_never_deadlock() -> None:
    """Random one-way link failures from the start: whenever some majority can talk both
    ways, a node of it holds the VIP within the settle bound."""
    held = 0
    for seed in range(120):
        rng = random.Random(1000 + seed)
        spec = _random_cluster(rng)
        names = list(spec.names)
        blocked = {(a, b) for a in names for b in names if a != b and rng.random() < 0.3}
        sim = Simulator(spec, seed, NetworkModel(blocked=set(blocked)))
        Invariants(sim)
        bound = FT + (len(names) - 1) * spec.timings.startup_settle + 3.0
        sim.run_until(bound)
        if _has_connected_majority(names, blocked, spec.quorum):
            assert sim.holders(), (seed, sorted(blocked))
            held += 1
    assert held > 30  # the check ran on enough seeds to mean something


def _has_connected_majority(names: list[str], blocked: set[tuple[str, str]], quorum: int) -> bool:
    for group in itertools.combinations(names, quorum):
        if all(
            (a, b) not in blocked and (b, a) not in blocked
            for a, b in itertools.combinations(group, 2)
        ):
            return True
    return False


# ---------------------------------------------------------------------------- coalescing


def _leader(spec: ClusterSpec, name: str, at: float) -> Node:
    """A node of `spec` made leader of term 1 at `at` by votes delivered by hand."""
    from hafailover.core.messages import VoteResponse

    node = Node(spec, name, random.Random(0))
    node.start(at - 2.0)
    node.handle(TimerFired(), at - 0.5)  # pre-vote round
    for peer in spec.names[1:]:
        node.handle(MessageReceived(peer, VoteResponse(1, True, True, True, False)), at - 0.5)
    for peer in spec.names[1:]:
        node.handle(MessageReceived(peer, VoteResponse(1, False, True, True, False)), at)
    assert node.role is Role.LEADER
    return node


def test_leaders_elected_at_different_times_send_their_heartbeats_in_the_same_round() -> None:
    """Heartbeat rounds fall on a grid of the interval, and a leader woken within the slack
    before its round sends then: the nodes of several groups on one host send together."""
    spec = ClusterSpec((NodeSpec("a", 150), NodeSpec("b", 100), NodeSpec("c", 50)))
    t = spec.timings
    leaders = [_leader(spec, "a", 10.0 + d) for d in (0.0, 0.005, 0.03, 0.07)]
    deadlines = {round(n.next_deadline(), 9) for n in leaders}
    assert deadlines == {round(10.0 + t.heartbeat_interval, 9)}
    # Woken a little early (inside the slack), every one of them sends now.
    wake = min(n.next_deadline() for n in leaders) - t.heartbeat_slack / 2
    for n in leaders:
        sent = [a for a in n.handle(TimerFired(), wake) if isinstance(a, Send)]
        assert len(sent) == 2 and all(isinstance(a.message, Heartbeat) for a in sent)
    # Outside the slack nothing is sent early.
    late = _leader(spec, "a", 20.0)
    assert [a for a in late.handle(TimerFired(), late.next_deadline() - 2 * t.heartbeat_slack)
            if isinstance(a, Send)] == []
    # The lease counts from the real (early) send time: never longer than it may be.
    n = leaders[-1]
    sent_at = n.next_deadline() - t.heartbeat_slack / 2
    hb = n.handle(TimerFired(), sent_at)
    rnd = next(a.message for a in hb if isinstance(a, Send) and isinstance(a.message, Heartbeat))
    assert isinstance(rnd, Heartbeat)
    n.handle(MessageReceived("b", HeartbeatAck(1, rnd.round, True, True, False)), sent_at + 0.001)
    assert n.lease_until == pytest.approx(sent_at + t.lease_duration)
