"""Timings, leases on a single Node and freeze safety.

What `Timings.validate()` accepts and refuses (with the text the operator sees), the
drift-shortened lease arithmetic, a leader that holds the VIP exactly as long as that lease and
releases first when its loop stalls or its process was frozen, and the follower's side: the
promise that refuses votes.
"""

from __future__ import annotations

import random

import pytest

from hafailover.core.actions import AcquireVip, Action, Announce, Decision, ReleaseVip, Send
from hafailover.core.events import Event, MessageReceived, TimerFired
from hafailover.core.messages import Heartbeat, HeartbeatAck, Message, VoteRequest, VoteResponse
from hafailover.core.node import Node
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, TimingError, Timings
from tests.sim.harness import NetworkModel, Simulator
from tests.sim.invariants import Invariants
from tests.sim.scenarios import DEFAULT, FAST, three_nodes

FT = DEFAULT.failover_timeout

VALID = [
    pytest.param(Timings(), id="defaults"),
    pytest.param(FAST, id="fast"),
    # Exactly 3x: 0.1 * 3 is 0.30000000000000004 in floating point and must still pass.
    pytest.param(Timings(heartbeat_interval=0.1, failover_timeout=0.3), id="exactly-3x-100/300ms"),
    pytest.param(Timings(heartbeat_interval=0.2, failover_timeout=0.6), id="exactly-3x-200/600ms"),
    pytest.param(
        Timings(heartbeat_interval=0.05, failover_timeout=0.15, lease_guard=0.02),
        id="exactly-3x-50/150ms",
    ),
    pytest.param(Timings(clock_drift=0.0), id="no-drift"),
    pytest.param(Timings(failover_timeout=2.0, clock_drift=0.099), id="drift-just-below-10%"),
    pytest.param(Timings(lease_guard=0.0), id="guard-zero"),
    pytest.param(Timings(failover_timeout=1.0, lease_guard=0.1), id="guard-equals-heartbeat"),
    pytest.param(Timings(preempt_delay=0.0), id="preempt-zero"),
    # The same as "drift-eats-the-lease" below, without the drift.
    pytest.param(
        Timings(heartbeat_interval=0.1, failover_timeout=0.3, clock_drift=0.0, lease_guard=0.06),
        id="same-without-drift",
    ),
]

INVALID = [
    pytest.param(Timings(heartbeat_interval=0.0), "heartbeat_interval must be positive",
                 id="heartbeat-zero"),
    pytest.param(Timings(heartbeat_interval=-0.1), "heartbeat_interval must be positive",
                 id="heartbeat-negative"),
    pytest.param(
        Timings(heartbeat_interval=0.1, failover_timeout=0.299),
        "failover_timeout (0.299s) must be at least 3x heartbeat_interval (0.1s): raise "
        "failover_timeout or lower heartbeat_interval",
        id="below-3x",
    ),
    pytest.param(Timings(heartbeat_interval=0.2, failover_timeout=0.5),
                 "must be at least 3x heartbeat_interval (0.2s)", id="below-3x-200ms"),
    pytest.param(Timings(failover_timeout=-0.6), "failover_timeout (-0.6s) must be at least 3x",
                 id="failover-negative"),
    pytest.param(Timings(failover_timeout=0.0), "must be at least 3x", id="failover-zero"),
    pytest.param(Timings(clock_drift=-0.01), r"clock_drift must be in [0, 0.1)",
                 id="drift-negative"),
    pytest.param(Timings(clock_drift=0.1), r"clock_drift must be in [0, 0.1)", id="drift-10%"),
    pytest.param(Timings(clock_drift=1.5), r"clock_drift must be in [0, 0.1)", id="drift-huge"),
    pytest.param(Timings(lease_guard=-0.01),
                 "lease_guard must be between 0 and heartbeat_interval (0.1s)",
                 id="guard-negative"),
    pytest.param(Timings(lease_guard=0.11),
                 "lease_guard must be between 0 and heartbeat_interval (0.1s)",
                 id="guard-above-heartbeat"),
    pytest.param(
        Timings(heartbeat_interval=0.1, failover_timeout=0.3, lease_guard=0.1),
        "the leader's lease (failover_timeout shortened by clock_drift and lease_guard) must "
        "cover at least two heartbeats: raise failover_timeout",
        id="lease-below-two-heartbeats",
    ),
    pytest.param(
        Timings(heartbeat_interval=0.1, failover_timeout=0.3, clock_drift=0.09, lease_guard=0.06),
        "must cover at least two heartbeats", id="drift-eats-the-lease",
    ),
    pytest.param(Timings(preempt_delay=-1.0), "preempt_delay must not be negative",
                 id="preempt-negative"),
    pytest.param(Timings(startup_settle=-0.5), "startup_settle must be between 0 and 60",
                 id="settle-negative"),
    pytest.param(Timings(startup_settle=61.0), "startup_settle must be between 0 and 60",
                 id="settle-huge"),
]


@pytest.mark.parametrize("timings", VALID)
def test_valid_timings_pass(timings: Timings) -> None:
    timings.validate()
    assert timings.lease_duration > 2 * timings.heartbeat_interval


@pytest.mark.parametrize(("timings", "message"), INVALID)
def test_invalid_timings_are_refused_with_the_reason(timings: Timings, message: str) -> None:
    with pytest.raises(TimingError) as info:
        timings.validate()
    assert message in str(info.value)


def test_timing_errors_are_the_operators_to_fix() -> None:
    """A bad timing is a `LocalError` (this host's configuration) and still a `ValueError`
    (so the configuration loader reports it like any other bad value)."""
    from hafailover.errors import LocalError

    with pytest.raises(TimingError) as info:
        Timings(startup_settle=-1.0).validate()
    assert isinstance(info.value, LocalError) and isinstance(info.value, ValueError)


def test_node_refuses_invalid_timings() -> None:
    spec = three_nodes(Timings(heartbeat_interval=0.3, failover_timeout=0.6))
    with pytest.raises(TimingError, match="at least 3x"):
        Node(spec, "node1", random.Random(0))


@pytest.mark.parametrize(
    ("failover", "drift", "guard"),
    [(0.6, 0.01, 0.05), (0.3, 0.01, 0.025), (0.6, 0.0, 0.05), (0.6, 0.0, 0.0), (2.0, 0.099, 0.1),
     (1.0, 0.05, 0.0)],
)
def test_lease_is_shortened_by_drift_and_guard(failover: float, drift: float, guard: float) -> None:
    t = Timings(failover_timeout=failover, clock_drift=drift, lease_guard=guard)
    bound = failover * (1 - drift) / (1 + drift)
    assert t.lease_duration == pytest.approx(bound - guard)
    if drift:
        assert bound < failover
    if guard:
        assert t.lease_duration < bound
    # The worst case: the leader's clock runs slow by `drift` (its lease lasts longer in real
    # time), the follower's fast (its promise ends sooner). The lease still ends `guard` first.
    leader_real = t.lease_duration / (1 - drift)
    follower_real = failover / (1 + drift)
    assert leader_real <= follower_real - guard + 1e-12


def test_default_lease_numbers() -> None:
    assert DEFAULT.lease_duration == pytest.approx(0.6 * 0.99 / 1.01 - 0.05)
    assert 0.53 < DEFAULT.lease_duration < 0.54
    assert DEFAULT.election_step == pytest.approx(0.05)
    assert DEFAULT.election_round_timeout == pytest.approx(0.2)


# ---------------------------------------------------------------------------- the lease on a Node


def started(spec: ClusterSpec, name: str, now: float = 0.0) -> Node:
    node = Node(spec, name, random.Random(7))
    node.start(now)
    return node


def recv(node: Node, sender: str, msg: Message, now: float) -> list[Action]:
    return node.handle(MessageReceived(sender, msg), now)


def vote_responses(actions: list[Action]) -> list[VoteResponse]:
    return [a.message for a in actions
            if isinstance(a, Send) and isinstance(a.message, VoteResponse)]


def vote_req(term: int, pre: bool) -> VoteRequest:
    return VoteRequest(term, pre, healthy=True, maintenance=False)


def elected_node(spec: ClusterSpec) -> tuple[Node, float]:
    """node1 driven to leader of term 1 holding the VIP; returns it and its heartbeat send time."""
    node = Node(spec, "node1", random.Random(7))
    node.start(0.0)
    now = node.next_deadline()
    node.handle(TimerFired(), now)
    assert node.role is Role.PRE_CANDIDATE
    node.handle(MessageReceived("node2", VoteResponse(1, True, True, True, False)), now)
    assert (node.role, node.term) == (Role.CANDIDATE, 1)
    acts = node.handle(MessageReceived("node2", VoteResponse(1, False, True, True, False)), now)
    assert (node.role, node.holds_vip) == (Role.LEADER, False)  # votes alone promise nothing
    assert any(isinstance(a, Send) and isinstance(a.message, Heartbeat) for a in acts)
    acts = node.handle(MessageReceived("node2", HeartbeatAck(1, 1, True, True, False)), now + 0.001)
    assert isinstance(acts[0], AcquireVip) and isinstance(acts[1], Announce)
    return node, now


def test_leader_holds_the_vip_exactly_for_the_drift_shortened_lease() -> None:
    t = DEFAULT
    node, sent = elected_node(three_nodes())
    assert node.lease_until == pytest.approx(sent + t.lease_duration)
    # Heartbeats keep going out but nobody acknowledges them: the lease is not renewed.
    now = sent
    while now + t.heartbeat_interval < sent + t.lease_duration:
        now += t.heartbeat_interval
        acts = node.handle(TimerFired(), now)
        assert any(isinstance(a, Send) for a in acts)
        assert not any(isinstance(a, ReleaseVip) for a in acts) and node.holds_vip
    node.handle(TimerFired(), sent + t.lease_duration - 1e-6)
    assert node.holds_vip
    acts = node.handle(TimerFired(), sent + t.lease_duration)
    assert acts[0] == ReleaseVip(Reason.LEASE_EXPIRED) and not node.holds_vip
    assert node.role is Role.FOLLOWER


def test_an_acknowledged_later_heartbeat_extends_the_lease_from_its_send_time() -> None:
    t = DEFAULT
    node, sent = elected_node(three_nodes())
    second = sent + t.heartbeat_interval
    node.handle(TimerFired(), second)  # round 2
    # The acknowledgement arrives late; the lease still counts from the send time.
    node.handle(MessageReceived("node3", HeartbeatAck(1, 2, True, True, False)), second + 0.3)
    assert node.lease_until == pytest.approx(second + t.lease_duration)
    # An acknowledgement of an older round adds nothing.
    node.handle(MessageReceived("node2", HeartbeatAck(1, 1, True, True, False)), second + 0.31)
    assert node.lease_until == pytest.approx(second + t.lease_duration)


def test_stalled_leader_loop_releases_before_anything_else() -> None:
    late: list[Event] = [
        TimerFired(),
        # A late acknowledgement that would have renewed the lease in time.
        MessageReceived("node2", HeartbeatAck(1, 1, True, True, False)),
    ]
    for event in late:
        node, sent = elected_node(three_nodes())
        acts = node.handle(event, sent + 5.0)
        assert acts[0] == ReleaseVip(Reason.LEASE_EXPIRED), acts
        assert not any(isinstance(a, Announce | AcquireVip) for a in acts)
        assert not node.holds_vip and node.role is Role.FOLLOWER
        assert not any(
            isinstance(a, Send) and isinstance(a.message, Heartbeat) for a in acts
        )
        assert any(isinstance(a, Decision) and a.reason is Reason.LEASE_EXPIRED for a in acts)


@pytest.mark.parametrize("seed", range(4))
def test_frozen_leader_resumed_after_its_lease_releases_first(seed: int) -> None:
    sim = Simulator(three_nodes(), seed, NetworkModel())
    Invariants(sim)  # its resume() also checks that ReleaseVip comes first
    sim.run_until(5.0)
    [leader] = sim.holders()
    steps: list[list[Action]] = []
    sim.observers.append(lambda s, name, acts: steps.append(acts) if name == leader else None)
    sim.freeze(leader)
    sim.run_until(sim.t + 2.0)
    assert sim.holders() and sim.holders() != [leader]
    assert sim.nodes[leader].holds_vip  # the address is still configured while it is stopped
    steps.clear()
    sim.resume(leader)
    first = next(acts for acts in steps if acts)
    assert first[0] == ReleaseVip(Reason.LEASE_EXPIRED)
    assert not any(isinstance(a, Announce | AcquireVip) for a in first)
    assert not sim.nodes[leader].holds_vip and len(sim.holders()) == 1


def test_follower_refuses_votes_while_its_promise_runs() -> None:
    spec = three_nodes()
    node = started(spec, "node2")
    recv(node, "node1", Heartbeat(1, 1), 1.0)  # promise to node1 until 1.6
    assert node.promise == ("node1", 1, 1.0 + FT)
    for pre in (True, False):
        acts = recv(node, "node3", vote_req(2, pre), 1.3)
        [resp] = vote_responses(acts)
        assert not resp.granted and resp.retry_after == pytest.approx(1.0 + FT - 1.3)
    # The refused real vote neither raised the term nor persisted anything.
    assert node.term == 1 and node.voted_for == ""
    # A new heartbeat renews the promise: still refused at 1.61.
    recv(node, "node1", Heartbeat(1, 2), 1.1)
    [resp] = vote_responses(recv(node, "node3", vote_req(2, True), 1.61))
    assert not resp.granted and resp.retry_after == pytest.approx(0.09)
    # Once it ran out (1.1 + 0.6), the same candidate gets both votes.
    [resp] = vote_responses(recv(node, "node3", vote_req(2, True), 1.701))
    assert resp.granted and resp.term == 2
    [resp] = vote_responses(recv(node, "node3", vote_req(2, False), 1.702))
    assert resp.granted and node.term == 2 and node.voted_for == "node3"


def test_new_node_refuses_votes_for_one_failover_timeout() -> None:
    node = started(three_nodes(), "node2", now=10.0)
    for now in (10.0, 10.3, 10.599):
        for pre in (True, False):
            [resp] = vote_responses(recv(node, "node1", vote_req(1, pre), now))
            assert not resp.granted, (now, pre)
            assert resp.retry_after == pytest.approx(10.0 + FT - now)
    assert node.term == 0
    [resp] = vote_responses(recv(node, "node1", vote_req(1, False), 10.601))
    assert resp.granted and node.voted_for == "node1"
