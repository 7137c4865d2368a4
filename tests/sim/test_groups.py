"""VIP groups in the simulator: random groups per seed, every invariant checked per group.

CI runs HAFAILOVER_GROUP_SEEDS seeds (default 100; a seed costs ~0.3 s of CPU). Replay one
seed with its full trace:
    .venv/bin/python -m tests.sim.test_groups 1234
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

import hafailover.core.groups as groups_module
from hafailover.core.actions import Action, CommandResult, Persist, ReleaseVip, Send
from hafailover.core.events import (
    Effect,
    EffectFailed,
    EffectSucceeded,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Stop,
    Switchover,
    TimerFired,
)
from hafailover.core.groups import (
    COLD_START_GROUPS_PER_ROUND,
    TIMER_GROUPS_PER_STEP,
    ForGroup,
    Groups,
    GroupsState,
    GroupVote,
    Tagged,
)
from hafailover.core.liveness import Liveness
from hafailover.core.messages import Heartbeat, MaintenanceRequest, NodeAck, NodeHeartbeat
from hafailover.core.node import Node
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, NodeSpec, SpecError, Timings
from tests.sim.group_harness import GroupSim
from tests.sim.harness import NetworkModel, SimulationError

SEEDS = int(os.environ.get("HAFAILOVER_GROUP_SEEDS", "100"))
FIRST = int(os.environ.get("HAFAILOVER_FIRST_SEED", "0"))
DEFAULT = Timings()
FAST = Timings(heartbeat_interval=0.05, failover_timeout=0.3, lease_guard=0.025)


# ---------------------------------------------------------------------- random groups


def random_groups(rng: random.Random) -> dict[str, ClusterSpec]:
    """1-5 groups over one membership; each group its own priorities, preempt and delay."""
    shape = rng.choice(["3", "3", "3", "5", "2+witness", "4", "1"])
    if shape == "2+witness":
        members = [("node1", False), ("node2", False), ("witness", True)]
    else:
        members = [(f"node{i + 1}", False) for i in range(int(shape))]
    base = rng.choice([DEFAULT, DEFAULT, FAST])
    specs = {}
    for g in range(rng.randint(1, 5)):
        priorities = [0 if w else rng.choice([50, 100, 150, 200, 250]) for _, w in members]
        preempt = rng.random() < 0.4
        timings = Timings(
            base.heartbeat_interval,
            base.failover_timeout,
            base.clock_drift,
            base.lease_guard,
            preempt_delay=rng.uniform(0.5, 3.0),
        )
        nodes = tuple(NodeSpec(n, p, w) for (n, w), p in zip(members, priorities, strict=True))
        specs[f"g{g}"] = ClusterSpec(nodes, timings, preempt)
    return specs


def run_group_seed(seed: int, duration: float = 20.0, trace_len: int = 400) -> GroupSim:
    """One seed to the end; raises SimulationError with a replayable trace on violation."""
    rng = random.Random(seed)
    specs = random_groups(rng)
    network = NetworkModel(
        delay=rng.uniform(0.0002, 0.003),
        jitter=rng.uniform(0.0, 0.01),
        loss=rng.choice([0.0, 0.0, 0.0, 0.02, 0.1]),
        duplicate=rng.choice([0.0, 0.0, 0.02, 0.1]),
    )
    sim = GroupSim(specs, seed, network, trace_len=trace_len)
    names = list(sim.nodes)
    groups = list(specs)
    log = [
        f"{len(groups)} groups "
        + ", ".join(
            f"{g}{[n.priority for n in s.nodes]}{'/preempt' if s.preempt else ''}"
            for g, s in specs.items()
        ),
        f"net {sim.net}",
    ]

    def target() -> str:
        leaders = sim.leaders(rng.choice(groups))
        if leaders and rng.random() < 0.6:
            return leaders[0]
        return rng.choice(names)

    faults: list[tuple[str, Callable[[float], None]]] = [
        ("crash", lambda d: _crash(sim, target(), d)),
        ("freeze", lambda d: _freeze(sim, target(), d)),
        ("partition", lambda d: _partition(sim, target(), names, d, both=True)),
        ("asymmetric", lambda d: _partition(sim, target(), names, d, both=False)),
        ("split", lambda d: _split(sim, rng, names, d)),
        ("loss-burst", lambda d: _loss_burst(sim, rng, names, d)),
        ("unhealthy", lambda d: _unhealthy(sim, target(), rng.choice(groups), d)),
        ("maintenance", lambda d: _maintenance(sim, target(), d)),
        ("switchover", lambda d: _switchover(sim, rng, names, groups)),
        ("stop", lambda d: _stop(sim, target(), d)),
        ("persist-fails", lambda d: sim.fail_effect(target(), Effect.PERSIST, d)),
        ("release-fails", lambda d: sim.fail_effect(target(), Effect.RELEASE, d)),
        ("acquire-fails", lambda d: sim.fail_effect(target(), Effect.ACQUIRE, d)),
    ]
    quiet_from = duration - 4.0
    for _ in range(rng.randint(3, 9)):
        start = rng.uniform(1.0, quiet_from - 0.5)
        length = min(
            rng.choice([rng.uniform(0.05, 0.7), rng.uniform(0.5, 3.0)]), quiet_from - start
        )
        kind, fn = rng.choice(faults)
        log.append(f"{kind} at {start:.3f} for {length:.3f}")
        sim.at(start, "call", lambda fn=fn, length=length: fn(length))
    sim.at(quiet_from, "call", lambda: _repair_all(sim))
    sim.description = "; ".join(log)
    sim.run_until(duration)
    return sim


def _later(sim: GroupSim, delay: float, fn: Callable[[], None]) -> None:
    sim.at(sim.t + delay, "call", fn)


def _crash(sim: GroupSim, name: str, d: float) -> None:
    sim.crash(name)
    _later(sim, d, lambda: sim.restart(name))


def _freeze(sim: GroupSim, name: str, d: float) -> None:
    sim.freeze(name)
    _later(sim, d, lambda: sim.resume(name))


def _stop(sim: GroupSim, name: str, d: float) -> None:
    """A graceful stop (every group hands over), the process exits, and starts again."""
    sim.stop(name)
    _later(sim, min(d, 0.5), lambda: sim.crash(name))
    _later(sim, d + 0.5, lambda: sim.restart(name))


def _block_for(sim: GroupSim, pairs: set[tuple[str, str]], d: float) -> None:
    added = pairs - sim.net.blocked
    for src, dst in added:
        sim.block(src, dst, both=False)

    def undo() -> None:
        sim.net.blocked.difference_update(added)
        sim.disturb()

    _later(sim, d, undo)


def _partition(sim: GroupSim, name: str, names: list[str], d: float, both: bool) -> None:
    pairs = {(name, o) for o in names if o != name}
    if both:
        pairs |= {(o, name) for o in names if o != name}
    _block_for(sim, pairs, d)


def _split(sim: GroupSim, rng: random.Random, names: list[str], d: float) -> None:
    shuffled = rng.sample(names, len(names))
    cut = rng.randint(1, max(1, len(names) - 1))
    left, right = shuffled[:cut], shuffled[cut:]
    _block_for(
        sim, {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}, d
    )


def _loss_burst(sim: GroupSim, rng: random.Random, names: list[str], d: float) -> None:
    if len(names) < 2:
        return
    a, b = rng.sample(names, 2)
    sim.net.link_loss[(a, b)] = rng.choice([0.3, 0.7, 1.0])
    sim.disturb()

    def undo() -> None:
        sim.net.link_loss.pop((a, b), None)
        sim.disturb()

    _later(sim, d, undo)


def _unhealthy(sim: GroupSim, name: str, group: str, d: float) -> None:
    sim.set_health(name, group, False)
    _later(sim, d, lambda: sim.set_health(name, group, True))


def _maintenance(sim: GroupSim, name: str, d: float) -> None:
    sim.inject(name, SetMaintenance(1, True))
    _later(sim, d, lambda: _no_result(sim.inject(name, SetMaintenance(2, False))))


def _no_result(_: object) -> None:
    pass


def _switchover(sim: GroupSim, rng: random.Random, names: list[str], groups: list[str]) -> None:
    sim.inject(
        rng.choice(names), ForGroup(rng.choice(groups), Switchover(3, rng.choice(["", *names])))
    )


def _repair_all(sim: GroupSim) -> None:
    sim.heal()
    for sn in sim.nodes.values():
        sn.fail_until.clear()
    for name, sn in sim.nodes.items():
        if sn.groups is None:
            sim.restart(name)
        elif sn.frozen:
            sim.resume(name)
    for name, sn in sim.nodes.items():
        for g, ok in list(sn.healthy.items()):
            if not ok:
                sim.set_health(name, g, True)
        if sn.groups is not None and sn.groups.maintenance:
            sim.inject(name, SetMaintenance(4, False))


def test_random_groups_hold_every_invariant_per_group() -> None:
    failures: list[str] = []
    for seed in range(FIRST, FIRST + SEEDS):
        try:
            run_group_seed(seed)
        except SimulationError as exc:
            failures.append(str(exc))
            if len(failures) >= 3:
                break
    assert not failures, f"{len(failures)} seed(s) failed; first:\n{failures[0]}"


def test_the_per_group_invariants_have_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A multiplexer that hands one group's messages to another group's election is caught."""

    route_to = Groups._route_to

    def misroute(self: Groups, group: str, event: object, now: float, out: list[Tagged]) -> None:
        names = self.groups
        if group not in names:  # node-level messages and unknown groups: as before
            route_to(self, group, event, now, out)  # type: ignore[arg-type]
            return
        wrong = names[(names.index(group) + 1) % len(names)]
        self._feed(wrong, event, now, out)  # type: ignore[arg-type]

    monkeypatch.setattr(Groups, "_route_to", misroute)
    for seed in range(40):
        try:
            run_group_seed(seed)
        except SimulationError as exc:
            assert "group g" in str(exc)  # named per group
            return
    pytest.fail("40 seeds of misrouted messages and no invariant noticed")


# ---------------------------------------------------------------------- spread


def distinct_priority_groups(rng: random.Random, preempt: bool) -> dict[str, ClusterSpec]:
    names = [f"node{i + 1}" for i in range(rng.choice([3, 3, 5]))]
    timings = Timings(preempt_delay=rng.uniform(0.5, 2.0))
    specs = {}
    for g in range(rng.randint(1, 5)):
        priorities = rng.sample(range(10, 255), len(names))
        nodes = tuple(NodeSpec(n, p) for n, p in zip(names, priorities, strict=True))
        specs[f"g{g}"] = ClusterSpec(nodes, timings, preempt)
    return specs


def best(spec: ClusterSpec) -> str:
    return max(spec.nodes, key=lambda n: n.priority).name


@pytest.mark.parametrize("seed", range(20))
def test_spread_every_group_settles_on_its_highest_priority_node(seed: int) -> None:
    """Everyone healthy, preempt on: after a disturbance, each group ends on its best node."""
    rng = random.Random(seed)
    specs = distinct_priority_groups(rng, preempt=True)
    sim = GroupSim(specs, seed)
    victim = rng.choice(list(sim.nodes))
    sim.at(3.0, "call", lambda: sim.crash(victim))
    sim.at(5.0, "call", lambda: sim.restart(victim))
    sim.run_until(12.0)
    settled = sim.t
    sim.run_until(15.0)
    for g, spec in specs.items():
        assert sim.holders(g) == [best(spec)], (g, spec, sim.vip_log)
        assert not [e for e in sim.vip_log if e[2] == g and e[0] > settled], "flapping"


@pytest.mark.parametrize("seed", range(20))
def test_cold_start_priority_decides_each_group_without_preemption(seed: int) -> None:
    """Nodes booting within half a second in any order, preempt off: every group's first
    leader is its highest-priority node (the start-up settle time), so no hop is needed."""
    rng = random.Random(1000 + seed)
    specs = distinct_priority_groups(rng, preempt=False)
    names = [n.name for n in next(iter(specs.values())).nodes]
    sim = GroupSim(specs, seed, boot_at={n: rng.uniform(0.0, 0.5) for n in names})
    sim.run_until(10.0)
    for g, spec in specs.items():
        assert [n for _, n, _ in sim.elected(g)] == [best(spec)], (g, spec, sim.elected(g))


def test_a_node_unhealthy_for_one_group_keeps_leading_the_other() -> None:
    web = ClusterSpec(
        (NodeSpec("node1", 150), NodeSpec("node2", 100), NodeSpec("node3", 50)), preempt=True
    )
    db = ClusterSpec(
        (NodeSpec("node1", 140), NodeSpec("node2", 100), NodeSpec("node3", 50)), preempt=True
    )
    sim = GroupSim({"web": web, "db": db}, 7)
    sim.run_until(4.0)
    assert sim.holders("web") == sim.holders("db") == ["node1"]
    sim.set_health("node1", "web", False)
    sim.run_until(5.0)
    assert sim.holders("web") == ["node2"] and sim.holders("db") == ["node1"]
    assert not [e for e in sim.vip_log if e[2] == "db" and e[0] > 4.0]


def test_every_group_has_a_holder_soon_and_a_node_death_moves_exactly_its_groups() -> None:
    """Twelve groups spread over three nodes (preempt on): all held within 2 s of a cold start;
    when node1 dies only node1's groups move, within the failover timeout plus one election,
    and the other groups' holders never change."""
    names = ("node1", "node2", "node3")
    specs: dict[str, ClusterSpec] = {}
    for i in range(12):
        first = i % 3
        prio = {names[first]: 150, names[(first + 1) % 3]: 100, names[(first + 2) % 3]: 50}
        specs[f"g{i:02d}"] = ClusterSpec(tuple(NodeSpec(n, prio[n]) for n in names), preempt=True)
    sim = GroupSim(specs, 11)
    sim.run_until(2.0)
    assert all(sim.holders(g) for g in specs), {g: sim.holders(g) for g in specs}
    sim.run_until(5.0)
    before = {g: sim.holders(g) for g in specs}
    assert before == {g: [best(s)] for g, s in specs.items()}
    sim.crash("node1")
    t_crash = sim.t
    sim.run_until(t_crash + 3.0)
    moved = {g for g in specs if sim.holders(g) != before[g]}
    assert moved == {g for g in specs if before[g] == ["node1"]}
    assert all(sim.holders(g) for g in specs)
    for g in moved:
        taken = min(t for t, n, grp, held in sim.vip_log if grp == g and held and t > t_crash)
        assert taken - t_crash < DEFAULT.failover_timeout + 0.5, (g, taken - t_crash)
    assert not [e for e in sim.vip_log if e[0] > t_crash and e[2] not in moved]


# ---------------------------------------------------------------------- batching


def test_idle_traffic_follows_the_nodes_not_the_groups() -> None:
    """Ten groups led by node1, then idle: per peer and heartbeat round node1 sends one
    datagram with one node-level heartbeat (not ten group heartbeats), node2 answers with one
    acknowledgement, and every group's lease still holds on it (node liveness)."""
    nodes = tuple(NodeSpec(n, p) for n, p in (("node1", 150), ("node2", 100), ("node3", 50)))
    specs = {f"g{i}": ClusterSpec(nodes) for i in range(10)}
    sim = GroupSim(specs, 3)
    sim.run_until(5.0)
    assert all(sim.holders(g) == ["node1"] for g in specs)
    sim.datagrams.clear()
    sim.run_until(10.0)
    assert all(sim.holders(g) == ["node1"] for g in specs)
    rounds = 5.0 / DEFAULT.heartbeat_interval
    per_link = Counter((src, dst) for _, src, dst, _ in sim.datagrams)
    items = Counter((src, dst) for _, src, dst, n in sim.datagrams for _ in range(n))
    for link in (("node1", "node2"), ("node2", "node1"), ("node1", "node3")):
        assert rounds * 0.9 <= items[link] <= rounds * 1.1, items
        assert per_link[link] <= rounds * 1.1, per_link
    # The followers have nothing to say to each other.
    assert items[("node2", "node3")] == 0, items
    node1 = sim.nodes["node1"].groups
    assert node1 is not None and node1.liveness.mismatches == 0


def test_spread_idle_traffic_is_one_datagram_per_link_and_round() -> None:
    """Three groups, each led by another node, then idle: every node is a leader and a follower
    of each peer, and holds its acknowledgement of a peer's round back until its own round to
    that peer (`Liveness.hold_ack`), so each direction of each link carries one datagram per
    round (a node-level heartbeat and an acknowledgement), not two; every lease still holds."""
    names = ("node1", "node2", "node3")
    specs: dict[str, ClusterSpec] = {}
    for i, leader in enumerate(names):
        prio = {n: (150 if n == leader else 100 - names.index(n)) for n in names}
        nodes = tuple(NodeSpec(n, prio[n]) for n in names)
        specs[f"g{i}"] = ClusterSpec(nodes)  # a cold start: priority decides
    sim = GroupSim(specs, 5)
    sim.run_until(8.0)
    assert [sim.holders(g) for g in specs] == [[n] for n in names]
    sim.datagrams.clear()
    sim.run_until(13.0)
    assert [sim.holders(g) for g in specs] == [[n] for n in names]
    rounds = 5.0 / DEFAULT.heartbeat_interval
    per_link = Counter((src, dst) for _, src, dst, _ in sim.datagrams)
    items = Counter((src, dst) for _, src, dst, n in sim.datagrams for _ in range(n))
    for src in names:
        for dst in names:
            if src != dst:
                assert per_link[(src, dst)] <= rounds * 1.1, per_link
                assert items[(src, dst)] >= rounds * 1.8, items  # heartbeat + acknowledgement
    for name in names:
        groups = sim.nodes[name].groups
        assert groups is not None and groups.liveness.mismatches == 0


def test_settled_nodes_read_at_their_rounds_until_a_peer_goes_quiet() -> None:
    """Reading at the round (`Groups.settled`, played by the harness as the runtime's
    `SocketReading` does): a node that leads a group reads its peers' datagrams at its own
    rounds, each handled at its arrival; a node that leads nothing reads at once. Leases hold
    throughout; a peer unheard for `SETTLED_CONTACT` intervals ends it."""
    names = ("node1", "node2", "node3")
    one = {"web": ClusterSpec(tuple(NodeSpec(n, p) for n, p in zip(names, (150, 100, 50),
                                                                  strict=True)))}
    sim = GroupSim(one, 21)
    sim.run_until(5.0)
    assert sim.holders("web") == ["node1"]
    assert [sim.nodes[n].deferred for n in names] == [True, False, False]
    drained, gathered = sim.drained, sim.gathered
    sim.run_until(10.0)
    assert sim.holders("web") == ["node1"]
    # Both acknowledgements of every round were read late, by node1's drains, and (they come in
    # within `GATHER` of each other) handled as one step.
    rounds = 5.0 / DEFAULT.heartbeat_interval
    assert sim.drained - drained >= 2 * rounds * 0.9, sim.drained - drained
    assert sim.gathered - gathered >= rounds * 0.8, sim.gathered - gathered
    sim.block("node3", "node1", both=False)
    sim.run_until(10.0 + (groups_module.SETTLED_CONTACT + 1) * DEFAULT.heartbeat_interval)
    assert not sim.nodes["node1"].deferred
    assert sim.holders("web") == ["node1"]  # node2's acknowledgements keep the lease
    sim.heal()
    sim.run_until(12.0)
    assert sim.nodes["node1"].deferred

    spread: dict[str, ClusterSpec] = {}
    for i, leader in enumerate(names):
        prio = {n: (150 if n == leader else 100 - names.index(n)) for n in names}
        spread[f"g{i}"] = ClusterSpec(tuple(NodeSpec(n, prio[n]) for n in names))
    sim = GroupSim(spread, 22)
    sim.run_until(8.0)
    assert [sim.holders(g) for g in spread] == [[n] for n in names]
    assert all(sim.nodes[n].deferred for n in names)
    sim.run_until(13.0)
    assert [sim.holders(g) for g in spread] == [[n] for n in names]
    for name in names:
        groups = sim.nodes[name].groups
        assert groups is not None and groups.liveness.mismatches == 0


def test_settled_needs_a_round_of_its_own_a_leader_everywhere_and_lease_room() -> None:
    names = ("node1", "node2", "node3")
    nodes = tuple(NodeSpec(n, p) for n, p in zip(names, (150, 100, 50), strict=True))
    sim = GroupSim({"web": ClusterSpec(nodes)}, 23)
    sim.run_until(5.0)
    node1 = sim.nodes["node1"]
    assert node1.groups is not None and node1.groups.settled(node1.local(sim.t))
    # Timings whose lease leaves no room for an acknowledgement read a round late: never.
    tight = Timings(heartbeat_interval=0.1, failover_timeout=0.45, lease_guard=0.05)
    assert tight.lease_duration <= 4 * tight.heartbeat_interval
    sim = GroupSim({"web": ClusterSpec(nodes, timings=tight)}, 24)
    sim.run_until(5.0)
    assert sim.holders("web") == ["node1"]
    assert not any(sim.nodes[n].deferred for n in names)
    # A group without a leader (an election under way) unsettles every node.
    sim = GroupSim({"web": ClusterSpec(nodes)}, 25)
    sim.run_until(5.0)
    sim.crash("node1")
    node2 = sim.nodes["node2"]
    leaderless = 0
    while sim.t < 7.0 and sim.holders("web") != ["node2"]:
        sim.run_until(sim.t + 0.005)
        assert node2.groups is not None
        if not node2.groups.node("web").leader:
            leaderless += 1
            assert not node2.groups.settled(node2.local(sim.t))
    assert sim.holders("web") == ["node2"] and leaderless > 0


@dataclass
class TimerSteps:
    """The `TimerFired` steps taken while `counting_timer_steps` was open: `group_steps`, those
    of `Node.handle` (a group's own) per node name; `rounds`, one per step of `Groups.handle`
    (node-level): the node's name and how many group steps ran within it."""

    group_steps: Counter[str] = field(default_factory=Counter)
    rounds: list[tuple[str, int]] = field(default_factory=list)


@contextmanager
def counting_timer_steps() -> Iterator[TimerSteps]:
    """Count the timer steps of `Node.handle` (each group's own) and of `Groups.handle` (the
    node-level ones) while open."""
    counted = TimerSteps()
    calls = [0]
    node_handle, groups_handle = Node.handle, Groups.handle

    def counting_node(self: Node, event: object, now: float) -> list[Action]:
        if isinstance(event, TimerFired):
            counted.group_steps[self.name] += 1
            calls[0] += 1
        return node_handle(self, event, now)  # type: ignore[arg-type]

    def counting(self: Groups, event: object, now: float) -> list[Tagged]:
        calls[0] = 0
        out = groups_handle(self, event, now)  # type: ignore[arg-type]
        if isinstance(event, TimerFired):
            counted.rounds.append((self.name, calls[0]))
        return out

    Node.handle = counting_node  # type: ignore[method-assign]
    Groups.handle = counting  # type: ignore[method-assign]
    try:
        yield counted
    finally:
        Node.handle, Groups.handle = node_handle, groups_handle  # type: ignore[method-assign]


def test_idle_groups_take_no_timer_step_of_their_own() -> None:
    """30 spread groups, then idle: every lease and promise is renewed by node liveness and
    folded in by `Node.touch` after each step, so no group's own timer step runs (before touch,
    each group took two or three a second only to move its lease or promise on), while the
    node-level rounds go on and every group keeps its holder."""
    names = ("node1", "node2", "node3")
    specs: dict[str, ClusterSpec] = {}
    for i in range(30):
        leader = names[i % 3]
        prio = {n: (150 if n == leader else 100 - names.index(n)) for n in names}
        specs[f"g{i:02d}"] = ClusterSpec(tuple(NodeSpec(n, prio[n]) for n in names))
    sim = GroupSim(specs, 9)
    sim.run_until(8.0)
    holders = {g: sim.holders(g) for g in specs}
    assert all(len(h) == 1 for h in holders.values()), holders
    with counting_timer_steps() as counted:
        sim.run_until(13.0)
    steps = counted.group_steps
    rounds = Counter(name for name, _ in counted.rounds)
    assert {g: sim.holders(g) for g in specs} == holders
    per_second = 5.0 / DEFAULT.heartbeat_interval
    for name in names:
        assert rounds[name] >= per_second * 0.9, rounds  # the node-level rounds still run
        assert rounds[name] <= per_second * 1.5, rounds  # and hardly any other timer
        assert steps[name] == 0, steps


def test_a_held_acknowledgement_goes_with_the_next_round_even_one_without_heartbeats() -> None:
    """`Liveness.hold_ack`: held only while a round to that peer is due within an interval;
    the round sends it, also when this node no longer leads anything the peer backs."""
    live = Liveness("node2", ("node1", "node3"), 0.1)
    ack = NodeAck(7, 1)
    assert not live.hold_ack("node1", ack, 1.0)  # no round to node1 due: sent at once
    live.change_expected("node1", 0, 0, 42)
    live.send_round(1.0)  # next round on the grid, at 1.1
    assert live.hold_ack("node1", ack, 1.03)
    assert live.hold_ack("node1", NodeAck(8, 1), 1.05)  # the newer one replaces it
    live.change_expected("node1", 0, 42, 0)  # leads nothing node1 backs any more
    assert live.next_deadline() == pytest.approx(1.1)  # still woken, for the held one
    assert live.send_round(1.1) == [("node1", NodeAck(8, 1))]
    assert live.next_deadline() == float("inf")


# ---------------------------------------------------------------------- the multiplexer


def specs3(*groups: str, preempt: bool = False) -> dict[str, ClusterSpec]:
    nodes = tuple(NodeSpec(n, p) for n, p in (("node1", 150), ("node2", 100), ("node3", 50)))
    return {g: ClusterSpec(nodes, preempt=preempt) for g in groups}


def started(*groups: str, persisted: GroupsState | None = None) -> Groups:
    g = Groups(specs3(*groups), "node2", random.Random(1), persisted)
    g.start(0.0)
    return g


def results(actions: list[Tagged]) -> list[CommandResult]:
    return [t.action for t in actions if isinstance(t.action, CommandResult)]


def test_groups_need_one_membership_and_at_least_one_group() -> None:
    with pytest.raises(SpecError, match="at least one VIP group"):
        Groups({}, "node1", random.Random(1))
    other = ClusterSpec((NodeSpec("node1"), NodeSpec("node4")))
    with pytest.raises(SpecError, match="same nodes"):
        Groups({**specs3("web"), "db": other}, "node1", random.Random(1))


def test_persisted_state_is_per_group_and_maintenance_per_node() -> None:
    state = GroupsState(True, {"web": GroupVote(7, "node1"), "old": GroupVote(3, "node3")})
    g = started("web", "db", persisted=state)
    assert (g.node("web").term, g.node("web").voted_for) == (7, "node1")
    assert (g.node("db").term, g.node("db").voted_for) == (0, "")
    assert g.node("web").maintenance and g.node("db").maintenance and g.maintenance
    assert g.persistent_state() == GroupsState(
        True, {"web": GroupVote(7, "node1"), "db": GroupVote(0, "")}
    )


def test_a_message_goes_to_its_group_only_and_unknown_groups_are_counted() -> None:
    g = started("web", "db")
    out = g.handle(ForGroup("db", MessageReceived("node1", Heartbeat(3, 1))), 1.0)
    assert {t.group for t in out} == {"db"}
    assert g.node("db").term == 3 and g.node("web").term == 0
    assert g.handle(ForGroup("mail", MessageReceived("node1", Heartbeat(3, 1))), 1.0) == []
    assert g.handle(MessageReceived("node1", Heartbeat(3, 1)), 1.0) == []  # no group named
    assert g.unknown_group_messages == 2


def test_switchover_names_a_group_unless_there_is_only_one() -> None:
    g = started("web", "db")
    [refused] = results(g.handle(Switchover(5), 1.0))
    assert (refused.accepted, refused.reason) == (False, Reason.TARGET_UNKNOWN)
    assert "web, db" in refused.detail
    [unknown] = results(g.handle(ForGroup("mail", Switchover(6)), 1.0))
    assert (unknown.request_id, unknown.reason) == (6, Reason.TARGET_UNKNOWN)
    [routed] = results(g.handle(ForGroup("db", Switchover(7)), 1.0))
    assert routed.reason is Reason.NO_LEADER  # db's own answer (no leader known yet)
    one = started("web")
    [single] = results(one.handle(Switchover(8), 1.0))
    assert single.reason is Reason.NO_LEADER


def test_maintenance_is_per_node_one_answer_every_group_persisted() -> None:
    g = started("web", "db", "app")
    out = g.handle(SetMaintenance(9, True), 1.0)
    [answer] = results(out)
    assert (answer.request_id, answer.accepted, answer.reason) == (9, True, Reason.MAINTENANCE_ON)
    assert all(g.node(x).maintenance for x in g.groups) and g.maintenance
    assert {t.group for t in out if isinstance(t.action, Persist)} == {"web", "db", "app"}
    assert g.persistent_state().maintenance
    [off] = results(g.handle(ForGroup("db", SetMaintenance(10, False)), 2.0))
    assert off.reason is Reason.MAINTENANCE_OFF and not any(g.node(x).maintenance for x in g.groups)


def test_a_peers_maintenance_request_applies_to_the_whole_node() -> None:
    g = started("web", "db")
    g.handle(ForGroup("db", MessageReceived("node1", Heartbeat(2, 1))), 1.0)
    out = g.handle(ForGroup("db", MessageReceived("node1", MaintenanceRequest(2, True, 4))), 1.1)
    assert g.maintenance and g.node("web").maintenance and g.node("db").maintenance
    replies = [(t.group, t.action.to) for t in out if isinstance(t.action, Send)]
    assert replies == [("db", "node1")]


def test_stop_and_node_wide_events_reach_every_group() -> None:
    g = started("web", "db")
    g.handle(HealthChanged(False, "disk"), 1.0)
    assert not g.node("web").healthy and not g.node("db").healthy
    g.handle(ForGroup("web", HealthChanged(True)), 1.1)
    assert g.node("web").healthy and not g.node("db").healthy
    g.handle(EffectFailed(Effect.PERSIST, "disk full"), 1.2)
    assert all(g.node(x).faults.failing(Effect.PERSIST) for x in g.groups)
    g.handle(ForGroup("web", EffectSucceeded(Effect.PERSIST)), 1.3)
    assert not g.node("web").faults.failing(Effect.PERSIST)
    g.handle(EffectSucceeded(Effect.PERSIST), 1.4)
    assert not g.node("db").faults.failing(Effect.PERSIST)
    g.handle(Stop(), 1.5)
    assert g.node("web").stopped and g.node("db").stopped


def test_one_deadline_and_the_timer_wakes_every_group_due_within_the_slack() -> None:
    g = started("web", "db")
    assert g.next_deadline() == min(g.node(x).next_deadline() for x in g.groups)
    leader = Groups(specs3("web", "db"), "node1", random.Random(2))
    leader.start(0.0)
    now = 0.0
    for _ in range(200):  # no peers answer: node1 stands in both groups, in vain
        now = leader.next_deadline()
        leader.handle(TimerFired(), now)
    assert now > 3.0 and leader.next_deadline() > now


def test_a_group_whose_lease_ran_out_releases_before_the_step_does_anything_else() -> None:
    """After a freeze, the first event may be for another group: every overdue group is
    woken first, so an expired lease is dropped before anything is acted on."""
    solo = ClusterSpec((NodeSpec("node1"),))
    g = Groups({"web": solo, "db": solo}, "node1", random.Random(3))
    g.start(0.0)
    now = 0.0
    while not all(g.node(x).holds_vip for x in g.groups):
        now = g.next_deadline()
        g.handle(TimerFired(), now)
    out = g.handle(ForGroup("db", HealthChanged(True, "after a freeze")), now + 10.0)
    first = {grp: next(t.action for t in out if t.group == grp) for grp in g.groups}
    assert all(isinstance(a, ReleaseVip) and a.reason is Reason.LEASE_EXPIRED
               for a in first.values()), out  # fmt: skip
    assert out[0].group == "web"  # before anything of the db step it was woken for


def test_view_lists_every_group_in_order() -> None:
    g = started("web", "db")
    view = g.view(1.0)
    assert [name for name, _ in view.groups] == ["web", "db"]
    assert all(v.role is Role.FOLLOWER for _, v in view.groups)
    assert view.name == "node2" and not view.maintenance


if __name__ == "__main__":  # replay one seed with its whole trace
    seed_arg = int(sys.argv[1])
    try:
        done = run_group_seed(seed_arg, trace_len=100_000)
    except SimulationError as exc:
        print(exc)
        raise SystemExit(1) from None
    print(f"seed {seed_arg}: ok ({done.description})")


# ---------------------------------------------------------------------- node liveness


def _caught(seeds: int) -> str:
    for seed in range(seeds):
        try:
            run_group_seed(seed)
        except SimulationError as exc:
            return str(exc)
    return ""


def test_node_liveness_teeth_a_follower_renewing_on_any_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follower that renews its promises on every node-level heartbeat, whatever groups it
    names, backs leases it never promised: the per-group invariants catch it."""

    def renew_always(self: Liveness, sender: str, hb: NodeHeartbeat, now: float) -> NodeAck:
        self._contact[sender] = now
        for bucket, _ in hb.digests:
            self._heard[sender][bucket] = now
        return NodeAck(hb.seq, sum(1 << b for b, _ in hb.digests))

    monkeypatch.setattr(Liveness, "on_heartbeat", renew_always)
    caught = _caught(100)
    assert "without a majority lease" in caught or "two running VIP holders" in caught, caught


def test_node_liveness_teeth_promises_renewed_lazily_but_never_made_concrete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that forgets a lazily renewed promise when it changes role (no `_materialize`
    at the start of a step) votes while a lease counted on it: caught."""
    monkeypatch.setattr(Node, "_materialize", lambda self: None)
    caught = _caught(100)
    assert "without a majority lease" in caught or "two running VIP holders" in caught, caught


def test_hundreds_of_groups_due_together_are_woken_in_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 groups with the same election timings and no cold-start stagger: one step wakes at
    most about `TIMER_GROUPS_PER_STEP` of them, and every group still gets a holder, the one it
    prefers."""
    monkeypatch.setattr(groups_module, "cold_start_stagger", lambda *_: 0.0)
    names = ("node1", "node2", "node3")
    specs: dict[str, ClusterSpec] = {}
    for i in range(200):
        first = i % 3
        prio = {names[first]: 150, names[(first + 1) % 3]: 100, names[(first + 2) % 3]: 50}
        specs[f"g{i:03d}"] = ClusterSpec(tuple(NodeSpec(n, prio[n]) for n in names))
    sim = GroupSim(specs, 21, drift=False)
    with counting_timer_steps() as counted:
        sim.run_until(8.0)
    woken = [woke for _, woke in counted.rounds]
    # Some steps were capped (200 groups fall due together at the start); the few more are
    # VIP holders whose overdue timers run first in any step (freeze safety).
    assert TIMER_GROUPS_PER_STEP <= max(woken) <= TIMER_GROUPS_PER_STEP + 8, max(woken)
    assert all(sim.holders(g) == [best(s)] for g, s in specs.items())


def test_a_timer_step_wakes_the_overdue_groups_before_those_merely_near_their_deadline() -> None:
    """More than `TIMER_GROUPS_PER_STEP` groups within their slack of a deadline, earlier in the
    configuration than one already overdue: the overdue one runs in the first step (earliest
    deadlines first). Taken in configuration order, the chunk was the same not-yet-due groups at
    every step, the overdue group never ran and `next_deadline()` stayed in the past: the timer
    fired again and again at the same time (the livelock of a 500-group cold start)."""
    count = TIMER_GROUPS_PER_STEP + 10
    names = [f"g{i:03d}" for i in range(count)]
    g = Groups(specs3(*names), "node1", random.Random(1))
    g.start(0.0)
    now = 10.0
    slack = DEFAULT.heartbeat_slack
    for i, name in enumerate(names):
        node = g.node(name)
        # Followers: all but the last due within the slack but not yet; the last overdue.
        node._election_at = now + slack / 2 if i < count - 1 else now - 0.001
        node._settle_until = -1.0
        g._deadlines[name] = node.next_deadline()
    assert g.next_deadline() < now
    g.handle(TimerFired(), now)
    assert g.node(names[-1]).role is Role.PRE_CANDIDATE
    assert g.next_deadline() > now


def test_first_elections_of_many_groups_are_spread_the_same_on_every_node() -> None:
    """Up to `COLD_START_GROUPS_PER_ROUND` groups stand at once, as a lone group does; more are
    spread over an interval per that many groups, by a hash of the name (so every node delays a
    group alike and each rank's settle time keeps its order)."""
    interval = DEFAULT.heartbeat_interval
    few = COLD_START_GROUPS_PER_ROUND
    assert groups_module.cold_start_stagger("web", few, interval) == 0.0
    many = 10 * few
    # The first COLD_START_FAST_GROUPS at `few` a round, the others at a slower rate.
    fast = groups_module.COLD_START_FAST_GROUPS
    rounds = fast / few + (many - fast) / groups_module.COLD_START_GROUPS_PER_ROUND_BEYOND
    assert rounds > many / few  # slower beyond the first ones
    offsets = [groups_module.cold_start_stagger(f"g{i}", many, interval) for i in range(many)]
    assert all(0.0 <= o < rounds * interval for o in offsets)
    assert max(offsets) - min(offsets) > 0.9 * rounds * interval
    fifty = [groups_module.cold_start_stagger(f"g{i}", 50, interval) for i in range(50)]
    assert max(fifty) < 50 / few * interval  # 50 groups all stand within ~0.3 s
    assert offsets == [groups_module.cold_start_stagger(f"g{i}", many, interval)
                       for i in range(many)]
    g = Groups(specs3(*(f"g{i}" for i in range(many))), "node3", random.Random(1))
    g.start(0.0)
    for i in range(many):
        node = g.node(f"g{i}")
        # node3 ranks third: two settle times after the refusal window, plus the group's offset.
        expected = DEFAULT.failover_timeout + offsets[i] + 2 * DEFAULT.startup_settle
        assert node.settle_until == pytest.approx(expected)


def test_a_fallback_keeps_the_leaders_key_in_the_node_level_digest() -> None:
    """A mismatch makes the groups of that bucket send their own heartbeats again, but the
    leader's keys stay in the digest (the follower still holds its own): dropping them made
    the next round mismatch too, and every mismatch un-fortified the whole bucket again, so
    hundreds of groups electing at once kept falling back (a cold-start storm)."""
    names = [f"g{i}" for i in range(40)]
    sim = GroupSim(specs3(*names), 5, drift=False)
    sim.run_until(6.0)
    leader = sim.nodes["node1"].groups
    assert leader is not None
    assert all(sim.holders(g) == ["node1"] for g in names)
    expected = list(leader.liveness.expected["node2"])
    stale = [b for b, d in enumerate(expected) if d]
    before = leader.liveness.mismatches
    seq = leader.liveness.seq
    leader.liveness._sent[seq] = (sim.t, {"node2": sum(1 << b for b in stale)})
    leader.handle(MessageReceived("node2", NodeAck(seq, 0)), sim.t)
    assert leader.liveness.mismatches > before
    assert leader.liveness.expected["node2"] == expected
    fallen = [g for g in names if leader.node(g).peers.peers["node2"].fortified_seq is None]
    assert fallen and all(leader.node(g).peers.peers["node2"].keyed for g in fallen)
    sim.run_until(sim.t + 1.0)
    assert all(leader.node(g).peers.peers["node2"].fortified_seq is not None for g in names)
    assert all(sim.holders(g) == ["node1"] for g in names)
