"""Reading the socket at the round: `SocketReading`'s rules, and three real engines on loopback
whose holder reads its peers' datagrams at its rounds, each handled at its arrival time."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import pytest

from hafailover.core.events import MessageReceived
from hafailover.core.groups import ForGroup, Groups, Tagged
from hafailover.core.spec import ClusterSpec, NodeSpec
from hafailover.net.announce import FakeAnnouncer
from hafailover.net.vip import Vip
from hafailover.net.vipfake import FakeVipPort
from hafailover.runtime.engine import Engine, Ports
from hafailover.runtime.notify import FakeNotifier
from hafailover.runtime.ports import Input
from hafailover.runtime.reading import STAMP_TOLERANCE, SocketReading
from hafailover.runtime.sdnotify import FakeSystemdNotifier
from hafailover.runtime.store import FakeEventLog, FakeStateStore
from hafailover.runtime.transport import UdpTransport
from hafailover.wire import Codec, Decoded

INTERVAL = 0.1


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.real = 1_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.real += seconds


class ScriptedTransport:
    """Drains the stamps it is given into `reading.receipt`, as the engine's callback would."""

    def __init__(self) -> None:
        self.deferrals: list[bool] = []
        self.waiting: list[float] = []
        self.complete = True
        self.receipts: list[float | None] = []
        self.reading: SocketReading | None = None

    def defer(self, on: bool) -> None:
        self.deferrals.append(on)

    def drain(self) -> bool:
        assert self.reading is not None
        self.receipts += [self.reading.receipt(s) for s in self.waiting]
        self.waiting = []
        return self.complete


def _reading() -> tuple[SocketReading, ScriptedTransport, Clocks]:
    clocks = Clocks()
    transport = ScriptedTransport()
    reading = SocketReading(transport, lambda: clocks.mono, INTERVAL, lambda: clocks.real)
    transport.reading = reading
    return reading, transport, clocks


def test_settle_switches_the_transport_only_on_a_change() -> None:
    reading, transport, _ = _reading()
    reading.settle(False)
    reading.settle(True)
    reading.settle(True)
    reading.settle(False)
    assert transport.deferrals == [True, False]
    assert reading.receipt(123.0) is None  # outside a drain: handled now


def test_stamps_count_from_the_second_drain_and_only_while_the_clocks_keep_their_offset() -> None:
    reading, transport, clocks = _reading()
    reading.settle(True)
    clocks.advance(INTERVAL)
    transport.waiting = [clocks.real - 0.05]
    reading.drain()  # the first drain has no earlier offset to compare with
    assert transport.receipts == [None] and reading.untrusted_drains == 1

    clocks.advance(INTERVAL)
    arrived = clocks.mono - 0.05
    transport.waiting = [clocks.real - 0.05, clocks.real + 0.01, clocks.real - 5.0]
    reading.drain()
    # Arrival moved later by the tolerance; a stamp from the future is now; a stamp older than
    # an interval is an interval ago.
    assert transport.receipts[1:] == pytest.approx(
        [arrived + STAMP_TOLERANCE, clocks.mono, clocks.mono - INTERVAL], abs=1e-6)
    assert reading.untrusted_drains == 1 and reading.drains == 2

    clocks.advance(INTERVAL)
    clocks.real += 0.005  # the real-time clock was stepped between the two drains
    transport.waiting = [clocks.real - 0.05]
    reading.drain()
    assert transport.receipts[-1] is None and reading.untrusted_drains == 2

    clocks.advance(INTERVAL)
    transport.waiting = [clocks.real - 0.05]
    reading.drain()  # compared with the stepped offset: trusted again
    assert transport.receipts[-1] == pytest.approx(clocks.mono - 0.05 + STAMP_TOLERANCE,
                                                   abs=1e-6)


def test_a_drain_that_leaves_datagrams_waiting_goes_back_to_reading_at_once() -> None:
    reading, transport, _ = _reading()
    reading.settle(True)
    transport.complete = False
    reading.drain()
    assert not reading.deferred and transport.deferrals == [True, False]


# ------------------------------------------------------------------ three engines on loopback

SPEC = ClusterSpec((NodeSpec("a", 150), NodeSpec("b", 100), NodeSpec("c", 50)))
VIP = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
KEY = bytes(range(32))


class SlowRenewals(FakeVipPort):
    """Renewals that take a while, so that the round's datagrams, read when the renewal due at
    the same instant has just begun, wait behind it in the engine's inbox."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    async def renew(self, vips: Sequence[Vip], lifetime: float) -> None:
        self.renewals += 1
        await asyncio.sleep(0.01)
        await super().renew(vips, lifetime)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Steps = list[tuple[float, float]]  # (the engine's clock, the core's time) per datagram's step


async def _cluster_run(
    seconds: float,
) -> dict[str, tuple[Engine, list[tuple[float, float | None, float | None]], Steps]]:
    """Three nodes for `seconds` after one holds the VIP (kernel lifetime 2 s, renewals that
    take 10 ms); per node its engine, for every datagram read (when, its stamp, the receipt
    time it was given), and for every step of received datagrams (when, the core's time)."""
    names = [n.name for n in SPEC.nodes]
    ports = {n: _free_port() for n in names}
    out: dict[str, tuple[Engine, list[tuple[float, float | None, float | None]], Steps]] = {}
    transports: list[UdpTransport] = []

    def handler(engines: list[Engine], seen: list[tuple[float, float | None, float | None]]
                ) -> Callable[[Decoded, float | None], None]:
        def on_batch(decoded: Decoded, stamp: float | None) -> None:
            engine = engines[0]  # made after its transport
            seen.append((engine.clock(), stamp, engine.reading.receipt(stamp)))
            engine.on_batch(decoded.sender, decoded.items, stamp)
        return on_batch

    try:
        for i, name in enumerate(names):
            seen: list[tuple[float, float | None, float | None]] = []
            holder: list[Engine] = []
            transport = await UdpTransport.bind(
                Codec(KEY, "lab", name, names, 11 + i), ("127.0.0.1", ports[name]),
                {p: ("127.0.0.1", ports[p]) for p in names if p != name},
                handler(holder, seen),
            )
            transports.append(transport)
            announcer = FakeAnnouncer()
            announcer.started = True
            groups = Groups({"default": SPEC}, name, random.Random(i))
            engine = Engine(
                groups,
                Ports(transport, SlowRenewals(), announcer, FakeNotifier(), FakeStateStore(),
                      FakeEventLog(), FakeSystemdNotifier()),
                {"default": [VIP]}, 0.3, watchdog=False, vip_lifetime=2.0,
            )
            holder.append(engine)
            out[name] = (engine, seen, _record_steps(engine, groups))
        for engine, _, _ in out.values():
            await engine.start()
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(
            e.node.holds_vip for e, _, _ in out.values()
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # settled, its first drain (stamps not yet trusted) behind it
        for engine, seen, steps in out.values():
            seen.clear()
            steps.clear()
            engine.reading.untrusted_drains = 0
        await asyncio.sleep(seconds)
    finally:
        for engine, _, _ in out.values():
            await engine.close()
        for t in transports:
            t.close()
    return out


def _record_steps(engine: Engine, groups: Groups) -> Steps:
    steps: Steps = []
    handle_many = groups.handle_many

    def recording(events: Iterable[Input], now: float) -> list[Tagged]:
        events = list(events)
        if any(isinstance(e, ForGroup) and isinstance(e.event, MessageReceived) for e in events):
            steps.append((engine.clock(), now))
        return handle_many(events, now)

    groups.handle_many = recording  # type: ignore[method-assign]
    return steps


def test_the_holder_reads_its_peers_at_its_rounds_and_handles_each_datagram_at_arrival() -> None:
    nodes = asyncio.run(_cluster_run(2.5))
    holders = [n for n, (e, _, _) in nodes.items() if e.node.holds_vip]
    assert holders == ["a"], holders
    engine, seen, steps = nodes["a"]
    assert engine.reading.deferred
    # Every datagram the settled holder handled was read by a drain, stamped; the followers,
    # which lead nothing (no round of their own), read theirs at once.
    stamped = [s for _, s, _ in seen if s is not None]
    assert len(seen) >= 15 and len(stamped) >= len(seen) - 2
    for follower in ("b", "c"):
        f_engine, f_seen, _ = nodes[follower]
        assert not f_engine.reading.deferred
        assert f_seen and all(s is None for _, s, _ in f_seen)
    # The acknowledgements come in right after each round and wait for the next one, yet are
    # handled at their arrival: tens of milliseconds before they were read.
    waits = [read - r for read, _, r in seen if r is not None]
    assert len(waits) >= len(seen) // 2
    assert statistics.median(waits) > 0.03
    assert engine.reading.drains >= 10
    # Also those read while a renewal due at the same round kept the engine busy: each step of
    # a received datagram ran at its arrival, not when the engine got to it.
    vips = engine.ports.vips
    assert isinstance(vips, SlowRenewals) and vips.renewals >= 2
    assert engine.reading.untrusted_drains == 0
    assert len(steps) >= 15
    late = [(round(t, 3), round(t - core, 3)) for t, core in steps if t - core < 0.03]
    assert not late, late
    # Both followers' acknowledgements of a round come in together and are one step.
    assert len(steps) <= 0.6 * len(stamped), (len(steps), len(stamped))
