"""VIP groups with real daemons in namespaces: active/active, host death, preemption back, a VIP
removed behind the daemon's back, and 50 groups.

Bounds are loose (a loaded 2-core machine must not flake them); the measured figures are printed
(`pytest -s`). The groups are those of the groups issue: web prefers node1, db prefers node2.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from lab import Lab, LabProcess
from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod
from lab.cluster import ClusterOptions, HaCluster, generated_groups, web_db_groups

WEB, DB = "10.213.0.100", "10.213.0.101"
FAILOVER_S = 0.6
HEARTBEAT_S = 0.1
PREEMPT_DELAY_S = 3.0
SLACK_S = 1.0  # scheduling on a loaded 2-core machine


@pytest.fixture
def web_db() -> Iterator[tuple[Lab, HaCluster, dict[str, LabProcess]]]:
    with Lab(3, "hfgrp") as lab:
        c = HaCluster(lab, ClusterOptions(groups=web_db_groups(f"{PREEMPT_DELAY_S:g}s")))
        echo = echo_mod.start(lab)
        c.start_all()
        yield lab, c, echo


def spread(h: dict[str, list[str]]) -> bool:
    return h == {"web": ["node1"], "db": ["node2"]}


@pytest.mark.netns
def test_host_death_moves_only_its_group_and_preempt_brings_it_back(
        web_db: tuple[Lab, HaCluster, dict[str, LabProcess]]) -> None:
    lab, c, echo = web_db
    c.wait_groups(spread, timeout=10.0)
    monitor_mod.start(lab, WEB)
    monitor_mod.start(lab, DB)
    db_probe = probe_mod.start(lab, DB, duration=60.0)
    time.sleep(0.5)

    t_kill = c.kill_host("node1", echo)
    # node1's dead namespace may keep the address until its kernel lifetime runs out.
    _, t_web = c.wait_groups(lambda h: h["web"] == ["node2"], timeout=10.0, poll=0.01,
                             exclude=("node1",))
    failover_s = t_web - t_kill
    time.sleep(0.5)

    t_back = c.revive_host("node1", echo)
    t_ready = time.monotonic()
    _, t_return = c.wait_groups(lambda h: h["web"] == ["node1"], timeout=20.0, poll=0.02)
    time.sleep(1.0)
    lab.stop(db_probe)
    assert db_probe.data is not None
    run = probe_mod.load(db_probe.data)
    lost = [r for r in run.records if r.recv is None and r.send >= t_kill - 0.5]
    web_tl, db_tl = monitor_mod.timeline(lab, WEB), monitor_mod.timeline(lab, DB)
    db_changes = [(t, n, p) for t, n, p in db_tl.merged() if t > t_kill - 0.5]
    print(f"\nweb failover {failover_s * 1000:.0f} ms after the host death; db probes sent "
          f"{sum(1 for r in run.records if r.send >= t_kill - 0.5)}, lost {len(lost)}; web back "
          f"on node1 {t_return - t_back:.2f} s after node1's links came up "
          f"({t_return - t_ready:.2f} s after its daemon answered)")

    assert failover_s <= FAILOVER_S + SLACK_S, failover_s
    assert not lost, lost[:5]
    assert db_changes == [], db_changes
    assert c.group_holders() == {"web": ["node1"], "db": ["node2"]}
    # Preempted back only after preempt_delay, and never two holders of web on the way.
    # preempt_delay counts from when node1 is healthy and heard, which is after its daemon
    # answered; a restart under load can take seconds, so the bounds count from then.
    assert t_return - t_ready >= PREEMPT_DELAY_S - 0.1, t_return - t_ready
    assert t_return - t_ready <= PREEMPT_DELAY_S + 3.0, t_return - t_ready
    # While node1's host is dead (links down, daemon killed) its namespace may keep the address
    # until the kernel lifetime ends, unreachable by anyone: not a second holder on the wire.
    # (Whether its daemon released first depends on whether it saw the link go down before the
    # SIGKILL that follows within milliseconds.) revive_host removes it before the links return.
    assert web_tl.dual_holder_ms(exclude={"node1": [(t_kill, t_back)]}) == 0.0


@pytest.mark.netns
def test_vip_deleted_behind_the_daemons_back_is_readded(
        web_db: tuple[Lab, HaCluster, dict[str, LabProcess]]) -> None:
    lab, c, _echo = web_db
    c.wait_groups(spread, timeout=10.0)
    web_probe = probe_mod.start(lab, WEB, duration=30.0)
    time.sleep(0.5)
    figures = []
    for k in range(1, 4):
        # A removal and re-add within microseconds can escape an address monitor: the
        # daemon's vip-readded event (ms resolution, logged once the address is back) times it.
        t_del = time.time()
        lab.ip("node1", "addr", "del", f"{WEB}/24", "dev", "eth0")
        time.sleep(1.0)
        readded = [e for e in c.event_log("node1") if e["reason"] == "vip-readded"]
        assert len(readded) == k, f"{readded}\n{c.log('node1')[-2000:]}"
        assert readded[-1].get("group") == "web", readded
        figures.append(datetime.fromisoformat(readded[-1]["time"]).timestamp() - t_del)
        assert lab.vip_holders(WEB) == ["node1"]
    time.sleep(0.3)
    lab.stop(web_probe)
    assert web_probe.data is not None
    run = probe_mod.load(web_probe.data)
    outage_ms = probe_mod.longest_outage_ms(run.records, run.start + 0.4, run.end)
    print(f"\nVIP re-added after {', '.join(f'{x * 1000:.0f}' for x in figures)} ms; longest "
          f"client gap {outage_ms:.0f} ms")
    assert c.group_holders() == {"web": ["node1"], "db": ["node2"]}
    assert max(figures) <= HEARTBEAT_S + 0.15, figures
    assert outage_ms <= 200.0


@pytest.mark.netns
def test_fifty_groups_all_held_within_two_seconds_and_a_death_moves_exactly_its_groups() -> None:
    with Lab(3, "hfgrp") as lab:
        groups = generated_groups(50, lab.nodes)
        c = HaCluster(lab, ClusterOptions(groups=groups))
        t0 = time.monotonic()
        for n in lab.nodes:
            c.start(n)
        for n in lab.nodes:
            c.wait_ready(n)
        t_ready = time.monotonic()  # every daemon answers on its control socket
        held, t_all = c.wait_groups(lambda h: all(len(v) == 1 for v in h.values()),
                                    timeout=20.0, poll=0.02)
        start_s = t_all - t_ready
        before = {g: v[0] for g, v in held.items()}
        time.sleep(2.0)  # settled: nothing moves by itself
        assert {g: v[0] for g, v in c.group_holders().items() if v} == before
        victim = "node3"
        mine = {g for g, n in before.items() if n == victim}
        t_kill = c.kill_host(victim)
        after, t_moved = c.wait_groups(lambda h: all(len(v) == 1 for v in h.values()),
                                       timeout=15.0, exclude=(victim,))
        moved = {g for g in before if after[g][0] != before[g]}
        print(f"\n50 groups: all held {t_all - t0:.2f} s after the daemons were spawned, "
              f"{start_s:.2f} s after all answered "
              f"(spread {sorted(set(before.values()))}); {victim}'s {len(mine)} groups moved "
              f"{(t_moved - t_kill) * 1000:.0f} ms after its death")
        # 2 s counted from when the daemons are up (not the interpreter's start-up).
        assert moved == mine
        assert len(mine) >= 10
        assert start_s <= 2.0 + SLACK_S, start_s
        assert t_moved - t_kill <= FAILOVER_S + SLACK_S + 1.0
