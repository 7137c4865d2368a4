"""Runs transcript scripts against real `Node`s: events in, decisions and actions out.

In the style of etcd-io/raft's `testdata/*.txt` (datadriven): each block is a command line, a
`----` line, and the output the core produced, up to a blank line. `#` lines are comments.
Messages travel between the nodes of one cluster with no delay; time moves only with `run`.

Commands:
  cluster NAME:PRIORITY[:witness] ... [preempt[=DELAY]] [settle=SECONDS]
  start NAME ...                      start these nodes at the current time
  run SECONDS                         deliver messages and fire timers for that long; prints
                                      every step that did more than heartbeats and acks
  deliver                             deliver what is queued, without moving time
  block FROM TO / unblock FROM TO     drop (or stop dropping) messages from FROM to TO
  switchover NODE ID [TARGET]         the operator's switchover on NODE (request ID)
  maintenance NODE ID on|off [TARGET] the operator's maintenance request on NODE
  stop NODE / health NODE up|down / conflict NODE ADDRESS
  fail NODE persist|acquire|release   from now on that effect fails on NODE ...
  repair NODE persist|acquire|release ... and works again
  status                              one line per node

The driver plays the engine's barrier rule (`hafailover.core.actions`): after a barrier action
fails, the step's remaining actions other than ReleaseVip, Decision and Exit are printed as
`skipped`, and `EffectFailed` is fed at once; the first success of a failing kind feeds
`EffectSucceeded`.
"""

from __future__ import annotations

import dataclasses
import random
import shlex
from collections import deque
from dataclasses import dataclass, field

from hafailover.core.actions import (
    AcquireVip,
    Action,
    Announce,
    CommandResult,
    Decision,
    Exit,
    Notify,
    Persist,
    ReleaseVip,
    Send,
)
from hafailover.core.describe import describe
from hafailover.core.events import (
    Effect,
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
from hafailover.core.messages import Heartbeat, HeartbeatAck, Message
from hafailover.core.node import Node
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings

_BARRIERS: dict[type[Action], Effect] = {
    Persist: Effect.PERSIST,
    AcquireVip: Effect.ACQUIRE,
    ReleaseVip: Effect.RELEASE,
}
_ROUTINE = (Heartbeat, HeartbeatAck)


class ScriptError(Exception):
    """A transcript line the driver cannot run (the script's fault, not the core's)."""


@dataclass
class Host:
    node: Node
    failing_now: set[Effect] = field(default_factory=set)  # what the world makes fail
    failing: set[Effect] = field(default_factory=set)  # what the engine has reported
    exited: bool = False


class Cluster:
    def __init__(self, args: list[str]) -> None:
        nodes, settle, preempt, delay = [], 0.0, False, Timings().preempt_delay
        for arg in args:
            if arg.startswith("preempt"):
                preempt = True
                if "=" in arg:
                    delay = float(arg.removeprefix("preempt="))
            elif arg.startswith("settle="):
                settle = float(arg.removeprefix("settle="))
            else:
                name, prio, *rest = arg.split(":")
                nodes.append(NodeSpec(name, int(prio), witness=rest == ["witness"]))
        timings = Timings(preempt_delay=delay, startup_settle=settle)
        self.spec = ClusterSpec(tuple(nodes), timings, preempt)
        self.hosts = {
            n.name: Host(Node(self.spec, n.name, random.Random(n.name))) for n in nodes
        }
        self.now = 0.0
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.blocked: set[tuple[str, str]] = set()
        self.started: set[str] = set()

    # ------------------------------------------------------------------ commands

    def run_command(self, line: str) -> list[str]:
        words = shlex.split(line)
        cmd, args = words[0], words[1:]
        out: list[str] = []
        match cmd:
            case "start":
                for name in args:
                    self.started.add(name)
                    self._step(name, "start", self._host(name).node.start(self.now), out)
            case "run":
                self._run(self.now + float(args[0]), out)
            case "deliver":
                self._deliver(out, quiet=False)
            case "block" | "unblock":
                pair = (args[0], args[1])
                if cmd == "block":
                    self.blocked.add(pair)
                else:
                    self.blocked.discard(pair)
            case "switchover":
                target = args[2] if len(args) > 2 else ""
                self._feed(args[0], Switchover(int(args[1]), target), out)
            case "maintenance":
                node = args[3] if len(args) > 3 else ""
                self._feed(args[0], SetMaintenance(int(args[1]), args[2] == "on", node), out)
            case "stop":
                self._feed(args[0], Stop(), out)
            case "health":
                self._feed(args[0], HealthChanged(args[1] == "up", " ".join(args[2:])), out)
            case "conflict":
                self._feed(args[0], VipConflict(args[1]), out)
            case "fail":
                self._host(args[0]).failing_now.add(Effect(args[1]))
            case "repair":
                self._host(args[0]).failing_now.discard(Effect(args[1]))
            case "status":
                out.extend(self._status(name) for name in self.hosts)
            case _:
                raise ScriptError(f"unknown command {cmd!r}")
        return out

    def _host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            raise ScriptError(f"no node {name!r}")
        return host

    def _feed(self, name: str, event: Event, out: list[str]) -> None:
        host = self._host(name)
        if host.exited:
            raise ScriptError(f"{name} has exited")
        self._step(name, _event_text(event), host.node.handle(event, self.now), out)

    def _run(self, until: float, out: list[str]) -> None:
        while True:
            self._deliver(out, quiet=True)
            due = [
                (self._host(n).node.next_deadline(), n)
                for n in sorted(self.started)
                if not self._host(n).exited
            ]
            when, name = min(due, default=(float("inf"), ""))
            if when > until:
                break
            self.now = max(self.now, when)
            node = self._host(name).node
            self._step(name, "timer", node.handle(TimerFired(), self.now), out, quiet=True)
        self.now = until

    def _deliver(self, out: list[str], quiet: bool) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            host = self._host(dst)
            if (src, dst) in self.blocked or dst not in self.started or host.exited:
                continue
            actions = host.node.handle(MessageReceived(src, msg), self.now)
            # Only heartbeats and acks are routine: any other message is shown, even ignored.
            routine = quiet and isinstance(msg, _ROUTINE)
            self._step(dst, f"recv {_fmt(msg)} from {src}", actions, out, routine)

    # ------------------------------------------------------------------ the engine's part

    def _step(
        self, name: str, cause: str, actions: list[Action], out: list[str], quiet: bool = False
    ) -> None:
        host = self._host(name)
        routine = quiet and all(
            isinstance(a, Send) and isinstance(a.message, _ROUTINE) for a in actions
        )
        lines: list[str] = []
        failed: Effect | None = None
        succeeded: list[Effect] = []
        for a in actions:
            if failed is not None and not isinstance(a, ReleaseVip | Decision | Exit):
                lines.append(f"  skipped: {self._fmt_action(name, a)}")
                continue
            kind = _BARRIERS.get(type(a))
            text = self._fmt_action(name, a)
            if kind is not None and kind in host.failing_now:
                failed = failed or kind
                text += "  FAILED"
            elif kind is not None and kind in host.failing and kind not in succeeded:
                succeeded.append(kind)
            if isinstance(a, Send):
                self.queue.append((name, a.to, a.message))
            if isinstance(a, Exit):
                host.exited = True
            lines.append(f"  {text}")
        if not routine or failed:
            out.append(f"{name} @{self.now:.3f} {cause}")
            out.extend(lines)
        if host.exited:
            return
        if failed is not None:
            host.failing.add(failed)
            event = EffectFailed(failed, f"{failed.value} failed (transcript)")
            self._step(name, _event_text(event), host.node.handle(event, self.now), out)
        for kind in succeeded:
            if kind != failed:
                host.failing.discard(kind)
                ok = EffectSucceeded(kind)
                self._step(name, _event_text(ok), host.node.handle(ok, self.now), out)

    def _fmt_action(self, name: str, a: Action) -> str:
        match a:
            case Send(to=to, message=msg):
                return f"send {to} {_fmt(msg)}"
            case Decision():
                return f"decide {a.reason.value}: {describe(name, a)}"
            case Persist(state=st):
                return f"persist term={st.term} voted_for={st.voted_for or '-'}" + (
                    " maintenance" if st.maintenance else ""
                )
            case Notify(kind=kind, role=role, term=term, leader=leader):
                return f"notify {kind.value} role={role.value} term={term} leader={leader or '-'}"
            case CommandResult(request_id=rid, accepted=ok, reason=reason, detail=detail):
                verdict = "accepted" if ok else "refused"
                return f"result {rid} {verdict} {reason.value} {detail!r}"
            case AcquireVip(term=term):
                return f"acquire-vip term={term}"
            case ReleaseVip(reason=reason) | Announce(reason=reason):
                return f"{type(a).__name__.lower()} {reason.value}"
            case Exit(reason=reason, detail=detail):
                return f"exit {reason.value} {detail!r}"
        raise ScriptError(f"unknown action {a!r}")

    def _status(self, name: str) -> str:
        host = self._host(name)
        v = host.node.view(self.now)
        flags = [f for f, on in (("vip", v.holds_vip), ("stopped", v.stopped)) if on]
        if not v.eligible:
            flags.append("ineligible")
        if host.exited:
            flags.append("exited")
        line = f"{name}: {v.role.value} term={v.term} leader={v.leader or '-'} {' '.join(flags)}"
        return line.rstrip() + (f" | {v.fault}" if v.fault else "")


def _fmt(msg: object) -> str:
    """`Type field=value ...`, leaving out fields at their default and the peer summaries."""
    assert dataclasses.is_dataclass(msg)
    parts = [type(msg).__name__]
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if f.name == "peers" or (f.default is not dataclasses.MISSING and value == f.default):
            continue
        if isinstance(value, bool):
            parts.append(f.name if value else f"!{f.name}")
        elif isinstance(value, float):
            parts.append(f"{f.name}={value:.3f}")
        else:
            parts.append(f"{f.name}={value}")
    return " ".join(parts)


def _event_text(event: Event) -> str:
    return _fmt(event) if dataclasses.fields(event) else type(event).__name__


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: list[str]


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i, comments = 0, []
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        if i >= len(lines) or lines[i] != "----":
            raise ScriptError(f"line {i}: {line!r} is not followed by ----")
        i += 1
        expected = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(comments, line, expected))
        comments = []
    return blocks


def run_script(text: str) -> tuple[list[Block], list[list[str]]]:
    """Run every block; returns the blocks and the output each produced."""
    blocks = parse(text)
    cluster: Cluster | None = None
    outputs: list[list[str]] = []
    for b in blocks:
        words = b.command.split()
        if words[0] == "cluster":
            cluster = Cluster(words[1:])
            outputs.append([])
            continue
        if cluster is None:
            raise ScriptError("a script starts with a cluster line")
        outputs.append(cluster.run_command(b.command))
    return blocks, outputs


def render(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts = []
    for b, out in zip(blocks, outputs, strict=True):
        parts.extend(b.comments)
        parts.extend([b.command, "----", *out, ""])
    return "\n".join(parts).rstrip("\n") + "\n"
