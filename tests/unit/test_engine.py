"""The engine carries out the core's actions in order, under the barrier rule, against fakes.

Most tests drive the real core. The barrier-rule tests script one step of it (`Scripted`: a
real `Node` whose answer to one event is replaced) so that they check the engine's rule exactly,
whatever the core decides to do about a failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from hafailover.core.actions import (
    AcquireVip,
    Action,
    Announce,
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
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Switchover,
    VipConflict,
)
from hafailover.core.messages import HeartbeatAck, Message, TimeoutNow, VoteRequest, VoteResponse
from hafailover.core.node import Node
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, NodeSpec
from hafailover.net.announce import FakeAnnouncer
from hafailover.net.vip import Vip, VipError
from hafailover.net.vipfake import FakeVipPort
from hafailover.runtime.checks import FakeHealth
from hafailover.runtime.engine import Engine, Ports
from hafailover.runtime.notify import FakeNotifier
from hafailover.runtime.sdnotify import FakeSystemdNotifier
from hafailover.runtime.status import StatusHandler
from hafailover.runtime.store import FakeEventLog, FakeStateStore

SPEC = ClusterSpec((NodeSpec("a", 150), NodeSpec("b", 100), NodeSpec("c", 50)))
VIP = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A transport that appends to the shared log, so order across ports is visible."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.sent: list[tuple[str, Message]] = []
        self.batches: list[tuple[str, int]] = []

    def send_batch(self, to: str, items: Sequence[tuple[str, Message]]) -> None:
        self.batches.append((to, len(items)))
        for _, message in items:
            self.sent.append((to, message))
            self.log.append(f"send {type(message).__name__} {to}")

    def defer(self, on: bool) -> None:
        pass  # every datagram of these tests is fed by hand

    def drain(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def drops(self) -> dict[str, int]:
        return {}


class LoggingVips(FakeVipPort):
    def __init__(self, log: list[str], clock: Callable[[], float] | None = None) -> None:
        super().__init__(clock=clock)
        self.log = log
        self.gate: asyncio.Event | None = None  # when set up, add waits for it

    async def add(self, vips: Sequence[Vip], lifetime: float | None) -> None:
        self.log.append("acquire")
        if self.gate is not None:
            await self.gate.wait()
        await super().add(vips, lifetime)
        self.log.append("acquired")

    async def renew(self, vips: Sequence[Vip], lifetime: float) -> None:
        self.log.append("renew")
        await super().renew(vips, lifetime)

    async def remove(self, vips: Sequence[Vip]) -> None:
        self.log.append("release")
        await super().remove(vips)


class LoggingStore(FakeStateStore):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def save(self, state: PersistentState) -> None:
        self.log.append(f"persist term={state.term} vote={state.voted_for}")
        super().save(state)


class Scripted(Node):
    """The real core, except that the next event of a scripted type gets the scripted actions
    (effect feedback is recorded and answered with nothing unless scripted)."""

    def __init__(self) -> None:
        super().__init__(SPEC, "a", random.Random(1))
        self.script: dict[type, list[Action]] = {}
        self.seen: list[Event] = []

    def handle(self, event: Event, now: float) -> list[Action]:
        self.seen.append(event)
        if type(event) in self.script:
            return self.script.pop(type(event))
        if isinstance(event, EffectFailed | EffectSucceeded):
            return []
        return super().handle(event, now)


class Rig:
    def __init__(self, node: Node | None = None, lifetime: float | None = None) -> None:
        self.log: list[str] = []
        self.clock = Clock()
        self.transport = Recorder(self.log)
        self.vips = LoggingVips(self.log)
        self.store = LoggingStore(self.log)
        self.announcer = FakeAnnouncer()
        self.announcer.started = True  # the daemon starts it before the engine
        self.holding: list[bool] = []
        self.exits: list[Exit] = []
        self.ports = Ports(self.transport, self.vips, self.announcer, FakeNotifier(), self.store,
                           FakeEventLog(), FakeSystemdNotifier(), on_holding=self.holding.append,
                           on_exit=self.exits.append)
        self.node = node or Node(SPEC, "a", random.Random(1))
        self.engine = Engine(self.node, self.ports, [VIP], 0.3, self.clock,
                             vip_lifetime=lifetime, command_timeout=0.5)

    async def feed(self, event: Event) -> list[Action]:
        return await self.engine.process(event)

    async def message(self, sender: str, message: Message) -> list[Action]:
        return await self.feed(MessageReceived(sender, message))

    async def elect(self) -> None:
        """Drive node a to a leader holding the VIP through real core steps."""
        await self.engine.start()
        self.clock.now = self.node.next_deadline()
        await self.engine.process(_timer())
        for voter in ("b", "c"):
            await self.message(voter, _grant(self.node, pre=True))
        for voter in ("b", "c"):
            await self.message(voter, _grant(self.node, pre=False))
        await self.message("b", HeartbeatAck(self.node.term, 1, True, True, False))
        assert self.node.holds_vip, self.log


def _timer() -> Event:
    from hafailover.core.events import TimerFired

    return TimerFired()


def _grant(node: Node, pre: bool) -> Message:
    term = node.term + 1 if pre else node.term
    return VoteResponse(term, pre, True, True, False)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ ordering


def test_vote_is_persisted_before_the_vote_request_leaves() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.engine.start()
        rig.clock.now = rig.node.next_deadline()
        await rig.feed(_timer())
        await rig.message("b", _grant(rig.node, pre=True))
        persist = rig.log.index("persist term=1 vote=a")
        requests = [i for i, line in enumerate(rig.log) if line.startswith("send VoteRequest")]
        # Two pre-vote requests went out before; the two real ones only after the vote is saved.
        assert len(requests) == 4 and requests[1] < persist < requests[2], rig.log

    run(body)


def test_leader_acquires_then_releases_before_telling_the_successor() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.elect()
        assert rig.log.index("acquire") < rig.log.index("acquired")
        assert rig.vips.holds([VIP]) and rig.holding == [True]
        await rig.message("b", HeartbeatAck(rig.node.term, 1, True, True, False))
        rig.log.clear()
        await rig.feed(HealthChanged(False, "check web failed"))
        assert rig.log.index("release") < rig.log.index("send TimeoutNow b"), rig.log
        assert not rig.vips.holds([VIP]) and rig.holding == [True, False]

    run(body)


def test_a_later_event_waits_until_the_step_before_it_is_carried_out() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.engine.start()
        rig.clock.now = rig.node.next_deadline()
        await rig.feed(_timer())
        for voter in ("b", "c"):
            await rig.message(voter, _grant(rig.node, pre=True))
        for voter in ("b", "c"):
            await rig.message(voter, _grant(rig.node, pre=False))
        rig.vips.gate = asyncio.Event()  # the VIP add hangs until released below
        rig.engine.on_message("b", HeartbeatAck(rig.node.term, 1, True, True, False))
        rig.engine.feed(VipConflict("10.213.0.100"))  # would announce: must wait for the add
        for _ in range(20):
            await asyncio.sleep(0)
        assert rig.log[-1] == "acquire" and rig.announcer.announcements == 0, rig.log
        rig.vips.gate.set()
        await rig.feed(_timer())  # a marker: everything queued before it is done
        assert rig.log.index("acquired") < len(rig.log)
        assert rig.announcer.announcements == 2  # lease-acquired, then the conflict's

    run(body)


# ------------------------------------------------------------------------------ barriers


def test_failed_persist_stops_the_step_but_release_and_decision_and_refuses_the_command() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        rig.store.fail_saves = 1
        decision = Decision(Reason.ELECTION_TIMEOUT, Role.CANDIDATE, 1, "")
        node.script[Switchover] = [
            Persist(PersistentState(1, "a")),
            Send("b", VoteRequest(1, False, True, False)),
            ReleaseVip(Reason.STOPPING),
            decision,
            Announce(Reason.ELECTED),
            CommandResult(7, True, Reason.ACCEPTED),
        ]
        result = await rig.engine.command(Switchover(7, ""))
        assert not result.accepted and result.reason is Reason.PERSIST_FAILED
        assert "fake: save failed" in result.detail
        assert rig.transport.sent == [] and rig.announcer.announcements == 0
        assert "release" in rig.log  # always attempted
        assert rig.engine.recent[-1]["reason"] == Reason.ELECTION_TIMEOUT.value  # recorded
        failed = [e for e in node.seen if isinstance(e, EffectFailed)]
        assert failed == [EffectFailed(Effect.PERSIST, result.detail)]
        assert rig.engine.failing == {Effect.PERSIST: result.detail}

        # The next save that works clears it, after the step.
        node.script[HealthChanged] = [Persist(PersistentState(1, "a"))]
        await rig.feed(HealthChanged(True, ""))
        assert node.seen[-1] == EffectSucceeded(Effect.PERSIST)
        assert rig.engine.failing == {}
        # Successes without an earlier failure are not reported.
        node.script[HealthChanged] = [Persist(PersistentState(1, "a"))]
        await rig.feed(HealthChanged(True, ""))
        assert not isinstance(node.seen[-1], EffectSucceeded)

    run(body)


def test_a_failure_repeated_by_the_cores_retries_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        rig.store.fail_saves = 3
        for _ in range(3):
            node.script[HealthChanged] = [Persist(PersistentState(1, "a"))]
            await rig.feed(HealthChanged(True, ""))
        failed = [e for e in node.seen if isinstance(e, EffectFailed)]
        assert len(failed) == 3  # the core hears every one
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert [r.getMessage() for r in errors] == ["fake: save failed"]

    run(body)


def test_failed_acquire_sends_no_announcement_and_never_claims_to_hold() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        rig.vips.fail["add"] = VipError("interface 'eth0' does not exist")
        node.script[HealthChanged] = [AcquireVip(1), Announce(Reason.LEASE_ACQUIRED)]
        await rig.feed(HealthChanged(True, ""))
        assert rig.announcer.announcements == 0 and rig.holding == []
        assert node.seen[-1] == EffectFailed(
            Effect.ACQUIRE, "adding the VIP failed: interface 'eth0' does not exist")
        status = await StatusHandler(rig.engine, "lab", FakeHealth()).status()
        assert status["effects_failing"] == [
            {"effect": "acquire",
             "detail": "adding the VIP failed: interface 'eth0' does not exist"}]
        assert any(c["name"] == "effect:acquire" and not c["ok"]
                   for c in status["checks"])  # type: ignore[attr-defined]

    run(body)


def test_failed_release_sends_no_timeout_now_and_feeds_the_failure() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.elect()
        await rig.message("b", HeartbeatAck(rig.node.term, 1, True, True, False))
        rig.vips.fail["remove"] = VipError("netlink timed out")
        rig.log.clear()
        await rig.feed(HealthChanged(False, "check web failed"))
        assert "release" in rig.log
        assert not any(isinstance(m, TimeoutNow) for _, m in rig.transport.sent), rig.log
        assert Effect.RELEASE in rig.engine.failing

    run(body)


def test_exit_is_carried_out_even_after_a_failure() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        rig.vips.fail["remove"] = VipError("netlink timed out")
        node.script[HealthChanged] = [
            ReleaseVip(Reason.RELEASE_FAILED),
            Exit(Reason.RELEASE_FAILED, "the VIP could not be removed within the lease"),
        ]
        await rig.feed(HealthChanged(True, ""))
        assert [e.detail for e in rig.exits] == ["the VIP could not be removed within the lease"]

    run(body)


# ------------------------------------------------------------------------------ commands


def test_operator_commands_return_the_core_answer() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.elect()
        refused = await rig.engine.command(Switchover(1, "nosuch"))
        assert not refused.accepted and refused.reason is Reason.TARGET_UNKNOWN
        result = await rig.engine.command(SetMaintenance(2, True))
        assert result.accepted and rig.node.maintenance
        assert rig.store.load().maintenance is True

    run(body)


def test_a_command_is_answered_by_a_later_step_or_refused_after_the_bound() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        node.script[SetMaintenance] = []  # forwarded: no answer in this step
        pending = asyncio.ensure_future(rig.engine.command(SetMaintenance(5, True, "b")))
        await asyncio.sleep(0.05)
        assert not pending.done()
        node.script[HealthChanged] = [CommandResult(5, True, Reason.ACCEPTED, "b")]
        await rig.feed(HealthChanged(True, ""))
        result = await pending
        assert result == CommandResult(5, True, Reason.ACCEPTED, "b")

        node.script[SetMaintenance] = []
        late = await rig.engine.command(SetMaintenance(6, True, "b"))
        assert not late.accepted and late.reason is Reason.COMMAND_TIMEOUT
        assert "0.5s" in late.detail

    run(body)


# ------------------------------------------------------------------------------ VIP lifetime


def test_the_vip_lifetime_is_renewed_only_while_the_lease_is_valid() -> None:
    async def body() -> None:
        rig = Rig(lifetime=1.0)
        interval = rig.engine.renew_interval
        assert interval == pytest.approx(1.0 - SPEC.timings.lease_duration - 0.1)
        await rig.elect()
        assert rig.vips.lifetimes[VIP] == 1.0
        await asyncio.sleep(2.2 * interval)
        assert rig.log.count("renew") >= 2, rig.log
        # The lease runs out on the core's clock: no renewal from now on (the kernel's clock
        # removes the address even if this node never gets to its next event).
        rig.clock.now = rig.node.lease_until + 0.001
        count = rig.log.count("renew")
        await asyncio.sleep(1.5 * interval)
        assert rig.log.count("renew") == count, rig.log

    run(body)


def test_the_renewal_interval_keeps_the_address_past_any_valid_lease() -> None:
    from hafailover.runtime.engine import renewal_interval

    assert renewal_interval(2.0, 0.54) == 1.0  # the defaults: every lifetime/2
    assert renewal_interval(3.0, 2.5) == pytest.approx(0.4)  # lifetime - lease - margin
    with pytest.raises(ValueError, match="Set vip_lifetime to 3s or more"):
        renewal_interval(2.0, 1.8)  # a late renewal could outlive a valid lease


def test_a_failed_renewal_is_a_failed_acquire() -> None:
    async def body() -> None:
        rig = Rig(lifetime=1.0)
        await rig.elect()
        rig.vips.fail["renew"] = VipError("eth0 gone: interface does not exist")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if Effect.ACQUIRE in rig.engine.failing:
                break
        assert "renewing the VIP failed" in rig.engine.failing[Effect.ACQUIRE]

    run(body)


# ------------------------------------------------------------------------------ inputs


def test_health_is_the_and_of_components() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.engine.start()
        rig.engine.set_health("checks", False, "web down")
        rig.engine.set_health("loop", False, "late")
        rig.engine.set_health("checks", True, "web up")
        await rig.feed(_timer())
        assert rig.node.healthy is False  # the loop is still late
        rig.engine.set_health("loop", True, "on time")
        await rig.feed(_timer())
        assert rig.node.healthy is True

    run(body)


def test_messages_from_unknown_senders_are_ignored() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.engine.start()
        await rig.feed(MessageReceived("mallory", VoteRequest(9, False, True, False)))
        assert rig.transport.sent == []
        assert rig.node.term == 0

    run(body)


def test_a_command_waiting_at_close_is_refused_as_stopping() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        rig.engine.command_timeout = 10.0
        await rig.engine.start()
        node.script[SetMaintenance] = []  # forwarded, never answered
        pending = asyncio.ensure_future(rig.engine.command(SetMaintenance(9, True, "b")))
        await asyncio.sleep(0.01)
        await rig.engine.close()
        result = await asyncio.wait_for(pending, 1.0)
        assert not result.accepted and result.reason is Reason.STOPPING

    run(body)


def test_a_repeat_due_after_the_lease_ran_out_is_not_sent() -> None:
    """The daemon's announcer asks `Engine.lease_valid` before every burst: a repeat that
    fires first after a freeze (before any event tells the engine) claims nothing."""
    from hafailover.net.announce import RawAnnouncer

    class Sock:
        def __init__(self, ifname: str) -> None:
            self.sent: list[bytes] = []

        def send(self, data: bytes, /) -> int:
            self.sent.append(data)
            return len(data)

        def close(self) -> None:
            pass

    async def body() -> None:
        rig = Rig()
        await rig.elect()
        assert rig.engine.lease_valid()
        socks: list[Sock] = []

        def factory(ifname: str) -> Sock:
            socks.append(Sock(ifname))
            return socks[-1]

        ann = RawAnnouncer([VIP], count=3, interval=0.02, frames={VIP: [b"garp"]},
                           socket_factory=factory, may_announce=rig.engine.lease_valid)
        await ann.start()
        ann.announce()
        assert socks[0].sent == [b"garp"]
        rig.clock.now = rig.node.lease_until  # "frozen" past the lease, nothing handled yet
        assert not rig.engine.lease_valid()
        await asyncio.sleep(0.1)
        assert socks[0].sent == [b"garp"] and not ann.pending

    run(body)


def test_after_close_nothing_is_handled() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.engine.start()
        await rig.engine.close()
        rig.engine.on_message("b", VoteRequest(9, False, True, False))
        assert await rig.engine.process(_timer()) == []
        assert rig.transport.sent == [] and rig.node.term == 0

    run(body)


# ------------------------------------------------------------------------------ per input cost


def test_a_lease_that_ran_out_during_a_freeze_is_silenced_before_the_next_input() -> None:
    """`feed` stops the announcements of a group whose lease ran out synchronously, before the
    input is handled, however it is handled; and between two leases' ends it asks the core
    nothing (one scan keeps the earliest end)."""

    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.elect()
        await asyncio.sleep(0)
        asked: list[float] = []
        real = node.lease_valid

        def counting(now: float) -> bool:
            asked.append(now)
            return real(now)

        node.lease_valid = counting  # type: ignore[method-assign]
        for _ in range(5):
            rig.engine.feed(HealthChanged(True, "still fine"))
        assert len(asked) <= 1, asked
        assert "cancel" not in rig.announcer.calls
        # Frozen past the lease; the consumer is busy (a re-add queued), so the input waits.
        rig.clock.now = node.lease_until
        rig.engine.readd(VIP)
        seen = len(node.seen)
        rig.engine.feed(HealthChanged(True, "after the freeze"))
        assert len(node.seen) == seen  # not handled yet...
        assert "cancel" in rig.announcer.calls and rig.holding[-1] is False  # ...but silenced
        await rig.engine.close()

    run(body)


def test_an_input_is_carried_out_at_once_while_the_engine_waits_for_one() -> None:
    async def body() -> None:
        rig = Rig()
        await rig.elect()
        await asyncio.sleep(0)  # the consumer waits for the next input
        rig.log.clear()
        rig.clock.now = rig.node.next_deadline()
        rig.engine.feed(_timer())  # a heartbeat round: sends only
        assert "send Heartbeat b" in rig.log and "send Heartbeat c" in rig.log, rig.log
        # An input whose step awaits (the release) is left to the consumer, and one fed after
        # it waits behind it: release, then its TimeoutNow, then the later round.
        rig.log.clear()
        rig.engine.feed(HealthChanged(False, "check web failed"))
        assert rig.log == [], rig.log
        rig.clock.now = rig.node.next_deadline()
        rig.engine.feed(_timer())
        assert rig.log == [], rig.log
        await asyncio.sleep(0.05)
        assert rig.log.index("release") < rig.log.index("send TimeoutNow b"), rig.log
        assert not rig.vips.holds([VIP])
        await rig.engine.close()

    run(body)


def test_an_input_fed_while_one_is_carried_out_at_once_waits_for_it() -> None:
    async def body() -> None:
        node = Scripted()
        rig = Rig(node)
        await rig.engine.start()
        await asyncio.sleep(0)
        decision = Decision(Reason.ELECTION_TIMEOUT, Role.FOLLOWER, 0, "")
        node.script[HealthChanged] = [decision, Send("b", TimeoutNow(0))]
        fed: list[list[str]] = []

        def on_decision(group: str, d: Decision) -> None:  # runs inside the first step
            fed.append(list(rig.log))
            rig.engine.feed(VipConflict("10.213.0.100"))

        rig.engine.on_decision = on_decision
        rig.engine.feed(HealthChanged(True, "first"))
        # The nested input was queued, not handled inside the step that fed it: that step
        # finished (its send left) first, and the nested one follows in order.
        assert fed == [[]] and rig.log == ["send TimeoutNow b"], (fed, rig.log)
        assert not any(isinstance(e, VipConflict) for e in node.seen)
        await asyncio.sleep(0.01)
        assert isinstance(node.seen[-1], VipConflict), node.seen
        await rig.engine.close()

    run(body)
