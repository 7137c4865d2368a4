"""Per-group health inputs (runtime/grouphealth.py) against the real engine and core with fakes:
a check fails only the groups naming it; a link down counts at once and up only after
link_settle; a check's recover command runs after this node has handed its groups over and
its exit status is recorded."""

from __future__ import annotations

import asyncio

from hafailover.config import parse_config
from hafailover.core.events import TimerFired
from hafailover.runtime.checks import CheckSpec, CheckStatus
from hafailover.runtime.grouphealth import GroupHealth
from tests.unit.test_engine_groups import DB, WEB, Rig, sync

CONFIG = """\
cluster: {name: lab, key_file: /nonexistent/key, link_settle: 200ms}
nodes:
  - {name: a, address: 10.213.0.11, priority: 150}
  - {name: b, address: 10.213.0.12, priority: 100}
  - {name: c, address: 10.213.0.13, priority: 50}
checks:
  - {name: nginx, script: [/bin/true], recover: [/bin/sh, -c, 'exit 3'], recover_timeout: 5s}
  - {name: pg, script: [/bin/true]}
groups:
  - {name: web, vips: [{address: 10.213.0.100/24, interface: eth0}], checks: [nginx]}
  - {name: db, vips: [{address: 10.213.0.101/24, interface: eth1}], checks: [pg],
     track_interfaces: [eth2]}
"""

SPECS = [
    CheckSpec("nginx", "script", argv=("/bin/true",), recover=("/bin/sh", "-c", "exit 3"),
              recover_timeout=5.0),
    CheckSpec("pg", "script", argv=("/bin/true",)),
]


def _health(rig: Rig) -> GroupHealth:
    return GroupHealth(rig.engine, parse_config(CONFIG).config, SPECS)


def _failing(name: str) -> CheckStatus:
    return CheckStatus(name, "script", True, ok=False, last_error="exit status 1")


@sync
async def test_a_failing_check_fails_only_the_groups_naming_it_and_recover_runs_after() -> None:
    rig = Rig()
    await rig.elect()
    health = _health(rig)
    health.on_check(_failing("nginx"), 0.01, True)
    await rig.engine.process(TimerFired())
    assert WEB not in rig.vips.state and DB in rig.vips.state  # web handed over, db stays
    for _ in range(100):  # the recover command runs once web is released
        if any(e["reason"] == "check-recover" for e in rig.events.entries):
            break
        await asyncio.sleep(0.02)
    event = next(e for e in rig.events.entries if e["reason"] == "check-recover")
    assert event["check"] == "nginx" and event["exit_status"] == 3
    # Not eligible for web until the check passes again (rise), eligible for db throughout.
    now = rig.clock.now
    assert not rig.groups.node("web").view(now).eligible
    assert rig.groups.node("db").view(now).eligible
    health.on_check(CheckStatus("nginx", "script", True, ok=True), 0.01, True)
    await rig.engine.process(TimerFired())
    assert rig.groups.node("web").view(rig.clock.now).healthy
    await health.close()


@sync
async def test_a_link_down_counts_at_once_and_up_only_after_link_settle() -> None:
    rig = Rig()
    await rig.elect()
    health = _health(rig)
    assert set(health.interfaces) == {"eth0", "eth1", "eth2"}
    health.on_link("eth2", False)  # db's tracked interface
    await rig.engine.process(TimerFired())
    assert DB not in rig.vips.state and WEB in rig.vips.state
    assert not rig.groups.node("db").view(rig.clock.now).healthy
    health.on_link("eth2", True)
    await asyncio.sleep(0.05)
    health.on_link("eth2", False)  # a flap restarts the settle time
    health.on_link("eth2", True)
    await asyncio.sleep(0.1)
    await rig.engine.process(TimerFired())
    assert not rig.groups.node("db").view(rig.clock.now).healthy  # not settled yet
    await asyncio.sleep(0.2)
    await rig.engine.process(TimerFired())
    assert rig.groups.node("db").view(rig.clock.now).healthy
    reasons = [e["reason"] for e in rig.events.entries if "interface" in e]
    assert reasons == ["link-down", "link-down", "link-up"]  # each time it went down
    await health.close()


@sync
async def test_links_down_at_start_count_without_an_event_per_link() -> None:
    rig = Rig()
    await rig.engine.start()
    health = _health(rig)
    health.set_links({"eth0": True, "eth1": False, "eth2": True})
    await rig.engine.process(TimerFired())
    assert not rig.groups.node("db").view(rig.clock.now).healthy
    assert rig.groups.node("web").view(rig.clock.now).healthy
    await health.close()
