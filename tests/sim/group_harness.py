"""The simulator for nodes running several VIP groups (`hafailover.core.groups.Groups`).

Same model as `tests.sim.harness` (per-node drifting clocks, a lossy, delaying, duplicating,
partitionable network, crashes, freezes), with what groups add:

* every node runs one `Groups` multiplexer (one `Node` per group);
* what one step sends one peer travels as one datagram: a list of (group, message) items that
  is lost, delayed, duplicated or blocked as a whole, and delivered as one step
  (`Groups.handle_many`), as the runtime does with a wire batch;
* a `Persist` of any group saves the node's whole `GroupsState` (the coalescing rule): once per
  step, and when the save fails every group's `Persist` of that step has failed;
* effects fail for a while (`fail_effect`): the harness plays the engine's barrier rule per
  group (a failed barrier of group g skips g's later actions except `ReleaseVip`, `Decision`
  and `Exit`), then feeds `EffectFailed` - without a group for a failed save (one file for all
  groups), for group g for g's acquire or release - and `EffectSucceeded` likewise; `Exit` ends
  the process (`release-vips` removes its addresses) and it restarts a second later;
* each group is observed through a `GroupLens`, which shows the single-group `Invariants` of
  `tests.sim.invariants` that group alone, so every invariant is checked per group with the
  very code that checks a single-group cluster.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from hafailover.core.actions import (
    AcquireVip,
    Action,
    Decision,
    Exit,
    Persist,
    ReleaseVip,
    Send,
)
from hafailover.core.events import (
    Effect,
    EffectFailed,
    EffectSucceeded,
    Event,
    HealthChanged,
    MessageReceived,
    Stop,
    TimerFired,
)
from hafailover.core.groups import ForGroup, Groups, GroupsState, Tagged
from hafailover.core.messages import (
    Heartbeat,
    Message,
    NodeAck,
    NodeHeartbeat,
    VoteResponse,
)
from hafailover.core.node import Node
from hafailover.core.spec import ClusterSpec
from hafailover.runtime.engine import GATHER
from hafailover.runtime.reading import STAMP_TOLERANCE
from tests.sim.harness import NetworkModel, SimulationError, Simulator
from tests.sim.invariants import Invariants

Batch = list[tuple[str, Message]]
_BARRIER: dict[type[Action], Effect] = {
    Persist: Effect.PERSIST,
    AcquireVip: Effect.ACQUIRE,
    ReleaseVip: Effect.RELEASE,
}
INF = float("inf")


@dataclass
class GroupSimNode:
    name: str
    rate: float
    offset: float
    rng: random.Random
    groups: Groups | None = None
    persisted: GroupsState = field(default_factory=GroupsState)
    frozen: bool = False
    holds: dict[str, bool] = field(default_factory=dict)
    healthy: dict[str, bool] = field(default_factory=dict)
    token: int = 0
    scheduled: float = INF
    inbox: list[list[Event | ForGroup]] = field(default_factory=list)
    started_at: float = 0.0
    # This process got `Stop` (cleared by a restart).
    stopped: bool = False
    # Effect faults: each kind fails until this (virtual) time.
    fail_until: dict[Effect, float] = field(default_factory=dict)
    # The engine's failing set: (group, kind), with group "" for the node's one state file.
    failing: set[tuple[str, Effect]] = field(default_factory=set)
    # Per group: since when a failed release left its addresses here (None: not stuck).
    stuck: dict[str, float | None] = field(default_factory=dict)
    # Reading at the round (`GroupSim(round_reads=True)`, as the runtime's `SocketReading`):
    # while settled, datagrams wait in `pending` (local arrival time, sender, batch) for the
    # node's next timer; the first drain after deferral began handles them at the drain's
    # time, later ones at arrival (+ the stamp tolerance).
    deferred: bool = False
    pending: list[tuple[float, str, Batch]] = field(default_factory=list)
    first_drain: bool = True
    draining: bool = False
    last_step: float = float("-inf")  # local time of the latest core step
    frozen_at: float = 0.0

    @property
    def running(self) -> bool:
        return self.groups is not None and not self.frozen

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate


class GroupSim:
    def __init__(
        self,
        specs: Mapping[str, ClusterSpec],
        seed: int,
        network: NetworkModel | None = None,
        drift: bool = True,
        trace_len: int = 400,
        boot_at: Mapping[str, float] | None = None,
        round_reads: bool = True,
    ) -> None:
        self.specs = dict(specs)
        self.round_reads = round_reads
        self.drained = 0  # datagrams handled late by a drain
        self.gathered = 0  # drained steps that took more than one datagram
        first = next(iter(self.specs.values()))
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = network or NetworkModel()
        self.t = 0.0
        self._queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self._seq = itertools.count()
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.description = ""
        self.last_disturbance = 0.0
        self.decisions: list[tuple[float, str, str, Decision]] = []
        self.vip_log: list[tuple[float, str, str, bool]] = []
        # (time, src, dst, items): every datagram handed to the network.
        self.datagrams: list[tuple[float, str, str, int]] = []
        # Every real vote that left a node: (group, voter, term) -> candidate, over restarts.
        self.votes: dict[tuple[str, str, int], str] = {}
        self.exits = 0
        rho = first.timings.clock_drift if drift else 0.0
        self.nodes: dict[str, GroupSimNode] = {}
        for n in first.nodes:
            self.nodes[n.name] = GroupSimNode(
                name=n.name,
                rate=1.0 + self.rng.uniform(-rho, rho) * 0.999,
                offset=self.rng.uniform(0, 1000) if drift else 0.0,
                rng=random.Random(self.rng.getrandbits(64)),
                healthy=dict.fromkeys(self.specs, True),
            )
        self.lenses = {g: GroupLens(self, g) for g in self.specs}
        self.invariants: dict[str, GroupInvariants] = {}
        for group, lens in self.lenses.items():
            shared = next(iter(self.invariants.values()), None)
            self.invariants[group] = GroupInvariants(lens, shared)
        for name, sn in self.nodes.items():
            delay = (boot_at or {}).get(name, 0.0)
            if delay <= 0:
                self._boot(sn)
            else:
                self.at(delay, "call", lambda sn=sn: self._boot(sn))

    # ------------------------------------------------------------------ node lifecycle

    def _boot(self, sn: GroupSimNode) -> None:
        sn.groups = Groups(self.specs, sn.name, sn.rng, sn.persisted, healthy=dict(sn.healthy))
        sn.holds = dict.fromkeys(self.specs, False)
        sn.stuck = dict.fromkeys(self.specs)
        sn.failing = set()
        sn.started_at = self.t
        sn.inbox = []
        sn.deferred, sn.pending, sn.last_step = False, [], float("-inf")
        sn.stopped = False
        self._relens(sn)
        self._log(f"BOOT {sn.name}")
        self._run(sn, sn.groups.start(sn.local(self.t)), "start")

    def crash(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.groups is None:
            return
        self._log(f"CRASH {name}")
        self.disturb()
        sn.groups = None
        self._relens(sn)
        sn.frozen = False
        sn.inbox = []
        sn.deferred, sn.pending = False, []
        sn.token += 1
        sn.scheduled = INF
        for g, held in sn.holds.items():
            if held:
                self.vip_log.append((self.t, name, g, False))
        sn.holds = dict.fromkeys(self.specs, False)
        sn.stuck = dict.fromkeys(self.specs)
        self._observe(name, [])

    def _relens(self, sn: GroupSimNode) -> None:
        for g, lens in self.lenses.items():
            lens.nodes[sn.name].node = sn.groups.node(g) if sn.groups is not None else None

    def restart(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.groups is not None:
            return
        self._log(f"RESTART {name} with {sn.persisted}")
        self.disturb()
        self._boot(sn)

    def freeze(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.groups is None or sn.frozen:
            return
        self._log(f"FREEZE {name}")
        self.disturb()
        sn.frozen = True
        sn.frozen_at = self.t
        self._observe(name, [])

    def resume(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.groups is None or not sn.frozen:
            return
        self._log(f"RESUME {name}")
        self.disturb()
        sn.frozen = False
        # A frozen process cannot act: its time to give up on a failed release starts again
        # where it stopped.
        for g, since in sn.stuck.items():
            if since is not None:
                sn.stuck[g] = since + (self.t - sn.frozen_at)
        now = sn.local(self.t)
        expired = [
            g for g, held in sn.holds.items() if held and now >= sn.groups.node(g).lease_until
        ]
        actions = sn.groups.handle(TimerFired(), now)
        for g in expired:
            # The retry of a release that had failed before the freeze comes after heartbeats
            # of round 0 to the followers (`Faults.retries`: they keep promising while the
            # address may still be here); nothing else may come before the release.
            first = next(
                (t.action for t in actions if t.group == g and not (
                    isinstance(t.action, Send) and isinstance(t.action.message, Heartbeat)
                    and t.action.message.round == 0
                )),
                None,
            )
            if not isinstance(first, ReleaseVip):
                self.fail(
                    f"{name} resumed with group {g}'s lease expired but did not release first"
                )
        self._run(sn, actions, "resume")
        pending, sn.inbox = sn.inbox, []
        for batch in pending:
            if sn.running and sn.groups is not None:
                self._run(sn, sn.groups.handle_many(batch, sn.local(self.t)), "queued")

    def stop(self, name: str) -> None:
        """The daemon's graceful stop: `Stop` now (every group); the caller ends the process
        (`crash`) later."""
        sn = self.nodes[name]
        if sn.groups is None or sn.frozen:
            return
        sn.stopped = True
        self.inject(name, Stop())

    def inject(self, name: str, event: Event | ForGroup) -> list[Tagged]:
        sn = self.nodes[name]
        if sn.groups is None:
            return []
        self.disturb()
        if sn.frozen:
            sn.inbox.append([event])
            return []
        self._log(f"INJECT {name} {event}")
        actions = sn.groups.handle(event, sn.local(self.t))
        self._run(sn, actions, type(event).__name__)
        return actions

    def set_health(self, name: str, group: str, healthy: bool) -> None:
        self.nodes[name].healthy[group] = healthy
        self.inject(name, ForGroup(group, HealthChanged(healthy, "sim")))

    def fail_effect(self, name: str, effect: Effect, duration: float) -> None:
        """Every `effect` action of `name` (all groups) fails for `duration` seconds: a full
        disk, a netlink error."""
        self.nodes[name].fail_until[effect] = self.t + duration
        self._log(f"FAIL {name} {effect.value} for {duration:.3f}s")
        self.disturb()

    def disturb(self) -> None:
        self.last_disturbance = self.t

    def block(self, src: str, dst: str, both: bool = True) -> None:
        self.net.blocked.add((src, dst))
        if both:
            self.net.blocked.add((dst, src))
        self._log(f"BLOCK {src}{'<' if both else ''}->{dst}")
        self.disturb()

    def heal(self) -> None:
        self.net.blocked.clear()
        self.net.link_loss.clear()
        self.net.loss = 0.0
        self._log("HEAL")
        self.disturb()

    # ------------------------------------------------------------------ event loop

    def at(self, t: float, kind: str, *args: object) -> None:
        heapq.heappush(self._queue, (t, next(self._seq), kind, args))

    def run_until(self, t_end: float) -> None:
        first = next(iter(self.invariants))  # its checker keeps the shared majority table
        while self._queue and self._queue[0][0] <= t_end:
            t, _, kind, args = heapq.heappop(self._queue)
            self.t = max(self.t, t)
            if kind == "call":  # a fault, its end, a restart: majorities held until now
                self.invariants[first].before_change(cast(Simulator, self.lenses[first]))
            self._dispatch(kind, args)
        self.t = max(self.t, t_end)
        for name in self.nodes:
            self._observe(name, [])

    def _dispatch(self, kind: str, args: tuple[object, ...]) -> None:
        if kind == "timer":
            name, token = args
            sn = self.nodes[str(name)]
            if token != sn.token or sn.groups is None:
                return
            sn.scheduled = INF
            if sn.frozen:
                return  # resume() fires the timer
            if sn.pending:
                self._drain(sn)
                if sn.groups is None or not sn.running:
                    return
                # The timer step below re-arms; what the drained steps armed is replaced (the
                # engine does not arm within a drain).
                sn.token += 1
                sn.scheduled = INF
            deadline = sn.groups.next_deadline()
            local = sn.local(self.t)
            now = max(local, deadline) if deadline - local < 1e-9 else local
            due = sn.groups.due(now)
            self._run(sn, sn.groups.handle(TimerFired(), now), "timer")
            # Many groups due at once are woken in chunks: each step must wake some of them.
            if sn.groups is not None and sn.groups.next_deadline() <= now and (
                sn.groups.due(now) >= due
            ):
                self.fail(f"{sn.name}: timer fired at {now} but next_deadline() did not advance")
        elif kind == "deliver":
            sender, dest, batch, incarnation = args
            sn = self.nodes[str(dest)]
            if sn.groups is None or incarnation != sn.started_at:
                return
            events: list[Event | ForGroup] = [
                ForGroup(g, MessageReceived(str(sender), m)) for g, m in cast(Batch, batch)
            ]
            if sn.frozen:
                sn.inbox.append(events)
                return
            if sn.deferred:
                sn.pending.append((sn.local(self.t), str(sender), cast(Batch, batch)))
                return
            self._run(sn, sn.groups.handle_many(events, sn.local(self.t)), f"recv from {sender}")
        elif kind == "call":
            fn = args[0]
            assert callable(fn)
            fn()
        else:
            raise ValueError(kind)

    def _drain(self, sn: GroupSimNode) -> None:
        """What a deferred node's timer reads first: every pending datagram at its receipt time
        (`SocketReading.receipt`), those that came in within `GATHER` of the first of them as
        one step at the latest one's (`Engine._gather`), never before the node's latest step."""
        pending, sn.pending = sn.pending, []
        trusted, sn.first_drain = not sn.first_drain, False
        interval = sn.groups.liveness.interval if sn.groups is not None else 0.0
        now = sn.local(self.t)
        gathered: list[tuple[float, float, list[str], list[Event | ForGroup]]] = []
        for arrived, sender, batch in pending:
            at = min(now, max(arrived + STAMP_TOLERANCE, now - interval)) if trusted else now
            events: list[Event | ForGroup] = [
                ForGroup(g, MessageReceived(sender, m)) for g, m in batch
            ]
            if gathered and at - gathered[-1][0] <= GATHER:
                first, latest, senders, evs = gathered[-1]
                gathered[-1] = (first, max(latest, at), [*senders, sender], evs + events)
            else:
                gathered.append((at, at, [sender], events))
        sn.draining = True
        try:
            for _, latest, senders, events in gathered:
                if sn.groups is None or not sn.running:
                    return
                at = max(latest, sn.last_step)
                sn.last_step = at
                self.drained += len(senders)
                self.gathered += len(senders) > 1
                self._run(sn, sn.groups.handle_many(events, at), f"drained from {senders}")
        finally:
            sn.draining = False

    def _settle(self, sn: GroupSimNode) -> None:
        """After a step (not within a drain): defer reading while the core says settled; when
        it stops, what waits is read at once, as the runtime's re-registered reader does."""
        want = (self.round_reads and sn.running and sn.groups is not None
                and sn.groups.settled(sn.local(self.t)))
        if want and sn.groups is not None:
            leaderless = [g for g in sn.groups.groups if not sn.groups.node(g).leader]
            if leaderless:
                self.fail(f"{sn.name} settled while {leaderless} know no leader")
        if want and not sn.deferred:
            sn.deferred, sn.first_drain = True, True
        elif not want and sn.deferred:
            sn.deferred = False
            pending, sn.pending = sn.pending, []
            for _, sender, batch in pending:
                self.at(self.t, "deliver", sender, sn.name, batch, sn.started_at)

    def _run(self, sn: GroupSimNode, actions: list[Tagged], cause: str) -> None:
        if not sn.draining:
            sn.last_step = max(sn.last_step, sn.local(self.t))
        outbox: dict[str, Batch] = {}
        failed: dict[str, Effect] = {}  # group -> its first barrier that failed this step
        # Every barrier that failed, as fed back: ("" for the state file, else the group), kind.
        # (A release after a failed save is still attempted and may fail too: both are news.)
        failures: set[tuple[str, Effect]] = set()
        succeeded: set[tuple[str, Effect]] = set()
        saved: bool | None = None  # the step's one save of the state file, once tried
        done: list[Tagged] = []
        for tagged in actions:
            g, a = tagged.group, tagged.action
            if g in failed and not isinstance(a, ReleaseVip | Decision | Exit):
                continue  # the barrier rule, for this group only
            kind = _BARRIER.get(type(a))
            if isinstance(a, Persist):
                if saved is None:
                    saved = not self._fails(sn, Effect.PERSIST)
                    if saved:
                        assert sn.groups is not None
                        sn.persisted = sn.groups.persistent_state()
                ok = saved
            else:
                ok = self._execute(sn, g, a, outbox)
            if kind is not None and not ok:
                failed.setdefault(g, kind)
                failures.add(("" if kind is Effect.PERSIST else g, kind))
            elif kind is not None:
                succeeded.add(("" if kind is Effect.PERSIST else g, kind))
            done.append(tagged)
        # Sends leave at the end of the step, one datagram per peer.
        for to, batch in outbox.items():
            self._transmit(sn.name, to, batch)
        if actions:
            note = f" (failed {sorted((g, k.value) for g, k in failed.items())})" if failed else ""
            self._log(f"{sn.name} [{cause}] -> {_short(done)}{note}")
        self._reschedule(sn)
        self._observe(sn.name, done)
        if any(isinstance(t.action, Exit) for t in done):
            self._exit(sn)
            return
        feedback: list[Event | ForGroup] = []
        failed_keys = failures
        for g, kind in sorted(failed_keys):
            # One file for every group: a failed save is reported once, without a group.
            event = EffectFailed(kind, f"sim: {kind.value} failed")
            feedback.append(ForGroup(g, event) if g else event)
            sn.failing.add((g, kind))
        for key in sorted(succeeded):
            if key in sn.failing and key not in failed_keys:
                sn.failing.discard(key)
                g, kind = key
                ok_event = EffectSucceeded(kind)
                feedback.append(ForGroup(g, ok_event) if g else ok_event)
        if feedback and sn.running and sn.groups is not None:
            sn.last_step = max(sn.last_step, sn.local(self.t))
            self._run(sn, sn.groups.handle_many(feedback, sn.local(self.t)), "effects")
        if not sn.draining and sn.groups is not None:
            self._settle(sn)

    def _exit(self, sn: GroupSimNode) -> None:
        """`Exit`: the process ends now, `release-vips` removes the addresses, systemd
        restarts it a second later."""
        self.exits += 1
        self._log(f"EXIT {sn.name}")
        self.crash(sn.name)
        name = sn.name
        self.at(self.t + 1.0, "call", lambda: self.restart(name))

    def _fails(self, sn: GroupSimNode, effect: Effect) -> bool:
        return self.t < sn.fail_until.get(effect, float("-inf"))

    def _execute(self, sn: GroupSimNode, g: str, a: Action, outbox: dict[str, Batch]) -> bool:
        """Carry out one action of group g; False only for a barrier that failed."""
        match a:
            case Send(to=to, message=message):
                if isinstance(message, VoteResponse) and message.granted and not message.pre:
                    other = self.votes.setdefault((g, sn.name, message.term), to)
                    if other != to:
                        self.fail(
                            f"group {g}: {sn.name} voted for {other} and {to} in term "
                            f"{message.term}"
                        )
                outbox.setdefault(to, []).append((g, message))
            case AcquireVip():
                if self._fails(sn, Effect.ACQUIRE):
                    return False  # the port removes what it added before it raises
                sn.holds[g] = True
                self.vip_log.append((self.t, sn.name, g, True))
            case ReleaseVip():
                if sn.holds.get(g) and self._fails(sn, Effect.RELEASE):
                    if sn.stuck.get(g) is None:
                        sn.stuck[g] = self.t
                    return False
                if sn.holds.get(g):
                    self.vip_log.append((self.t, sn.name, g, False))
                sn.holds[g] = False
                sn.stuck[g] = None
            case Decision():
                self.decisions.append((self.t, sn.name, g, a))
            case _:
                pass
        return True

    def _transmit(self, src: str, dst: str, batch: Batch) -> None:
        net = self.net
        self.datagrams.append((self.t, src, dst, len(batch)))
        if (src, dst) in net.blocked:
            return
        copies = 2 if net.duplicate and self.rng.random() < net.duplicate else 1
        loss = max(net.loss, net.link_loss.get((src, dst), 0.0))
        dest = self.nodes[dst]
        for _ in range(copies):
            if loss and self.rng.random() < loss:
                continue
            latency = net.delay + self.rng.uniform(0, net.jitter)
            self.at(self.t + latency, "deliver", src, dst, batch, dest.started_at)

    def _reschedule(self, sn: GroupSimNode) -> None:
        if sn.groups is None:
            return
        deadline = sn.groups.next_deadline()
        if deadline == INF:
            return
        when = max(self.t, sn.real(deadline))
        if when < sn.scheduled - 1e-12 or sn.scheduled == INF:
            sn.token += 1
            sn.scheduled = when
            self.at(when, "timer", sn.name, sn.token)

    # ------------------------------------------------------------------ observation

    def _observe(self, name: str, actions: list[Tagged]) -> None:
        for g, lens in self.lenses.items():
            mine = [t.action for t in actions if t.group == g]
            for obs in lens.observers:
                obs(cast(Simulator, lens), name, mine)

    def _log(self, line: str) -> None:
        self.trace.append(f"{self.t:10.4f} {line}")

    def holders(self, group: str) -> list[str]:
        return [n for n, sn in self.nodes.items() if sn.running and sn.holds.get(group)]

    def leaders(self, group: str) -> list[str]:
        return [
            n
            for n, sn in self.nodes.items()
            if sn.groups is not None and sn.groups.node(group).role.value == "leader"
        ]

    def elected(self, group: str) -> list[tuple[float, str, int]]:
        return [
            (t, n, d.term)
            for t, n, g, d in self.decisions
            if g == group and d.reason.value == "elected"
        ]

    def fail(self, message: str) -> None:
        trace = "\n".join(self.trace)
        raise SimulationError(
            f"{message}\n  seed={self.seed} at t={self.t:.4f}s\n  scenario: {self.description}\n"
            f"  replay: .venv/bin/python -m tests.sim.test_groups {self.seed}\n"
            f"--- last events ---\n{trace}"
        )


# ---------------------------------------------------------------------- one group's view


class GroupInvariants(Invariants):
    """The single-group invariants, for one group. Which nodes can reach a majority is the
    same for every group (one membership, one network), so the first group's checker works it
    out at each step and the others share its table instead of recomputing it."""

    def __init__(self, lens: GroupLens, first: GroupInvariants | None) -> None:
        super().__init__(cast(Simulator, lens))
        self._first = first
        if first is not None:
            self.last_majority = first.last_majority

    def _track_majority(self, sim: Simulator) -> None:
        if self._first is None:
            super()._track_majority(sim)


class LensNode:
    """One node as seen by the invariants of one group (the `SimNode` interface they use)."""

    def __init__(self, sn: GroupSimNode, group: str) -> None:
        self._sn = sn
        self._group = group
        self.name = sn.name
        # Set by the harness at every boot and crash (read very often by the invariants).
        self.node: Node | None = None

    @property
    def running(self) -> bool:
        return self._sn.running

    @property
    def frozen(self) -> bool:
        return self._sn.frozen

    @property
    def started_at(self) -> float:
        return self._sn.started_at

    @property
    def stopped(self) -> bool:
        return self._sn.stopped

    @property
    def stuck_since(self) -> float | None:
        return self._sn.stuck.get(self._group)

    @property
    def holds_vip(self) -> bool:
        return self._sn.holds.get(self._group, False)

    @property
    def healthy(self) -> bool:
        return self._sn.healthy[self._group]

    def real(self, local: float) -> float:
        return self._sn.real(local)


class GroupLens:
    """One group's election, shown to `Invariants` as if it were a single-group `Simulator`."""

    def __init__(self, sim: GroupSim, group: str) -> None:
        self._sim = sim
        self.group = group
        self.spec = sim.specs[group]
        self.nodes = {n: LensNode(sn, group) for n, sn in sim.nodes.items()}
        self.net = sim.net  # the same object for the whole run (changed in place)
        self.observers: list[Callable[[Simulator, str, list[Action]], None]] = []

    @property
    def seed(self) -> int:
        return self._sim.seed

    @property
    def t(self) -> float:
        return self._sim.t

    @property
    def last_disturbance(self) -> float:
        return self._sim.last_disturbance

    def holders(self) -> list[str]:
        return self._sim.holders(self.group)

    def fail(self, message: str) -> None:
        self._sim.fail(f"group {self.group}: {message}")


def _short(actions: list[Tagged]) -> str:
    parts = []
    for t in actions:
        a = t.action
        if isinstance(a, Send):
            m = a.message
            if isinstance(m, NodeHeartbeat | NodeAck):
                parts.append(f"node:send {m}->{a.to}")
            else:
                parts.append(f"{t.group}:send {type(m).__name__}(t{m.term})->{a.to}")
        elif isinstance(a, Decision):
            parts.append(f"{t.group}:decide {a.reason.value} term={a.term}")
        else:
            parts.append(f"{t.group}:{type(a).__name__}")
    return "; ".join(parts)
