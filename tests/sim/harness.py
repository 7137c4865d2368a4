"""A deterministic multi-node simulator for the protocol core.

Real (virtual) time `t` drives an event queue. Every node has its own monotonic clock
`local = offset + rate * t` with `rate` within the configured drift bound, so leases are tested
against clocks that disagree. The network loses, delays (with jitter, hence reorders),
duplicates and blocks (per direction) messages. Nodes crash (losing everything but persisted
state), restart, freeze (their events wait) and resume.

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
    Persist,
    PersistentState,
    ReleaseVip,
    Send,
)
from hafailover.core.events import Event, MessageReceived, TimerFired
from hafailover.core.messages import Message
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
    ) -> None:
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
        for sn in self.nodes.values():
            self._boot(sn)

    # ------------------------------------------------------------------ node lifecycle

    def _boot(self, sn: SimNode) -> None:
        sn.node = Node(self.spec, sn.name, sn.rng, sn.persisted, healthy=sn.healthy)
        sn.holds_vip = False  # the daemon removes leftover VIPs before it reports ready
        sn.started_at = self.t
        sn.inbox = []
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
        for a in actions:
            self._execute(sn, a)
        if actions:
            self._log(f"{sn.name} [{cause}] -> {_short(actions)}")
        self._reschedule(sn)
        self._after(cause, sn.name, actions)

    def _execute(self, sn: SimNode, action: Action) -> None:
        match action:
            case Send(to=to, message=message):
                self._transmit(sn.name, to, message)
            case Persist(state=state):
                sn.persisted = state
            case AcquireVip():
                sn.holds_vip = True
                self.vip_log.append((self.t, sn.name, True))
            case ReleaseVip():
                if sn.holds_vip:
                    self.vip_log.append((self.t, sn.name, False))
                sn.holds_vip = False
            case Decision():
                self.decisions.append((self.t, sn.name, action))
            case CommandResult():
                self.results.append((self.t, sn.name, action))
            case _:
                pass

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
