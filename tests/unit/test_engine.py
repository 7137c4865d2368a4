"""The engine carries out the core's actions in order, against fake ports."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from typing import Any

from hafailover.core.actions import PersistentState
from hafailover.core.events import HealthChanged, MessageReceived, SetMaintenance, Switchover
from hafailover.core.messages import HeartbeatAck, Message, TimeoutNow, VoteRequest
from hafailover.core.node import Node
from hafailover.core.spec import ClusterSpec, NodeSpec
from hafailover.net.announce import FakeAnnouncer
from hafailover.net.vip import FakeVipManager, Vip, VipError
from hafailover.runtime.engine import Engine, Ports
from hafailover.runtime.notify import FakeNotifier
from hafailover.runtime.sdnotify import FakeSystemdNotifier
from hafailover.runtime.store import FakeEventLog, FakeStateStore

SPEC = ClusterSpec((NodeSpec("a", 150), NodeSpec("b", 100), NodeSpec("c", 50)))
VIP = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A transport and store that append to one shared log, so order across ports is visible."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.sent: list[tuple[str, Message]] = []

    def send(self, to: str, message: Message) -> None:
        self.sent.append((to, message))
        self.log.append(f"send {type(message).__name__} {to}")

    def close(self) -> None:
        pass

    @property
    def drops(self) -> dict[str, int]:
        return {}


class LoggingVips(FakeVipManager):
    def __init__(self, log: list[str]) -> None:
        super().__init__([VIP])
        self.log = log

    def acquire(self) -> None:
        self.log.append("acquire")
        super().acquire()

    def release(self) -> None:
        self.log.append("release")
        super().release()


class LoggingStore(FakeStateStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def save(self, state: PersistentState) -> None:
        self.log.append(f"persist term={state.term} vote={state.voted_for}")
        super().save(state)


def make_engine(log: list[str]) -> tuple[Engine, Clock, Recorder, Any]:
    clock = Clock()
    transport = Recorder(log)
    vips = LoggingVips(log)
    ports = Ports(transport, vips, FakeAnnouncer(), FakeNotifier(), LoggingStore(log),
                  FakeEventLog(), FakeSystemdNotifier())
    node = Node(SPEC, "a", random.Random(1))
    return Engine(node, ports, [str(VIP)], 0.3, clock), clock, transport, vips


def elect(engine: Engine, clock: Clock) -> None:
    """Drive node a to a leader holding the VIP through real core steps."""
    engine.start()
    clock.now = engine.node.next_deadline()
    engine._on_timer()  # pre-vote goes out
    for voter in ("b", "c"):
        engine.on_message(voter, _grant(engine, pre=True))
    for voter in ("b", "c"):
        engine.on_message(voter, _grant(engine, pre=False))
    engine.on_message("b", HeartbeatAck(engine.node.term, 1, True, True, False))


def _grant(engine: Engine, pre: bool) -> Message:
    from hafailover.core.messages import VoteResponse

    term = engine.node.term + 1 if pre else engine.node.term
    return VoteResponse(term, pre, True, True, False)


def run(coro_fn: Any) -> None:
    async def main() -> None:
        coro_fn()

    asyncio.run(main())


def test_vote_is_persisted_before_the_vote_request_leaves() -> None:
    log: list[str] = []

    def body() -> None:
        engine, clock, _, _ = make_engine(log)
        engine.start()
        clock.now = engine.node.next_deadline()
        engine._on_timer()
        engine.on_message("b", _grant(engine, pre=True))
        persist = log.index("persist term=1 vote=a")
        requests = [i for i, line in enumerate(log) if line.startswith("send VoteRequest")]
        # Two pre-vote requests went out before; the two real ones only after the vote is saved.
        assert len(requests) == 4 and requests[1] < persist < requests[2], log

    run(body)


def test_leader_acquires_then_releases_before_telling_the_successor() -> None:
    log: list[str] = []

    def body() -> None:
        engine, clock, transport, vips = make_engine(log)
        elect(engine, clock)
        assert vips.holding and engine.node.holds_vip
        # b must be known healthy and reachable to be a target.
        engine.on_message("b", HeartbeatAck(engine.node.term, 1, True, True, False))
        log.clear()
        engine.feed(HealthChanged(False, "check web failed"))
        assert log.index("release") < log.index("send TimeoutNow b"), log
        assert not vips.holding
        assert any(isinstance(m, TimeoutNow) for _, m in transport.sent)

    run(body)


def test_failed_vip_add_makes_the_node_unhealthy_and_it_steps_down() -> None:
    log: list[str] = []

    async def main() -> None:
        engine, clock, _, vips = make_engine(log)
        vips.fail["acquire"] = VipError("interface 'eth0' does not exist")
        elect(engine, clock)
        await asyncio.sleep(0)  # the unhealthy verdict is scheduled, not recursive
        assert engine.node.healthy is False
        assert engine.node.role.value == "follower"
        assert "release" in log

    asyncio.run(main())


def test_health_is_the_and_of_components() -> None:
    log: list[str] = []

    def body() -> None:
        engine, _, _, _ = make_engine(log)
        engine.start()
        engine.set_health("checks", False, "web down")
        engine.set_health("loop", False, "late")
        engine.set_health("checks", True, "web up")
        assert engine.node.healthy is False  # the loop is still late
        engine.set_health("loop", True, "on time")
        assert engine.node.healthy is True

    run(body)


def test_operator_commands_return_the_core_answer() -> None:
    log: list[str] = []

    def body() -> None:
        engine, clock, _, _ = make_engine(log)
        elect(engine, clock)
        refused = engine.command(Switchover(1, "nosuch"))
        assert not refused.accepted and refused.reason.value == "target-unknown"
        result = engine.command(SetMaintenance(2, True))
        assert result.accepted and engine.node.maintenance
        assert engine.ports.store.load().maintenance is True

    run(body)


def test_messages_from_unknown_senders_are_ignored() -> None:
    log: list[str] = []

    def body() -> None:
        engine, _, transport, _ = make_engine(log)
        engine.start()
        engine.feed(MessageReceived("mallory", VoteRequest(9, False, True, False)))
        assert transport.sent == []
        assert engine.node.term == 0

    run(body)
