"""A deterministic multi-node simulator for the protocol core.

Real (virtual) time `t` drives an event queue. Every node has its own monotonic clock
`local = offset + rate * t` with `rate` within the configured drift bound, so leases are tested
against clocks that disagree. The network loses, delays (with jitter, hence reorders),
duplicates and blocks (per direction) messages. Nodes crash (losing everything but persisted
state), restart, freeze (their events wait), resume, stop (the `Stop` event, then exit) and see
their effects fail for a while (`fail_effect`).

The harness plays the engine's side of the barrier rule (`hafailover.core.actions`): when a
`Persist`, `AcquireVip` or `ReleaseVip` fails, the rest of that step is skipped except
`ReleaseVip`, `Decision` and `Exit`, then `EffectFailed` is fed; the first success of a failing
kind feeds `EffectSucceeded`. `Exit` ends the process as systemd would: `release-vips` removes
the address, and the daemon is restarted a second later. A failed release leaves the address
on the node: it still counts as a holder ("stuck") until the release works or the node exits.

Invariants are checked after every processed event by `Invariants` (see invariants.py); any
violation raises `SimulationError` carrying a replayable trace.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hafailover.core.actions import (
    AcquireVip,
    Action,
    CommandResult,
    Decision,
    Exit,
    Persist,
    PersistentState,
    ReleaseVip,
    Send,
)
from hafailover.core.events import (
    Effect,
    EffectFailed,
    EffectSucceeded,
    Event,
    MessageReceived,
    Stop,
    TimerFired,
)
from hafailover.core.messages import Message, VoteResponse
from hafailover.core.node import Node
from hafailover.core.reasons import Reason
from hafailover.core.spec import ClusterSpec


class SimulationError(AssertionError):
    pass


@dataclass
class NetworkModel:
    delay: float = 0.001
    jitter: float = 0.002
    loss: float = 0.0
    duplicate: float = 0.0
    # (src, dst) pairs whose packets are dropped; asymmetric partitions block one direction.
    blocked: set[tuple[str, str]] = field(default_factory=set)
    link_loss: dict[tuple[str, str], float] = field(default_factory=dict)

    def clean(self) -> bool:
        return not self.blocked and self.loss == 0 and not any(self.link_loss.values())


@dataclass
class SimNode:
    name: str
    rate: float
    offset: float
    rng: random.Random
    node: Node | None = None
    persisted: PersistentState = field(default_factory=PersistentState)
    frozen: bool = False
    holds_vip: bool = False
    healthy: bool = True
    token: int = 0
    scheduled: float = float("inf")
    # Events that arrived while frozen (packets in the socket buffer, queued verdicts).
    inbox: list[Event] = field(default_factory=list)
    started_at: float = 0.0
    # Effect faults: each kind fails until this (virtual) time; the engine's failing set.
    fail_until: dict[Effect, float] = field(default_factory=dict)
    failing: set[Effect] = field(default_factory=set)
    # When a release failed while the address was on the node (None: not stuck).
    stuck_since: float | None = None
    # This process got `Stop` (cleared by a restart).
    stopped: bool = False

    @property
    def running(self) -> bool:
        return self.node is not None and not self.frozen

    def local(self, t: float) -> float:
        return self.offset + self.rate * t

    def real(self, local: float) -> float:
        return (local - self.offset) / self.rate


class Simulator:
    def __init__(
        self,
        spec: ClusterSpec,
        seed: int,
        network: NetworkModel | None = None,
        drift: bool = True,
        trace_len: int = 400,
        start_at: dict[str, float] | None = None,
    ) -> None:
        """`start_at`: when each named node's process first starts (default: all at 0)."""
        self.spec = spec
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = network or NetworkModel()
        self.t = 0.0
        self._queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self._seq = itertools.count()
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.description = ""
        rho = spec.timings.clock_drift if drift else 0.0
        self.nodes: dict[str, SimNode] = {}
        for n in spec.nodes:
            self.nodes[n.name] = SimNode(
                name=n.name,
                rate=1.0 + self.rng.uniform(-rho, rho) * 0.999,
                offset=self.rng.uniform(0, 1000) if drift else 0.0,
                rng=random.Random(self.rng.getrandbits(64)),
            )
        # Time of the last fault, repair or operator action (liveness is measured from it).
        self.last_disturbance = 0.0
        self.observers: list[Callable[[Simulator, str, list[Action]], None]] = []
        self.decisions: list[tuple[float, str, Decision]] = []
        self.vip_log: list[tuple[float, str, bool]] = []
        self.results: list[tuple[float, str, CommandResult]] = []
        # Every real vote that left a node: (voter, term) -> candidate, over restarts.
        self.votes: dict[tuple[str, int], str] = {}
        # Times a node acquired while another was stuck with an address it failed to remove.
        self.stuck_overlaps = 0
        self.exits = 0
        for sn in self.nodes.values():
            when = (start_at or {}).get(sn.name, 0.0)
            if when <= 0:
                self._boot(sn)
            else:
                self.at(when, "call", lambda sn=sn: self._boot(sn))

    # ------------------------------------------------------------------ node lifecycle

    def _boot(self, sn: SimNode) -> None:
        sn.node = Node(self.spec, sn.name, sn.rng, sn.persisted, healthy=sn.healthy)
        sn.holds_vip = False  # the daemon removes leftover VIPs before it reports ready
        sn.stuck_since = None
        sn.started_at = self.t
        sn.inbox = []
        sn.failing = set()
        sn.stopped = False
        self._run(sn, sn.node.start(sn.local(self.t)), "start")

    def crash(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.node is None:
            return
        self._log(f"CRASH {name}")
        self.disturb()
        sn.node = None
        sn.frozen = False
        sn.inbox = []
        sn.token += 1
        sn.scheduled = float("inf")
        if sn.holds_vip:
            sn.holds_vip = False
            self.vip_log.append((self.t, name, False))
        sn.stuck_since = None
        self._after("crash", name)

    def restart(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.node is not None:
            return
        self._log(f"RESTART {name} with {sn.persisted}")
        self.disturb()
        self._boot(sn)

    def freeze(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.node is None or sn.frozen:
            return
        self._log(f"FREEZE {name}")
        self.disturb()
        sn.frozen = True
        self._after("freeze", name)

    def resume(self, name: str) -> None:
        sn = self.nodes[name]
        if sn.node is None or not sn.frozen:
            return
        self._log(f"RESUME {name}")
        self.disturb()
        sn.frozen = False
        held = sn.holds_vip
        now = sn.local(self.t)
        expired = held and now >= sn.node.lease_until
        actions = sn.node.handle(TimerFired(), now)
        if expired and (not actions or not isinstance(actions[0], ReleaseVip)):
            self.fail(f"{name} resumed with an expired lease but did not release the VIP first")
        self._run(sn, actions, "resume")
        pending, sn.inbox = sn.inbox, []
        for event in pending:
            if sn.running and sn.node is not None:
                self._run(sn, sn.node.handle(event, sn.local(self.t)), f"queued {event}")

    def stop(self, name: str) -> None:
        """The daemon's graceful stop: `Stop` now; the caller ends the process (`crash`) later."""
        sn = self.nodes[name]
        if sn.node is None or sn.frozen:
            return
        sn.stopped = True
        self.inject(name, Stop())

    def fail_effect(self, name: str, effect: Effect, duration: float) -> None:
        """Every `effect` action of `name` fails for `duration` seconds (a full disk, a
        netlink error); the node hears of it through the barrier rule."""
        sn = self.nodes[name]
        sn.fail_until[effect] = self.t + duration
        self._log(f"FAIL {name} {effect.value} for {duration:.3f}s")
        self.disturb()

    def inject(self, name: str, event: Event) -> list[Action]:
        sn = self.nodes[name]
        if sn.node is None:
            return []
        self.disturb()
        if sn.frozen:
            sn.inbox.append(event)
            return []
        self._log(f"INJECT {name} {event}")
        actions = sn.node.handle(event, sn.local(self.t))
        self._run(sn, actions, type(event).__name__)
        return actions

    def set_health(self, name: str, healthy: bool) -> None:
        from hafailover.core.events import HealthChanged

        sn = self.nodes[name]
        sn.healthy = healthy
        self.inject(name, HealthChanged(healthy, "sim"))

    def disturb(self) -> None:
        self.last_disturbance = self.t

    def set_network(self, **changes: object) -> None:
        """Change the network model (a fault or a repair) and note it."""
        for key, value in changes.items():
            setattr(self.net, key, value)
        self._log(f"NET {changes}")
        self.disturb()

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
        while self._queue and self._queue[0][0] <= t_end:
            t, _, kind, args = heapq.heappop(self._queue)
            self.t = max(self.t, t)
            self._dispatch(kind, args)
        self.t = max(self.t, t_end)
        self._after("tick", "")

    def _dispatch(self, kind: str, args: tuple[object, ...]) -> None:
        if kind == "timer":
            name, token = args
            sn = self.nodes[str(name)]
            if token != sn.token or sn.node is None:
                return
            sn.scheduled = float("inf")
            if sn.frozen:
                return  # resume() fires the timer
            deadline = sn.node.next_deadline()
            now = max(sn.local(self.t), deadline) if deadline - sn.local(self.t) < 1e-9 else (
                sn.local(self.t)
            )
            self._run(sn, sn.node.handle(TimerFired(), now), "timer")
            if sn.node is not None and sn.node.next_deadline() <= now:
                self.fail(f"{sn.name}: timer fired at {now} but next_deadline() did not advance")
        elif kind == "deliver":
            sender, dest, msg, incarnation = args
            sn = self.nodes[str(dest)]
            if sn.node is None or incarnation != sn.started_at:
                return  # sent to a process that has since died
            if sn.frozen:
                sn.inbox.append(MessageReceived(str(sender), msg))  # type: ignore[arg-type]
                return
            self._deliver_now(sn, str(sender), msg)  # type: ignore[arg-type]
        elif kind == "call":
            fn = args[0]
            assert callable(fn)
            fn()
        else:
            raise ValueError(kind)

    def _deliver_now(self, sn: SimNode, sender: str, msg: Message) -> None:
        assert sn.node is not None
        actions = sn.node.handle(MessageReceived(sender, msg), sn.local(self.t))
        self._run(sn, actions, f"recv {type(msg).__name__} from {sender}")

    def _run(self, sn: SimNode, actions: list[Action], cause: str) -> None:
        failed: Effect | None = None
        succeeded: set[Effect] = set()
        done: list[Action] = []
        for a in actions:
            if failed is not None and not isinstance(a, ReleaseVip | Decision | Exit):
                continue  # the barrier rule: the rest of the step is not carried out
            kind = _BARRIER.get(type(a))
            ok = self._execute(sn, a)
            if kind is not None and not ok:
                failed = failed or kind
            elif kind is not None and kind in sn.failing:
                succeeded.add(kind)
            done.append(a)
        if actions:
            skipped = len(actions) - len(done)
            note = f" (failed {failed.value}, skipped {skipped})" if failed else ""
            self._log(f"{sn.name} [{cause}] -> {_short(done)}{note}")
        self._reschedule(sn)
        self._after(cause, sn.name, done)
        if any(isinstance(a, Exit) for a in done):
            self._exit(sn)
            return
        if failed is not None and sn.running and sn.node is not None:
            sn.failing.add(failed)
            event = EffectFailed(failed, f"sim: {failed.value} failed")
            self._run(sn, sn.node.handle(event, sn.local(self.t)), "effect failed")
        for kind in sorted(succeeded - {failed} if failed else succeeded):
            if sn.running and sn.node is not None and kind in sn.failing:
                sn.failing.discard(kind)
                ok_event = EffectSucceeded(kind)
                self._run(sn, sn.node.handle(ok_event, sn.local(self.t)), "effect ok")

    def _exit(self, sn: SimNode) -> None:
        """`Exit`: the process ends now, `release-vips` removes the address, systemd restarts."""
        self.exits += 1
        self._log(f"EXIT {sn.name}")
        self.crash(sn.name)
        name = sn.name
        self.at(self.t + 1.0, "call", lambda: self.restart(name))

    def _fails(self, sn: SimNode, effect: Effect) -> bool:
        return self.t < sn.fail_until.get(effect, float("-inf"))

    def _execute(self, sn: SimNode, action: Action) -> bool:
        """Carry out one action; False only for a barrier that failed."""
        match action:
            case Send(to=to, message=message):
                if isinstance(message, VoteResponse) and message.granted and not message.pre:
                    other = self.votes.setdefault((sn.name, message.term), to)
                    if other != to:
                        self.fail(f"{sn.name} voted for {other} and {to} in term {message.term}")
                self._transmit(sn.name, to, message)
            case Persist(state=state):
                if self._fails(sn, Effect.PERSIST):
                    return False
                sn.persisted = state
            case AcquireVip():
                if self._fails(sn, Effect.ACQUIRE):
                    return False  # the port removes what it added before it raises
                if any(o.stuck_since is not None for o in self.nodes.values() if o is not sn):
                    self.stuck_overlaps += 1
                sn.holds_vip = True
                self.vip_log.append((self.t, sn.name, True))
            case ReleaseVip():
                if sn.holds_vip and self._fails(sn, Effect.RELEASE):
                    if sn.stuck_since is None:
                        sn.stuck_since = self.t
                    return False
                if sn.holds_vip:
                    self.vip_log.append((self.t, sn.name, False))
                sn.holds_vip = False
                sn.stuck_since = None
            case Decision():
                self.decisions.append((self.t, sn.name, action))
            case CommandResult():
                self.results.append((self.t, sn.name, action))
            case _:
                pass
        return True

    def _transmit(self, src: str, dst: str, msg: Message) -> None:
        net = self.net
        if (src, dst) in net.blocked:
            return
        copies = 2 if net.duplicate and self.rng.random() < net.duplicate else 1
        loss = max(net.loss, net.link_loss.get((src, dst), 0.0))
        dest = self.nodes[dst]
        for _ in range(copies):
            if loss and self.rng.random() < loss:
                continue
            latency = net.delay + self.rng.uniform(0, net.jitter)
            self.at(self.t + latency, "deliver", src, dst, msg, dest.started_at)

    def _reschedule(self, sn: SimNode) -> None:
        if sn.node is None:
            return
        deadline = sn.node.next_deadline()
        if deadline == float("inf"):
            return
        when = max(self.t, sn.real(deadline))
        if when < sn.scheduled - 1e-12 or sn.scheduled == float("inf"):
            sn.token += 1
            sn.scheduled = when
            self.at(when, "timer", sn.name, sn.token)

    # ------------------------------------------------------------------ observation

    def _after(self, cause: str, name: str, actions: Iterable[Action] = ()) -> None:
        acts = list(actions)
        for obs in self.observers:
            obs(self, name, acts)

    def _log(self, line: str) -> None:
        self.trace.append(f"{self.t:10.4f} {line}")

    def holders(self) -> list[str]:
        return [n for n, sn in self.nodes.items() if sn.running and sn.holds_vip]

    def leader_names(self) -> list[str]:
        return [
            n for n, sn in self.nodes.items()
            if sn.node is not None and sn.node.role.value == "leader"
        ]

    def fail(self, message: str) -> None:
        trace = "\n".join(self.trace)
        raise SimulationError(
            f"{message}\n  seed={self.seed} at t={self.t:.4f}s\n  scenario: {self.description}\n"
            f"  replay: .venv/bin/python -m tests.sim.replay {self.seed}\n"
            f"--- last events ---\n{trace}"
        )

    def first_acquire_after(self, t0: float, exclude: str = "") -> float | None:
        for t, name, held in self.vip_log:
            if t >= t0 and held and name != exclude:
                return t
        return None

    def result(self, name: str, request_id: int) -> tuple[float, CommandResult] | None:
        """When and how `name` answered its operator's request `request_id` (None: not yet)."""
        for t, n, r in self.results:
            if n == name and r.request_id == request_id:
                return t, r
        return None

    def elected(self) -> list[tuple[float, str, int]]:
        return [(t, n, d.term) for t, n, d in self.decisions if d.reason is Reason.ELECTED]


_BARRIER: dict[type[Action], Effect] = {
    Persist: Effect.PERSIST,
    AcquireVip: Effect.ACQUIRE,
    ReleaseVip: Effect.RELEASE,
}


def _short(actions: list[Action]) -> str:
    parts = []
    for a in actions:
        if isinstance(a, Send):
            parts.append(f"send {type(a.message).__name__}{_fields(a.message)}->{a.to}")
        elif isinstance(a, Decision):
            parts.append(f"decide {a.reason.value} term={a.term} {a.detail or ''}".rstrip())
        else:
            parts.append(type(a).__name__)
    return "; ".join(parts)


def _fields(msg: Message) -> str:
    term = getattr(msg, "term", "?")
    extra = ""
    if hasattr(msg, "granted"):
        extra = " granted" if msg.granted else " refused"
    if getattr(msg, "pre", False):
        extra += " pre"
    return f"(t{term}{extra})"
