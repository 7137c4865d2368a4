"""The engine driving several VIP groups (`Groups`) against fakes: each group's actions act on
its own VIPs, announcer and hooks; sends of one step leave in one batch per peer; the barrier
rule holds per group; one state write per step; per-group health; VIPs removed behind our back."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hafailover.config.groups import Fingerprint
from hafailover.core.events import Effect, TimerFired
from hafailover.core.groups import Groups
from hafailover.core.messages import HeartbeatAck, Message, VoteRequest, VoteResponse
from hafailover.core.reasons import Role
from hafailover.core.spec import ClusterSpec, NodeSpec
from hafailover.net.announce import FakeAnnouncer
from hafailover.net.vip import Vip, VipError
from hafailover.net.vipfake import FakeVipPort
from hafailover.runtime.engine import Engine, Ports
from hafailover.runtime.grouphealth import Drift
from hafailover.runtime.notify import FakeNotifier
from hafailover.runtime.sdnotify import FakeSystemdNotifier
from hafailover.runtime.store import FakeEventLog, FakeStateStore

SPEC = ClusterSpec((NodeSpec("a", 150), NodeSpec("b", 100), NodeSpec("c", 50)))
WEB = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
DB = Vip(ipaddress.ip_interface("10.213.0.101/24"), "eth1")


def sync(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body in a fresh event loop (no asyncio plugin is used here)."""

    @functools.wraps(body)
    def run() -> None:
        asyncio.run(body())

    return run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Batches:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[tuple[str, Message]]]] = []

    def send_batch(self, to: str, items: Sequence[tuple[str, Message]]) -> None:
        self.batches.append((to, list(items)))

    def defer(self, on: bool) -> None:
        pass  # every datagram of these tests is fed by hand

    def drain(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def drops(self) -> dict[str, int]:
        return {}


class PickyVips(FakeVipPort):
    """Fails `add` for the addresses in `refuse` only."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: set[Vip] = set()

    async def add(self, vips: Sequence[Vip], lifetime: float | None) -> None:
        if self.refuse.intersection(vips):
            raise VipError("fake: no such device")
        await super().add(vips, lifetime)


class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.transport = Batches()
        self.vips = PickyVips()
        self.store = FakeStateStore()
        self.events = FakeEventLog()
        self.announcers = {"web": FakeAnnouncer(), "db": FakeAnnouncer()}
        self.notifiers = {"web": FakeNotifier(), "db": FakeNotifier()}
        for a in self.announcers.values():
            a.started = True
        self.groups = Groups({"web": SPEC, "db": SPEC}, "a", random.Random(1))
        self.ports = Ports(
            self.transport, self.vips, self.announcers["web"], self.notifiers["web"], self.store,
            self.events, FakeSystemdNotifier(), announcers=dict(self.announcers),
            notifiers=dict(self.notifiers),
        )
        self.engine = Engine(self.groups, self.ports, {"web": [WEB], "db": [DB]}, 0.3,
                             self.clock, command_timeout=0.5)

    def last_deadline(self) -> float:
        """When every group's timer is due (each has its own randomised timeout)."""
        return max(self.groups.node(g).next_deadline() for g in self.groups.groups)

    async def elect(self) -> None:
        """Drive node a to leader of both groups through real core steps."""
        await self.engine.start()
        self.clock.now = self.last_deadline()
        await self.engine.process(TimerFired())
        for pre in (True, False):
            for voter in ("b", "c"):
                items = []
                for g in self.groups.groups:
                    n = self.groups.node(g)
                    items.append((g, VoteResponse(n.term + 1 if pre else n.term, pre, True,
                                                  True, False)))
                self.engine.on_batch(voter, items)
                await self.engine.process(TimerFired())
        self.clock.now += 0.001
        self.engine.on_batch(
            "b", [(g, HeartbeatAck(self.groups.node(g).term, 1, True, True, False))
                  for g in self.groups.groups])
        await self.engine.process(TimerFired())
        for g in self.groups.groups:
            assert self.groups.node(g).holds_vip, g


@sync
async def test_each_group_acquires_its_own_vips_and_hooks_name_the_group() -> None:
    rig = Rig()
    await rig.elect()
    assert set(rig.vips.state) >= {WEB, DB}
    assert rig.announcers["web"].announcements and rig.announcers["db"].announcements
    await rig.ports.notifiers["web"].drain(1.0)
    envs = {g: n.calls for g, n in rig.notifiers.items()}
    assert any(e.get("HAFAILOVER_GROUP") == "web" and e["HAFAILOVER_VIPS"] == str(WEB)
               for _, e in envs["web"])
    assert any(e.get("HAFAILOVER_GROUP") == "db" and e["HAFAILOVER_VIPS"] == str(DB)
               for _, e in envs["db"])


@sync
async def test_what_one_step_sends_a_peer_leaves_in_one_batch() -> None:
    rig = Rig()
    await rig.elect()
    rig.transport.batches.clear()
    rig.clock.now = rig.last_deadline()  # both leaders' heartbeats are due
    await rig.engine.process(TimerFired())
    peers = [to for to, _ in rig.transport.batches]
    assert sorted(peers) == ["b", "c"], rig.transport.batches  # one batch per peer
    for _, items in rig.transport.batches:
        # Both groups' leases are renewed by one node-level heartbeat (node liveness) once
        # the peers fortified them; until then each group sends its own.
        groups = {g for g, _ in items}
        assert groups in ({"web", "db"}, {""}), items


@sync
async def test_one_state_write_per_step_however_many_groups_persist() -> None:
    rig = Rig()
    await rig.engine.start()
    rig.clock.now = rig.last_deadline()
    await rig.engine.process(TimerFired())  # pre-votes: nothing to persist yet
    saves = len(rig.store.group_saves)
    rig.engine.on_batch("b", [(g, VoteResponse(1, True, True, True, False))
                              for g in ("web", "db")])
    await rig.engine.process(TimerFired())
    # Both groups became candidates (term 1, vote for self) in one step: one save for both.
    assert len(rig.store.group_saves) == saves + 1
    state = rig.store.groups
    assert state.votes["web"].term == 1 and state.votes["db"].term == 1


@sync
async def test_a_failed_acquire_stops_only_that_groups_actions() -> None:
    rig = Rig()
    rig.vips.refuse = {DB}
    await rig.engine.start()
    rig.clock.now = rig.last_deadline()
    await rig.engine.process(TimerFired())
    for pre in (True, False):
        for voter in ("b", "c"):
            rig.engine.on_batch(voter, [
                (g, VoteResponse(rig.groups.node(g).term + (1 if pre else 0), pre, True, True,
                                 False)) for g in ("web", "db")])
            await rig.engine.process(TimerFired())
    rig.clock.now += 0.001
    rig.engine.on_batch("b", [(g, HeartbeatAck(rig.groups.node(g).term, 1, True, True, False))
                              for g in ("web", "db")])
    await rig.engine.process(TimerFired())
    assert rig.groups.node("web").holds_vip and WEB in rig.vips.state
    assert not rig.groups.node("db").holds_vip and DB not in rig.vips.state
    assert "db" in rig.engine.group_failing and "web" not in rig.engine.group_failing
    assert not rig.announcers["db"].announcements and rig.announcers["web"].announcements
    view = rig.groups.node("db").view(rig.clock.now)
    assert not view.eligible and "adding the VIP failed" in view.fault


@sync
async def test_a_link_down_releases_only_the_groups_that_need_it() -> None:
    rig = Rig()
    await rig.elect()
    rig.engine.set_group_health("db", "link eth1", False, "link eth1 is down")
    await rig.engine.process(TimerFired())
    assert DB not in rig.vips.state and WEB in rig.vips.state
    assert rig.groups.node("web").role is Role.LEADER
    assert not rig.groups.node("db").view(rig.clock.now).healthy
    # Node-wide trouble (a late loop) touches every group.
    rig.engine.set_health("loop", False, "event loop 900 ms late")
    await rig.engine.process(TimerFired())
    assert WEB not in rig.vips.state


@sync
async def test_a_vip_removed_behind_our_back_is_readded_and_recorded() -> None:
    rig = Rig()
    await rig.elect()
    rig.vips.drop(DB)
    bursts = rig.announcers["db"].announcements
    rig.engine.readd(DB)
    await rig.engine.process(TimerFired())
    assert DB in rig.vips.state
    assert rig.announcers["db"].announcements == bursts + 1
    event = [e for e in rig.events.entries if e["reason"] == "vip-readded"][-1]
    assert event["group"] == "db" and str(DB) in event["message"]


@sync
async def test_a_vip_of_a_group_not_held_is_not_readded() -> None:
    rig = Rig()
    await rig.engine.start()
    rig.engine.readd(DB)
    await rig.engine.process(TimerFired())
    assert DB not in rig.vips.state


def test_drift_refuses_votes_only_while_membership_or_groups_differ() -> None:
    class Rec:
        def __init__(self) -> None:
            self.entries: list[dict[str, object]] = []

        def record(self, fields: dict[str, object]) -> None:
            self.entries.append(fields)

    own = Fingerprint({"cluster": "00" * 8, "nodes": "11" * 8, "groups": "22" * 8,
                       "timings": "33" * 8})
    rec = Rec()
    drift = Drift(rec, own)  # type: ignore[arg-type]
    vote = VoteRequest(3, False, True, False)
    same = tuple((k, bytes.fromhex(v)) for k, v in own.items())
    drift.observe("b", same)
    assert drift.vetted("b", vote) and not drift.differing
    timings = tuple((k, bytes.fromhex("44" * 8 if k == "timings" else v))
                    for k, v in own.items())
    drift.observe("b", timings)
    assert drift.differing == {"b": ["timings"]} and drift.vetted("b", vote)
    nodes = tuple((k, bytes.fromhex("55" * 8 if k == "nodes" else v)) for k, v in own.items())
    drift.observe("b", nodes)
    assert not drift.vetted("b", vote)
    assert drift.vetted("b", HeartbeatAck(3, 1, True, True, False))  # leaders keep working
    assert drift.vetted("c", vote)
    drift.observe("b", same)
    assert drift.vetted("b", vote) and not drift.differing
    assert [e["reason"] for e in rec.entries] == ["config-drift", "config-drift", "config-match"]


@sync
async def test_status_lists_every_group_with_eligibility() -> None:
    from hafailover.runtime.checks import FakeHealth
    from hafailover.runtime.status import StatusHandler

    rig = Rig()
    await rig.elect()
    rig.engine.set_group_health("db", "link eth1", False, "link eth1 is down")
    await rig.engine.process(TimerFired())
    status = await StatusHandler(rig.engine, "lab", FakeHealth()).status()
    assert status["schema"] == 2
    groups = {g["name"]: g for g in status["groups"]}  # type: ignore[attr-defined]
    assert groups["web"]["holder"] == "a" and groups["web"]["eligible"] is True
    assert groups["db"]["eligible"] is False
    assert any("link eth1" in w for w in groups["db"]["not_eligible"])
    assert groups["db"]["preferred"] == "a"




@sync
async def test_the_vip_lifetime_is_renewed_only_for_groups_holding_a_lease() -> None:
    rig = Rig()
    rig.engine = Engine(rig.groups, rig.ports, {"web": [WEB], "db": [DB]}, 0.3, rig.clock,
                        command_timeout=0.5, vip_lifetime=5.0)
    await rig.elect()
    assert rig.vips.lifetimes[WEB] == 5.0 and rig.vips.lifetimes[DB] == 5.0
    rig.engine.set_group_health("db", "link eth1", False, "link eth1 is down")
    await rig.engine.process(TimerFired())
    assert DB not in rig.vips.state
    rig.vips.calls.clear()
    await rig.engine._renew()
    assert rig.vips.calls == [("renew", (WEB,))]
    # A renewal failure is that group's failed acquire, not the other's.
    rig.engine.set_group_health("db", "link eth1", True, "up")
    rig.vips.fail_next("renew", VipError("fake: gone"), 1)
    await rig.engine._renew()
    assert "renewing the VIP failed" in rig.engine.group_failing["web"][Effect.ACQUIRE]
    assert "db" not in rig.engine.group_failing


@sync
async def test_datagrams_queued_meanwhile_are_one_step_with_one_state_write() -> None:
    rig = Rig()
    await rig.engine.start()
    rig.clock.now += 1.0  # past the start-up promise (no votes right after a start)
    saves = len(rig.store.group_saves)
    # Two datagrams arrive while the engine is busy: both votes are granted in one step,
    # on disk in one write, and each answer leaves in its own batch to its candidate.
    rig.engine.on_batch("b", [("web", VoteRequest(1, False, True, False))])
    rig.engine.on_batch("c", [("db", VoteRequest(1, False, True, False))])
    await rig.engine.process(TimerFired())
    assert rig.store.groups.votes["web"].voted_for == "b"
    assert rig.store.groups.votes["db"].voted_for == "c"
    assert len(rig.store.group_saves) == saves + 1
    assert sorted(to for to, _ in rig.transport.batches) == ["b", "c"]  # one batch per peer
    for to, items in rig.transport.batches:
        granted = [m for _, m in items if isinstance(m, VoteResponse) and m.granted]
        assert len(granted) == 1, (to, items)
