"""VIP groups: one independent election per group, multiplexed over one node.

A node runs one `Node` per VIP group, each with its own `ClusterSpec` (the group's priorities,
preempt and preempt delay over the same members), its own term, vote, promise and lease.
`Groups` owns them and is what the runtime talks to: it routes each event to the group(s) it
concerns, tags each action with its group, and offers one `next_deadline()` for all groups.

Routing (`handle`):

* `ForGroup(g, event)`: to group g only. The runtime wraps a received message, a per-group
  health verdict (that group's checks and link state), a switchover and a failed or recovered
  acquire/release this way. A message for a group this node does not have is dropped and
  counted (`unknown_group_messages`): the wire codec has already dropped such items, so this
  only happens during a reload; a switchover for one is refused (`TARGET_UNKNOWN`).
* `TimerFired`: to every group whose deadline is due within its `Timings.heartbeat_slack` once
  touched (`Node.touch`: node liveness's renewals folded in, without a step), at most
  `TIMER_GROUPS_PER_STEP` of them per step (the rest stay due), then the node-level round of
  `hafailover.core.liveness` if it is due.
  A leader woken that early sends its heartbeat at once, so once leaders have fired together
  their heartbeats stay in the same round and, per peer, in the same datagram.
* After every step, the groups due within the next round are touched: in steady state a group's
  deadline is a lease or promise node liveness keeps renewing, and it never comes due.
* `Stop`, `HealthChanged` (node-wide), `VipConflict`, `EffectFailed` and `EffectSucceeded`
  without a group: to every group (`EffectSucceeded` only where that effect is failing). The
  state file is shared, so a failed save is every group's failed save: report persist
  failures and recoveries without a group.
* `Switchover` without a group: to the only group, refused if there are several.
* `SetMaintenance` (with or without a group; maintenance is per node): to the first group,
  whose `CommandResult` answers it; a remote node's request is forwarded in that group. Then,
  whenever any group's maintenance flag differs from the node's, the change is applied to every
  other group (their results are internal and dropped). A `MaintenanceRequest` from a peer is
  therefore checked against the term of the group it came in, and then applies node-wide.

Actions come back as `Tagged(group, action)`, each group's in the order its `Node` returned
them (`hafailover.core.actions`); the barrier rule applies per group: a failed barrier of group
g stops g's later actions of the step, never another group's.

`Persist` carries one group's state, but the file holds all groups (`GroupsState`,
`persistent_state()`): the runtime saves the whole state at the first `Persist` of a step and
counts the step's later `Persist` actions as done (the state it wrote is at least as new as
theirs), so one step costs one fsync however many groups persisted in it. Writing a group's
state earlier than its own `Persist` asks is always safe: it is the node's current state.

Safety per group (argued in docs/architecture.md, "VIP groups"): groups share no protocol
state. Each `Node` has its own term, vote, promise and lease; messages are tagged with their
group inside the authenticated datagram, so no message of one group's election ever reaches
another's `Node`; each group's term and vote are persisted under its own name. So every
invariant of one election (one vote per term, one leader per term, lease before VIP) holds for
each group exactly as for a single-group node. What the groups do share, the node's
maintenance flag, its health inputs, its clock, the state file and the socket, only ever make a
group *less* able to act (refuse, step down, not stand), never grant a vote or a lease.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from hafailover.core.actions import Action, CommandResult, PersistentState, Send
from hafailover.core.events import (
    EffectFailed,
    EffectSucceeded,
    Event,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Stop,
    Switchover,
    TimerFired,
    VipConflict,
)
from hafailover.core.liveness import Liveness, bucket_of, key
from hafailover.core.messages import NodeAck, NodeHeartbeat
from hafailover.core.node import Node, RandomSource
from hafailover.core.reasons import Reason
from hafailover.core.spec import ClusterSpec, SpecError
from hafailover.core.view import NodeView

DEFAULT_GROUP = "default"
"""The one group of a configuration without `groups:` (top-level `vips:`)."""

NODE_LEVEL = ""
"""The "group" of node-level messages (`NodeHeartbeat`, `NodeAck`) and actions."""

INF = float("inf")

# The request id of the maintenance changes the multiplexer itself applies to the other groups
# (their results are dropped). Operator request ids are positive.
_INTERNAL = -1
_TIMER = TimerFired()

TIMER_GROUPS_PER_STEP = 64
"""At most this many groups are woken by one `TimerFired`; the others stay due, so
`next_deadline()` is still past and the caller fires again at once, after its event loop had a
turn (hundreds of groups whose election timers fall together do not stall the loop in one step)."""


# At a cold start with more than COLD_START_GROUPS_PER_ROUND groups, the groups' first
# elections are spread over one heartbeat interval per COLD_START_GROUPS_PER_ROUND groups for
# the first COLD_START_FAST_GROUPS, and one interval per COLD_START_GROUPS_PER_ROUND_BEYOND
# beyond them (`cold_start_stagger`). The slower rate beyond is measured, not derived:
# a first election costs a real daemon far more than the core's step (the vote persisted, the
# VIP added and announced, decisions logged), and three daemons on two cores electing 16 groups
# a round from the start (500 groups over 3 s) never settled, 4 a round (500 over 11 s) settled
# in 15-20 s (`python -m lab.bench_groups_daemon cpu --groups 500`). 50 groups still stand
# within a third of a second.
COLD_START_GROUPS_PER_ROUND = 16
COLD_START_FAST_GROUPS = 64
COLD_START_GROUPS_PER_ROUND_BEYOND = 4


def cold_start_stagger(group: str, count: int, interval: float) -> float:
    """How much later than a lone group's `group` stands for its first election, when a node
    starts with `count` groups.

    Without it every group's best-ranked node stands one `failover_timeout` after the start, all
    at once: hundreds of elections, then hundreds of per-group heartbeat rounds until the peers
    fortify, in the same few rounds. Late enough, their acknowledgements come back after leases
    and round timeouts ran out, and the groups elect again (a storm that never settled at 500
    groups on three daemons sharing two cores). Spread over one heartbeat interval per
    `COLD_START_GROUPS_PER_ROUND` groups for the first `COLD_START_FAST_GROUPS`, and per
    `COLD_START_GROUPS_PER_ROUND_BEYOND` beyond them, about that many first elections start
    per round.

    The offset is a hash of the group's name: the same on every node, so it delays each rank's
    settle time alike and priority still decides (`Node.start`). It only delays standing
    before a leader was seen: a node that hears a leader follows it at once. Zero for up to
    `COLD_START_GROUPS_PER_ROUND` groups.
    """
    if count <= COLD_START_GROUPS_PER_ROUND:
        return 0.0
    fast = min(count, COLD_START_FAST_GROUPS)
    rounds = fast / COLD_START_GROUPS_PER_ROUND
    rounds += (count - fast) / COLD_START_GROUPS_PER_ROUND_BEYOND
    spread = rounds * interval
    fraction = int.from_bytes(hashlib.blake2b(group.encode(), digest_size=4).digest(), "big")
    return spread * fraction / 2**32


# `Groups.settled` wants every peer heard within this many heartbeat intervals (a round read
# late is at most about two intervals old when the next one is read).
SETTLED_CONTACT = 2.5


@dataclass(frozen=True)
class GroupVote:
    """One group's persisted election state."""

    term: int = 0
    voted_for: str = ""


@dataclass(frozen=True)
class GroupsState:
    """What survives a restart: term and vote per group, maintenance once per node.

    `votes` may name groups the configuration no longer has: the store keeps them, because a
    group that comes back must not forget a vote it cast in a term its peers still know.
    """

    maintenance: bool = False
    votes: Mapping[str, GroupVote] = field(default_factory=dict)

    def for_group(self, group: str) -> PersistentState:
        vote = self.votes.get(group, GroupVote())
        return PersistentState(vote.term, vote.voted_for, self.maintenance)


class ForGroup(NamedTuple):
    """An event for one group's election. (Named tuples: one is built per message and per
    action, and a tuple costs a fraction of a frozen dataclass.)"""

    group: str
    event: Event


class Tagged(NamedTuple):
    """An action of one group's election."""

    group: str
    action: Action


@dataclass(frozen=True)
class GroupsView:
    """A read-only snapshot of every group, in configuration order."""

    name: str
    maintenance: bool
    groups: tuple[tuple[str, NodeView], ...]


class Groups:
    """The elections of every VIP group on one node (routing rules in the module docstring)."""

    def __init__(
        self,
        specs: Mapping[str, ClusterSpec],
        name: str,
        rng: RandomSource,
        persisted: GroupsState | None = None,
        healthy: bool | Mapping[str, bool] = True,
    ) -> None:
        """`specs`: group name -> that group's cluster description, in configuration order
        (the first group carries node-wide commands, see the module docstring). Every group
        must have the same members; priorities, preempt and timings may differ."""
        if not specs:
            raise SpecError("a node needs at least one VIP group")
        members = {frozenset(s.names) for s in specs.values()}
        if len(members) != 1:
            raise SpecError("every VIP group must have the same nodes")
        state = persisted or GroupsState()
        self.name = name
        self.maintenance = state.maintenance
        first = next(iter(specs.values()))
        peers = tuple(n for n in first.names if n != name)
        self._slacks = {g: s.timings.heartbeat_slack for g, s in specs.items()}
        self._slack = min(self._slacks.values())
        interval = min(s.timings.heartbeat_interval for s in specs.values())
        self.liveness = Liveness(name, peers, interval)
        # A follower that leads other groups itself may hold its acknowledgement of a peer's
        # round back until its own round to that peer (one datagram instead of two, see
        # `Liveness.hold_ack`): only where the lease leaves room for the leader to learn of it
        # up to an interval later and still renew it in time, with an interval to spare.
        self._hold_acks = all(
            s.timings.lease_duration > 3 * s.timings.heartbeat_interval for s in specs.values()
        )
        # `settled` (a round read once per round, so learnt of up to one more interval later)
        # keeps that interval to spare as well.
        self._read_late_room = all(
            s.timings.lease_duration > 4 * s.timings.heartbeat_interval for s in specs.values()
        )
        self._nodes: dict[str, Node] = {}
        self._bucket = {group: bucket_of(group) for group in specs}
        for group, spec in specs.items():
            ok = healthy if isinstance(healthy, bool) else healthy.get(group, True)
            persisted_group = state.for_group(group)
            bucket = self.liveness.bucket(self._bucket[group])
            self._nodes[group] = Node(spec, name, rng, persisted_group, ok, bucket)
        self._first = next(iter(self._nodes))
        self._names = tuple(self._nodes)
        self._deadlines: dict[str, float] = dict.fromkeys(self._nodes, INF)
        # Node liveness: each group's key as a follower (leader, key) and as a leader (per
        # peer), as last folded into `liveness`'s digests.
        self._fkeys: dict[str, tuple[str, int] | None] = dict.fromkeys(self._nodes)
        self._ekeys: dict[str, dict[str, int]] = {g: {} for g in self._nodes}
        self._key_cache: dict[tuple[str, str, int, bool, bool, str], int] = {}
        self.unknown_group_messages = 0
        self._touched: list[Node] = []  # the groups fed in this step
        # Groups that know no leader (as of their latest step; a leader is only learnt or lost
        # in a step of the group): `settled` asks for none.
        self._leaderless: set[str] = set(self._nodes)

    # ------------------------------------------------------------------ public interface

    @property
    def groups(self) -> tuple[str, ...]:
        return self._names

    def node(self, group: str) -> Node:
        """The election of `group` (read-only use: status, tests)."""
        return self._nodes[group]

    def start(self, now: float) -> list[Tagged]:
        """First call after construction: starts every group's election (the first elections
        spread over time when there are many groups: `cold_start_stagger`)."""
        out: list[Tagged] = []
        count = len(self._nodes)
        for group, node in self._nodes.items():
            stagger = cold_start_stagger(group, count, node.spec.timings.heartbeat_interval)
            self._collect(group, node.start(now, stagger), out)
        self._touched.clear()
        return out

    def handle(self, event: Event | ForGroup, now: float) -> list[Tagged]:
        """Feed one event at monotonic time `now`; the actions, in execution order."""
        return self.handle_many((event,), now)

    def handle_many(self, events: Iterable[Event | ForGroup], now: float) -> list[Tagged]:
        """Feed several events as one step (e.g. every item of one received datagram), so that
        what the step sends each peer can leave in one datagram."""
        out: list[Tagged] = []
        if min(self._deadlines.values()) <= now:
            # Overdue timers of groups holding VIPs first: a group whose lease ran out while the
            # process could not run releases before this step acts on anything, as a single
            # `Node` does at every entry point. Otherwise a datagram for another group, read
            # first after a freeze, would be handled while this group still held its VIPs on an
            # expired lease. (Other overdue groups wait for their `TimerFired`.)
            for group, deadline in list(self._deadlines.items()):
                if deadline <= now and self._nodes[group].holds_vip:
                    self._feed(group, _TIMER, now, out)
        for event in events:
            self._route(event, now, out)
        self._sync_maintenance(now, out)
        if min(self._deadlines.values()) <= now + self.liveness.interval:
            self._touch_ahead(now)
        return out

    def next_deadline(self) -> float:
        """The earliest time at which `handle(TimerFired(), now)` must next be called."""
        return min(min(self._deadlines.values()), self.liveness.next_deadline())

    def settled(self, now: float) -> bool:
        """Whether nothing on this node waits for a peer's next datagram: every group has a
        leader (this node or one it follows), this node has a round of its own due within an
        interval (it leads groups its peers back), every peer was heard within the last
        `SETTLED_CONTACT` intervals, and the timings leave the lease room for an
        acknowledgement learnt of two intervals late (held back one, read one late) with an
        interval to spare.

        While it holds, the runtime may read this node's socket once per round instead of at
        every datagram (docs/architecture.md, "Reading the socket at the round"): what comes in
        then is a peer's round (heartbeats, acknowledgements), which the core handles with its
        receipt time, and no election of this node waits on it. O(peers)."""
        live = self.liveness
        if not self._read_late_room or not now < live.next_deadline() <= now + live.interval:
            return False
        heard = now - SETTLED_CONTACT * live.interval
        return not self._leaderless and all(live.contact(p) >= heard for p in live.peers)

    def due(self, now: float) -> int:
        """How many groups' deadlines are at or before `now`."""
        return sum(1 for d in self._deadlines.values() if d <= now)

    def view(self, now: float) -> GroupsView:
        views = tuple((g, n.view(now)) for g, n in self._nodes.items())
        return GroupsView(self.name, self.maintenance, views)

    def persistent_state(self) -> GroupsState:
        """Every group's term and vote, and the node's maintenance flag, as now in memory."""
        votes = {g: GroupVote(n.term, n.voted_for) for g, n in self._nodes.items()}
        return GroupsState(self.maintenance, votes)

    # ------------------------------------------------------------------ routing

    def _route(self, event: Event | ForGroup, now: float, out: list[Tagged]) -> None:
        if isinstance(event, ForGroup):
            self._route_to(event.group, event.event, now, out)
            return
        match event:
            case MessageReceived(sender=sender, message=NodeHeartbeat() | NodeAck() as message):
                self._on_node_message(sender, message, now, out)
            case TimerFired():
                self._wake(now, out)
                if self.liveness.next_deadline() <= now + self._slack:
                    for peer, message in self.liveness.send_round(now):
                        out.append(Tagged(NODE_LEVEL, Send(peer, message)))
            case SetMaintenance():
                self._feed(self._first, event, now, out)
            case Switchover() | MessageReceived() if len(self._nodes) == 1:
                self._feed(self._first, event, now, out)
            case Switchover(request_id=rid):
                groups = ", ".join(self._nodes)
                refusal = CommandResult(
                    rid, False, Reason.TARGET_UNKNOWN, f"name a group (one of: {groups})"
                )
                out.append(Tagged("", refusal))
            case MessageReceived():
                self.unknown_group_messages += 1
            case EffectSucceeded(effect=effect):
                for group, node in self._nodes.items():
                    if node.faults.failing(effect):
                        self._feed(group, event, now, out)
            case Stop() | HealthChanged() | VipConflict() | EffectFailed():
                for group in self._nodes:
                    self._feed(group, event, now, out)

    def _wake(self, now: float, out: list[Tagged]) -> None:
        """A timer step: every group due within the next round is touched (`Node.touch`: node
        liveness's renewals folded in, no step); those still due within their
        `Timings.heartbeat_slack` take a timer step, and, room permitting, those due within
        the next round too. At most `TIMER_GROUPS_PER_STEP` steps, the earliest deadlines first.

        Touching first: in steady state almost every group's deadline is a lease or a promise
        that node liveness has renewed since its last step, and its step would only move it on.
        A touch does that for a fraction of a step's cost; a deadline not renewed stays and is
        stepped on time.

        Earliest first matters: a group woken within its slack but before its deadline (a
        follower's election timer) does nothing and stays due, so a chunk taken in configuration
        order could be those same groups at every step while an overdue group after them never
        ran, `next_deadline()` stayed in the past and the timer fired again and again at the
        same time (a livelock of a cold start with hundreds of groups). The earliest deadlines
        are the overdue ones, and each overdue group's step moves its deadline on.

        Stepping the groups due within the next round now (a timer step early is always allowed:
        `Node` checks every time itself) spares each of them a wake-up of its own.
        """
        deadlines, slacks, nodes = self._deadlines, self._slacks, self._nodes
        ahead = now + self.liveness.interval
        due: list[str] = []
        near: list[str] = []
        for group in self._names:
            if deadlines[group] <= ahead:
                deadline = deadlines[group] = nodes[group].touch(now)
                if deadline <= now + slacks[group]:
                    due.append(group)
                elif deadline <= ahead:
                    near.append(group)
        if len(due) > TIMER_GROUPS_PER_STEP:
            due = heapq.nsmallest(TIMER_GROUPS_PER_STEP, due, key=deadlines.__getitem__)
        else:
            room = TIMER_GROUPS_PER_STEP - len(due)
            if len(near) > room:
                near = heapq.nsmallest(room, near, key=deadlines.__getitem__)
            due += near
        for group in due:
            self._feed(group, _TIMER, now, out)

    def _touch_ahead(self, now: float) -> None:
        """After a step's events: touch the groups whose deadline falls within the next round,
        so a deadline node liveness keeps renewing never wakes the node by itself (a follower
        that leads nothing has no round timer: its leader's heartbeats are its only wake-ups).
        Touched groups still due wait for their `TimerFired`."""
        ahead = now + self.liveness.interval
        deadlines, nodes = self._deadlines, self._nodes
        for group in self._names:
            if deadlines[group] <= ahead:
                deadlines[group] = nodes[group].touch(now)

    def _route_to(self, group: str, event: Event, now: float, out: list[Tagged]) -> None:
        if group == NODE_LEVEL and isinstance(event, MessageReceived):
            message = event.message
            if isinstance(message, NodeHeartbeat | NodeAck):
                self._on_node_message(event.sender, message, now, out)
            else:
                self.unknown_group_messages += 1  # an election message belongs to a group
        elif isinstance(event, SetMaintenance):
            # Maintenance is per node: whichever group names it, the first group carries it.
            self._feed(self._first, event, now, out)
        elif group in self._nodes:
            self._feed(group, event, now, out)
        elif isinstance(event, Switchover):
            refusal = CommandResult(
                event.request_id, False, Reason.TARGET_UNKNOWN, f"no group named {group!r}"
            )
            out.append(Tagged(group, refusal))
        elif isinstance(event, MessageReceived):
            self.unknown_group_messages += 1

    def _feed(self, group: str, event: Event, now: float, out: list[Tagged]) -> None:
        self._collect(group, self._nodes[group].handle(event, now), out)

    def _collect(self, group: str, actions: list[Action], out: list[Tagged]) -> None:
        node = self._nodes[group]
        out.extend(Tagged(group, a) for a in actions)
        self._deadlines[group] = node.next_deadline()
        self._touched.append(node)
        self._rekey(group, node)
        self._note_leader(group, node)

    def _note_leader(self, group: str, node: Node) -> None:
        """After every step of a group's `Node` (a leader is learnt or lost only in one)."""
        if node.leader:
            self._leaderless.discard(group)
        else:
            self._leaderless.add(group)

    # ------------------------------------------------------------------ node liveness

    def _on_node_message(
        self, sender: str, message: NodeHeartbeat | NodeAck, now: float, out: list[Tagged]
    ) -> None:
        live = self.liveness
        if isinstance(message, NodeHeartbeat):
            ack = live.on_heartbeat(sender, message, now)
            if ack is not None and not (self._hold_acks and live.hold_ack(sender, ack, now)):
                out.append(Tagged(NODE_LEVEL, Send(sender, ack)))
        elif stale := live.on_ack(sender, message, now):
            # The peer disagrees about which groups of those buckets it backs: each of them this
            # node leads sends it its own heartbeats until its acknowledgements fortify them.
            buckets = set(stale)
            for group, expected in self._ekeys.items():
                if sender in expected and self._bucket[group] in buckets:
                    node = self._nodes[group]
                    if node.unfortify(sender):
                        self._deadlines[group] = node.next_deadline()
                        self._rekey(group, node)

    def _key(self, group: str, leader: str, fields: tuple[int, bool, bool, str]) -> int:
        k = (group, leader, *fields)
        cached = self._key_cache.get(k)
        if cached is None:
            if len(self._key_cache) > 4 * len(self._nodes) * (len(self.liveness.peers) + 1):
                self._key_cache.clear()
            cached = self._key_cache[k] = key(group, leader, *fields)
        return cached

    def _rekey(self, group: str, node: Node) -> None:
        """Fold `group`'s current keys into the node-level digests (after each of its steps)."""
        live = self.liveness
        fk = node.follower_key()
        new_f = None if fk is None else (fk[0], self._key(group, fk[0], fk[1]))
        old_f = self._fkeys[group]
        bucket = self._bucket[group]
        if new_f != old_f:
            if old_f is not None:
                live.change_fortified(old_f[0], bucket, old_f[1], 0)
            if new_f is not None:
                live.change_fortified(new_f[0], bucket, 0, new_f[1])
            self._fkeys[group] = new_f
        old_e = self._ekeys[group]
        leader_keys = node.leader_keys()
        if not leader_keys and not old_e:
            return
        new_e = {p: self._key(group, self.name, f) for p, f in leader_keys.items()}
        if new_e != old_e:
            for peer in old_e.keys() | new_e.keys():
                live.change_expected(peer, bucket, old_e.get(peer, 0), new_e.get(peer, 0))
            self._ekeys[group] = new_e

    def _sync_maintenance(self, now: float, out: list[Tagged]) -> None:
        """Apply a maintenance change made in one group (by the operator, or a peer's request)
        to every other group, so the flag is the node's, as configured and persisted."""
        if all(n.maintenance == self.maintenance for n in self._touched):
            self._touched.clear()
            return
        self._touched.clear()
        changed = not self.maintenance
        self.maintenance = changed
        for group, node in self._nodes.items():
            if node.maintenance != changed:
                for action in node.handle(SetMaintenance(_INTERNAL, changed), now):
                    if not (isinstance(action, CommandResult) and action.request_id == _INTERNAL):
                        out.append(Tagged(group, action))
                self._deadlines[group] = node.next_deadline()
                self._rekey(group, node)
                self._note_leader(group, node)
