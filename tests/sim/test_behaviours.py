"""Scenario tests named after the behaviours of the election core (the design list in node.py).

Each test drives the simulator (invariants checked at every step) or a single `Node`, and
asserts one observable behaviour: who holds the VIP, when, and what the action lists say.
Quorum, witness and stability live in test_quorum.py; timings, leases on a single Node and
freeze safety in test_timings.py; failed effects, stop and the cold start in
test_faults_and_startup.py; operator paths step by step in tests/transcripts/.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from hafailover.core.actions import (
    Action,
    CommandResult,
    ReleaseVip,
    Send,
)
from hafailover.core.events import (
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Switchover,
)
from hafailover.core.messages import (
    Heartbeat,
    Message,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from hafailover.core.node import Node
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings
from tests.sim.harness import NetworkModel, Simulator
from tests.sim.invariants import Invariants
from tests.sim.scenarios import DEFAULT, FAST, three_nodes

FT = DEFAULT.failover_timeout

# ---------------------------------------------------------------------------- helpers


def settle(
    spec: ClusterSpec, seed: int = 1, until: float = 5.0, drift: bool = True
) -> tuple[Simulator, str]:
    """A simulator with invariants, run until one node holds the VIP; returns it and the holder."""
    sim = Simulator(spec, seed, NetworkModel(), drift=drift)
    Invariants(sim)
    sim.run_until(until)
    holders = sim.holders()
    assert len(holders) == 1, f"seed {seed}: expected one holder at {until}s, got {holders}"
    return sim, holders[0]


def node_of(sim: Simulator, name: str) -> Node:
    node = sim.nodes[name].node
    assert node is not None, f"{name} is not running"
    return node


def acquires(sim: Simulator, after: float) -> list[tuple[float, str]]:
    return [(t, n) for t, n, held in sim.vip_log if held and t >= after]


def releases(sim: Simulator, name: str, after: float) -> list[float]:
    return [t for t, n, held in sim.vip_log if not held and n == name and t >= after]


def decided(sim: Simulator, name: str, reason: Reason, after: float = 0.0) -> list[float]:
    return [t for t, n, d in sim.decisions if n == name and d.reason is reason and t >= after]


def index_of(actions: list[Action], kind: type[object], msg: type[object] | None = None) -> int:
    for i, a in enumerate(actions):
        if isinstance(a, kind) and (msg is None or isinstance(getattr(a, "message", None), msg)):
            return i
    raise AssertionError(f"no {kind.__name__} {msg.__name__ if msg else ''} in {actions}")


def result_of(actions: list[Action]) -> CommandResult:
    assert actions and isinstance(actions[-1], CommandResult), actions
    return actions[-1]


def started(spec: ClusterSpec, name: str, now: float = 0.0) -> Node:
    node = Node(spec, name, random.Random(7))
    node.start(now)
    return node


def recv(node: Node, sender: str, msg: Message, now: float) -> list[Action]:
    return node.handle(MessageReceived(sender, msg), now)


def vote_responses(actions: list[Action]) -> list[VoteResponse]:
    return [a.message for a in actions if isinstance(a, Send)
            and isinstance(a.message, VoteResponse)]


def vote_req(term: int, pre: bool, healthy: bool = True, maintenance: bool = False) -> VoteRequest:
    return VoteRequest(term, pre, healthy, maintenance)


# ---------------------------------------------------------------------------- leases


@pytest.mark.parametrize("timings", [DEFAULT, FAST], ids=["default", "fast"])
@pytest.mark.parametrize("seed", range(6))
def test_partitioned_leader_releases_vip_before_new_leader_acquires(
    seed: int, timings: Timings
) -> None:
    sim, old = settle(three_nodes(timings), seed)
    t0 = sim.t
    for other in sim.nodes:
        if other != old:
            sim.block(old, other)
    sim.run_until(t0 + 3.0)
    released = releases(sim, old, t0)
    taken = [(t, n) for t, n in acquires(sim, t0) if n != old]
    assert released and taken, sim.vip_log
    assert released[0] < taken[0][0], f"old released at {released[0]}, new acquired {taken[0]}"
    # The old leader's lease, counted from the last acknowledged heartbeat, ends within one
    # failover timeout of the partition.
    assert released[0] - t0 <= timings.failover_timeout
    assert decided(sim, old, Reason.LEASE_EXPIRED, t0)


# ---------------------------------------------------------------------------- PreVote


@pytest.mark.parametrize("seed", range(5))
def test_rejoining_node_does_not_inflate_term_or_disrupt_leader(seed: int) -> None:
    sim, leader = settle(three_nodes(), seed)
    term = node_of(sim, leader).term
    follower = next(n for n in sim.nodes if n != leader)
    t0 = sim.t
    sim.block(follower, leader)
    sim.block(follower, next(n for n in sim.nodes if n not in (leader, follower)))
    sim.run_until(t0 + 5.0)
    # It did try to stand, only by PreVote, without raising its term.
    assert decided(sim, follower, Reason.LEADER_LOST, t0)
    assert not decided(sim, follower, Reason.PREVOTE_WON, t0)
    sim.heal()
    sim.run_until(t0 + 8.0)
    assert sim.holders() == [leader] and sim.leader_names() == [leader]
    for sn in sim.nodes.values():
        assert sn.node is not None and sn.node.term == term, sn.name
    assert sim.vip_log[-1][1:] == (leader, True) and not releases(sim, leader, 0.0)
    assert node_of(sim, follower).leader == leader


# ---------------------------------------------------------------------------- health gating


@pytest.mark.parametrize("seed", range(8))
def test_unhealthy_leader_releases_and_a_healthy_peer_holds_within_200ms(seed: int) -> None:
    sim, old = settle(three_nodes(), seed)
    t0 = sim.t
    sim.set_health(old, False)
    assert releases(sim, old, t0) == [t0]  # in the very step of the verdict
    sim.run_until(t0 + 1.0)
    taken = [(t, n) for t, n in acquires(sim, t0) if n != old]
    assert taken and taken[0][0] - t0 <= 0.2, taken
    assert sim.holders() == [taken[0][1]]


def test_unhealthy_node_never_stands_and_can_stand_again_when_healthy() -> None:
    sim = Simulator(three_nodes(), 4, NetworkModel())
    Invariants(sim)
    sim.set_health("node1", False)  # the best-ranked node, before the first election
    sim.run_until(5.0)
    assert sim.holders() == ["node2"]
    sim.crash("node2")
    sim.run_until(10.0)
    assert sim.holders() == ["node3"]  # elected with the unhealthy node's vote
    for reason in (Reason.LEADER_LOST, Reason.PREVOTE_WON, Reason.ELECTED):
        assert not decided(sim, "node1", reason), reason
    assert all(n != "node1" for _, n, _ in sim.vip_log)
    sim.set_health("node1", True)
    sim.restart("node2")
    sim.run_until(12.0)
    t0 = sim.t
    sim.crash("node3")
    sim.run_until(t0 + 2.0)
    assert sim.holders() == ["node1"]


@pytest.mark.parametrize("pre", [True, False])
def test_vote_requests_from_unhealthy_or_maintenance_candidates_are_refused(pre: bool) -> None:
    node = started(three_nodes(), "node2")
    now = 2.0  # no promise runs any more
    for healthy, maintenance in ((False, False), (True, True)):
        [resp] = vote_responses(recv(node, "node1", vote_req(1, pre, healthy, maintenance), now))
        assert not resp.granted and resp.retry_after == 0.0
    assert node.voted_for == ""
    [resp] = vote_responses(recv(node, "node1", vote_req(1, pre), now))
    assert resp.granted


def test_unhealthy_follower_ignores_timeout_now() -> None:
    node = started(three_nodes(), "node2")
    recv(node, "node1", Heartbeat(1, 1), 1.0)
    node.handle(HealthChanged(False), 1.05)
    acts = recv(node, "node1", TimeoutNow(1), 1.1)
    assert node.role is Role.FOLLOWER and node.term == 1
    assert not any(isinstance(a, Send) for a in acts)


# ---------------------------------------------------------------------------- priority


def test_highest_priority_node_wins_the_first_election() -> None:
    # Priority deliberately against name order, with a realistic network.
    spec = ClusterSpec(
        (NodeSpec("alpha", 50), NodeSpec("bravo", 100), NodeSpec("charlie", 200),
         NodeSpec("delta", 100), NodeSpec("echo", 10)),
    )
    wins = 0
    for seed in range(50):
        sim = Simulator(spec, seed, NetworkModel(delay=0.0002, jitter=0.0008))
        Invariants(sim)
        sim.run_until(3.0)
        first = sim.elected()
        assert first, seed
        wins += first[0][1] == "charlie"
    assert wins >= 48, wins


def _preempt_cluster(preempt: bool, delay: float) -> tuple[Simulator, float]:
    """node1 (priority 150) crashes, node2 takes over, node1 returns at the returned time."""
    timings = Timings(preempt_delay=delay)
    sim, first = settle(three_nodes(timings, preempt), 2, drift=False)
    assert first == "node1"
    sim.crash("node1")
    sim.run_until(sim.t + 2.0)
    assert sim.holders() == ["node2"]
    sim.restart("node1")
    return sim, sim.t


def test_no_preempt_keeps_the_leader_when_a_better_node_returns() -> None:
    sim, t_r = _preempt_cluster(preempt=False, delay=1.0)
    sim.run_until(t_r + 15.0)
    assert sim.holders() == ["node2"]
    assert not acquires(sim, t_r) and not [e for e in sim.elected() if e[0] >= t_r]


def test_preempt_hands_over_after_preempt_delay_not_before() -> None:
    delay = 2.0
    sim, t_r = _preempt_cluster(preempt=True, delay=delay)
    sim.run_until(t_r + delay - 1e-6)
    assert sim.holders() == ["node2"] and not acquires(sim, t_r)
    sim.run_until(t_r + delay + 1.0)
    assert sim.holders() == ["node1"]
    [(t_acq, _)] = acquires(sim, t_r)
    released = releases(sim, "node2", t_r)
    assert released and released[0] < t_acq
    # node1 acknowledged its first heartbeat within one interval of its restart.
    assert t_r + delay <= released[0] <= t_r + delay + DEFAULT.heartbeat_interval + 0.01
    assert t_acq - released[0] <= 0.2
    assert decided(sim, "node2", Reason.PREEMPT, t_r)


def test_preempt_timer_restarts_when_the_better_node_flaps() -> None:
    delay = 2.0
    sim, t_r = _preempt_cluster(preempt=True, delay=delay)
    sim.run_until(t_r + 1.0)
    sim.set_health("node1", False)
    sim.run_until(t_r + 1.5)
    sim.set_health("node1", True)
    t_ok = sim.t
    sim.run_until(t_ok + delay - 0.01)
    assert sim.holders() == ["node2"]
    sim.run_until(t_ok + delay + 1.0)
    assert sim.holders() == ["node1"]


# ---------------------------------------------------------------------------- transfer


def test_switchover_releases_the_vip_before_sending_timeout_now() -> None:
    sim, leader = settle(three_nodes(), 1)
    acts = sim.inject(leader, Switchover(7))
    release = index_of(acts, ReleaseVip)
    timeout_now = index_of(acts, Send, TimeoutNow)
    assert release < timeout_now
    assert all(i > release for i, a in enumerate(acts) if isinstance(a, Send))
    result = result_of(acts)
    assert result.accepted and result.reason is Reason.ACCEPTED and result.request_id == 7


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", ["node2", "node3"])
def test_switchover_to_a_named_node_moves_the_vip_within_200ms(seed: int, target: str) -> None:
    sim, leader = settle(three_nodes(), seed)
    assert leader != target
    t0 = sim.t
    assert result_of(sim.inject(leader, Switchover(1, target))).detail == target
    sim.run_until(t0 + 1.0)
    taken = acquires(sim, t0)
    assert taken and taken[0][1] == target and taken[0][0] - t0 <= 0.2, taken
    assert sim.holders() == [target]


def _witness_cluster() -> ClusterSpec:
    return ClusterSpec((NodeSpec("node1", 150), NodeSpec("node2", 100), NodeSpec("node3", 50),
                        NodeSpec("wit", 0, witness=True)))


def _setup_nothing(sim: Simulator, leader: str) -> None:
    pass


def _setup_unhealthy(sim: Simulator, leader: str) -> None:
    sim.set_health("node3", False)


def _setup_maintenance(sim: Simulator, leader: str) -> None:
    sim.inject("node3", SetMaintenance(1, True))


def _setup_unreachable(sim: Simulator, leader: str) -> None:
    sim.block(leader, "node3")


def _setup_others_unhealthy(sim: Simulator, leader: str) -> None:
    sim.set_health("node2", False)
    sim.set_health("node3", False)


@pytest.mark.parametrize(
    ("target", "setup", "reason"),
    [
        pytest.param(target, setup, reason, id=reason.value)
        for target, setup, reason in [
            ("nodeX", _setup_nothing, Reason.TARGET_UNKNOWN),
            ("wit", _setup_nothing, Reason.TARGET_IS_WITNESS),
            ("node1", _setup_nothing, Reason.TARGET_IS_LEADER),
            ("node3", _setup_unhealthy, Reason.TARGET_UNHEALTHY),
            ("node3", _setup_maintenance, Reason.TARGET_IN_MAINTENANCE),
            ("node3", _setup_unreachable, Reason.TARGET_UNREACHABLE),
            ("", _setup_others_unhealthy, Reason.NO_ELIGIBLE_TARGET),
        ]
    ],
)
def test_switchover_is_refused_for_a_bad_target(
    target: str, setup: Callable[[Simulator, str], None], reason: Reason
) -> None:
    sim, leader = settle(_witness_cluster(), 5)
    assert leader == "node1"
    setup(sim, leader)
    sim.run_until(sim.t + 2 * FT)  # the leader learns the target's state (or its silence)
    t0 = sim.t
    result = result_of(sim.inject(leader, Switchover(3, target)))
    assert (result.accepted, result.reason) == (False, reason)
    sim.run_until(t0 + 1.0)
    assert sim.holders() == [leader] and not acquires(sim, t0)


@pytest.mark.parametrize(
    ("origin", "target", "reason"),
    [("node3", "nodeX", Reason.TARGET_UNKNOWN), ("node3", "wit", Reason.TARGET_IS_WITNESS),
     ("wit", "wit", Reason.TARGET_IS_WITNESS)],
)
def test_follower_refuses_what_it_can_judge_itself(
    origin: str, target: str, reason: Reason
) -> None:
    sim, leader = settle(_witness_cluster(), 15)
    result = result_of(sim.inject(origin, Switchover(2, target)))
    assert (result.accepted, result.reason) == (False, reason)
    assert not any(isinstance(a, Send) for a in sim.inject(origin, Switchover(2, target)))
    sim.run_until(sim.t + 1.0)
    assert sim.holders() == [leader]


def test_switchover_on_an_isolated_follower_is_refused_with_no_leader() -> None:
    sim, leader = settle(three_nodes(), 6)
    follower = next(n for n in sim.nodes if n != leader)
    for other in sim.nodes:
        if other != follower:
            sim.block(follower, other)
    sim.run_until(sim.t + 2 * FT)
    for target in ("", leader):
        result = result_of(sim.inject(follower, Switchover(4, target)))
        assert (result.accepted, result.reason) == (False, Reason.NO_LEADER)
    assert sim.holders() == [leader]


@pytest.mark.parametrize("target", ["", "node3"])
def test_switchover_from_a_follower_is_forwarded_and_works(target: str) -> None:
    sim, leader = settle(three_nodes(), 8)
    assert leader == "node1"
    t0 = sim.t
    actions = sim.inject("node3", Switchover(5, target))
    assert not [a for a in actions if isinstance(a, CommandResult)]
    sim.run_until(t0 + 1.0)
    # The answer comes from the leader that carried it out, in a later step.
    answer = sim.result("node3", 5)
    assert answer is not None and answer[0] - t0 < 0.05
    result = answer[1]
    assert (result.accepted, result.reason, result.detail) == (
        True, Reason.ACCEPTED, target or "node2"
    )
    taken = acquires(sim, t0)
    assert taken and taken[0][0] - t0 <= 0.2
    assert taken[0][1] == (target or "node2")  # without a target: the best other node
    assert decided(sim, "node1", Reason.SWITCHOVER, t0)


def test_stale_and_duplicated_timeout_now_is_ignored() -> None:
    # Every message is delivered twice, so the target sees its TimeoutNow again as a leader.
    sim = Simulator(three_nodes(), 9, NetworkModel(duplicate=1.0))
    Invariants(sim)
    sim.run_until(5.0)
    assert sim.holders() == ["node1"]
    old_term = node_of(sim, "node1").term
    t0 = sim.t
    sim.inject("node1", Switchover(1, "node2"))
    sim.run_until(t0 + 1.0)
    assert sim.holders() == ["node2"]
    assert len(decided(sim, "node2", Reason.TRANSFER_RECEIVED, t0)) == 1
    assert len([e for e in sim.elected() if e[0] >= t0]) == 1
    new_term = old_term + 1
    stale: list[tuple[str, str, int]] = [
        ("node3", "node1", old_term),  # the old leader's, replayed late
        ("node2", "node1", old_term),  # to the new leader
        ("node3", "node2", old_term),  # the current leader but an old term
        ("node3", "node1", new_term),  # the right term but not from the leader
    ]
    for dest, sender, term in stale:
        acts = sim.inject(dest, MessageReceived(sender, TimeoutNow(term)))
        assert acts == [], (dest, sender, term, acts)
    sim.run_until(t0 + 3.0)
    assert sim.holders() == ["node2"] and len([e for e in sim.elected() if e[0] >= t0]) == 1
    assert all(sn.node is not None and sn.node.term == new_term for sn in sim.nodes.values())


# ---------------------------------------------------------------------------- maintenance


def test_node_in_maintenance_never_becomes_leader() -> None:
    sim = Simulator(three_nodes(), 10, NetworkModel())
    Invariants(sim)
    sim.inject("node1", SetMaintenance(1, True))
    sim.run_until(5.0)
    assert sim.holders() == ["node2"]
    sim.crash("node2")
    sim.run_until(10.0)
    assert sim.holders() == ["node3"]
    assert not decided(sim, "node1", Reason.LEADER_LOST)
    assert all(n != "node1" for _, n, _ in sim.elected())


def test_leader_put_in_maintenance_transfers_away() -> None:
    sim, leader = settle(three_nodes(), 11)
    t0 = sim.t
    acts = sim.inject(leader, SetMaintenance(2, True))
    assert index_of(acts, ReleaseVip) < index_of(acts, Send, TimeoutNow)
    assert result_of(acts).reason is Reason.MAINTENANCE_ON
    sim.run_until(t0 + 5.0)
    taken = acquires(sim, t0)
    assert taken and taken[0][1] != leader and taken[0][0] - t0 <= 0.2
    assert sim.holders() == [taken[0][1]]


def test_maintenance_persists_across_restart() -> None:
    sim, leader = settle(three_nodes(), 12)
    assert leader == "node1"
    sim.inject("node1", SetMaintenance(1, True))
    sim.run_until(sim.t + 1.0)
    assert sim.nodes["node1"].persisted.maintenance
    sim.crash("node1")
    sim.run_until(sim.t + 1.0)
    sim.restart("node1")
    restarted = sim.nodes["node1"].node
    assert restarted is not None and restarted.maintenance
    t0 = sim.t
    sim.crash(sim.holders()[0])
    sim.run_until(t0 + 5.0)
    assert sim.holders() and sim.holders() != ["node1"]
    assert not decided(sim, "node1", Reason.LEADER_LOST, t0)


def test_all_nodes_in_maintenance_means_no_holder() -> None:
    sim, _ = settle(three_nodes(), 13)
    for name in sim.nodes:
        sim.inject(name, SetMaintenance(1, True))
    t0 = sim.t
    assert sim.holders() == []
    sim.run_until(t0 + 10.0)
    assert not acquires(sim, t0) and not [e for e in sim.elected() if e[0] >= t0]
    sim.inject("node3", SetMaintenance(2, False))
    sim.run_until(t0 + 12.0)
    assert sim.holders() == ["node3"]


def test_maintenance_on_another_node_is_forwarded_and_applied() -> None:
    sim, leader = settle(three_nodes(), 14)
    follower = next(n for n in sim.nodes if n != leader)
    t0 = sim.t
    sim.inject(follower, SetMaintenance(9, True, node=leader))
    sim.run_until(t0 + 1.0)
    answer = sim.result(follower, 9)
    assert answer is not None
    result = answer[1]
    assert (result.accepted, result.reason, result.detail) == (True, Reason.MAINTENANCE_ON, leader)
    assert node_of(sim, leader).maintenance
    assert sim.holders() and sim.holders() != [leader]
    unknown = result_of(sim.inject(follower, SetMaintenance(10, True, node="nodeX")))
    assert (unknown.accepted, unknown.reason) == (False, Reason.TARGET_UNKNOWN)


# ---------------------------------------------------------------------------- misuse and bugs


def test_handle_before_start_is_the_callers_misuse() -> None:
    from hafailover.core.node import NotStarted
    from hafailover.errors import LocalError

    node = Node(three_nodes(), "node1", random.Random(0))
    with pytest.raises(NotStarted) as info:
        node.handle(HealthChanged(True), 0.0)
    assert isinstance(info.value, LocalError)


def test_an_illegal_role_change_is_refused_as_raft_panics() -> None:
    from hafailover.core.node import InvalidTransition

    node = started(three_nodes(), "node1")
    with pytest.raises(InvalidTransition, match=r"invalid transition \[follower -> leader\]"):
        node._become_leader(1.0)  # a follower never becomes leader without standing
