"""The leader's host or daemon dies, freezes or stops: real daemons, real ARP, real timers.

Defaults (ClusterOptions): heartbeat 100 ms, failover_timeout 600 ms. Time bounds are loose
(about 3x the target) so that two busy cores never make them flaky; the measured figures are
printed (pytest -s) for the record.
"""

from __future__ import annotations

import math
import signal
import time

import pytest

from lab import probe as probe_mod
from lab.cluster import VIP, ClusterOptions
from tests.integration.faultlab import (
    ETH_P_ARP,
    VIP_BYTES,
    Capture,
    figure,
    mac_of,
    parse_arp,
    running_cluster,
    wait_for,
)

FAILOVER_S = 0.6


@pytest.mark.netns
def test_leader_host_dies_another_node_serves_the_client() -> None:
    with running_cluster() as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        prober = rig.probe(duration=6.0)
        time.sleep(1.0)
        t_fault = lab.link_down(old)
        lab.kill(cluster.procs[old])
        new, t_new = cluster.wait_for_holder(timeout=5.0, exclude=(old,))
        figure("host_death_to_new_holder", (t_new - t_fault) * 1000)
        assert new != old and t_new - t_fault < 3 * FAILOVER_S + 1.0
        run = rig.probe_result(prober)
        spans = probe_mod.responders_over_time(run.records, start=t_fault)
        assert spans and spans[-1].responder == new, spans
        outage = probe_mod.longest_outage_ms(run.records, start=t_fault - 0.5, end=run.end)
        figure("host_death_client_outage", outage)
        assert outage < 3000, outage
        # The dead host is unreachable from the fault on: its address does not count.
        rig.assert_no_dual(exclude={old: [(t_fault, math.inf)]})


@pytest.mark.netns
def test_leader_daemon_sigkill_stale_address_conflict_and_restart_cleanup() -> None:
    # Without the kernel-backed lifetime: with it (the default) the killed daemon's address
    # expires by itself within about 3 s, and the restart may find nothing left to clean up.
    with running_cluster(options=ClusterOptions(vip_lifetime="false")) as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        with Capture(lab, "client", proto=ETH_P_ARP, max_seconds=30.0) as cap:
            t_kill = lab.kill(cluster.procs[old])
            new, t_new = cluster.wait_for_holder(timeout=5.0, exclude=(old,))
            figure("sigkill_to_new_holder", (t_new - t_kill) * 1000)
            assert t_new - t_kill < 3 * FAILOVER_S + 0.5
            # Nobody is left to remove the crashed daemon's address: it stays.
            time.sleep(0.5)
            assert old in cluster.holders()
            assert not rig.changes(old, present=False, after=t_kill)

            # The dead node's kernel claims the address: the new leader sees the conflict
            # and announces again, pulling the segment back to itself.
            t_garp = time.monotonic()
            lab.garp(old, VIP)
            conflict = rig.wait_event(new, "vip-conflict", after=t_garp, timeout=3.0)
            figure("garp_to_vip_conflict_decision", (rig.mono(conflict) - t_garp) * 1000)
            new_mac = mac_of(lab, new)
            reannounce = wait_for(
                lambda: next((a for a in parse_arp(cap.frames) if a.t > t_garp
                              and a.sha == new_mac and a.spa == VIP_BYTES and a.gratuitous),
                             None), 3.0, "a re-announcement from the new leader")
            figure("garp_to_reannouncement", (reannounce.t - t_garp) * 1000)

            # Restart: the leftover address is removed before the daemon takes part. It answers
            # on its control socket first (READY=1), then opens its VIP manager (the removal),
            # and only then starts its engine, which is what hears the successor.
            t_restart = time.monotonic()
            cluster.start(old)
            status = wait_for(
                lambda: (s := cluster.try_status(old)) is not None and s.get("leader") == new
                and s, 20.0, f"{old} to follow {new}", poll=0.002)
            t_ready = time.monotonic()
        assert status["vips"] and not status["vips"][0]["present"], status["vips"]
        assert not status["holds_vip"]
        gone = rig.first_change(old, present=False, after=t_kill)
        assert gone is not None and t_restart < gone <= t_ready, (t_restart, gone, t_ready)
        figure("restart_cleanup_before_ready_margin", (t_ready - gone) * 1000)
        assert "removed leftover VIP" in cluster.log(old)
        rig.settle(new)
        assert cluster.holders() == [new]
        # Only the crashed daemon's leftover counts as a second holder, until it was removed.
        rig.assert_no_dual(exclude={old: [(t_kill, gone)]})


@pytest.mark.netns
def test_frozen_leader_is_replaced_and_drops_the_vip_silently_on_resume() -> None:
    # Without the kernel-backed lifetime (vip_lifetime: false) the frozen holder keeps its
    # address until it resumes; with it (the default) the kernel removes it within about the
    # lifetime: tests/integration/test_faults_effects.py measures that.
    with running_cluster(options=ClusterOptions(vip_lifetime="false")) as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        old_mac = mac_of(lab, old)
        with Capture(lab, "client", proto=ETH_P_ARP, max_seconds=30.0) as cap:
            t_freeze = lab.freeze(cluster.procs[old])
            new, t_new = cluster.wait_for_holder(timeout=5.0, exclude=(old,))
            figure("freeze_to_new_holder", (t_new - t_freeze) * 1000)
            assert t_new - t_freeze < 3 * FAILOVER_S + 0.5
            time.sleep(max(0.0, t_freeze + 5.0 - time.monotonic()))
            assert old in cluster.holders()  # frozen: its address is still configured
            t_thaw = lab.thaw(cluster.procs[old])
            gone = rig.wait_change(old, present=False, after=t_thaw, timeout=3.0)
            figure("thaw_to_vip_removed", (gone - t_thaw) * 1000)
            assert gone - t_thaw < 0.3  # target 50 ms; loose for busy CI machines
            time.sleep(1.0)  # long enough for any announcement burst (3 x 100 ms) to show
        arps = parse_arp(cap.frames)
        late = [a for a in arps if a.t >= t_thaw and a.sha == old_mac and a.spa == VIP_BYTES]
        figure("arp_claims_from_old_leader_after_thaw", str(len(late)), "frames")
        assert not [a for a in late if a.gratuitous], late
        # The client did receive the new leader's announcements (the capture works).
        assert any(a.sha == mac_of(lab, new) and a.gratuitous for a in arps)
        rig.settle(new)
        assert cluster.holders() == [new]
        rig.assert_no_dual(exclude={old: [(t_freeze, gone)]})


@pytest.mark.netns
def test_leader_sigterm_hands_over_quickly() -> None:
    with running_cluster() as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        prober = rig.probe(duration=3.0)
        time.sleep(0.5)
        t_term = lab.kill(cluster.procs[old], signal.SIGTERM)
        new = cluster.wait_for_holder(timeout=5.0, exclude=(old,))[0]
        t_new = rig.wait_change(new, present=True, after=t_term, timeout=1.0)
        figure("sigterm_to_new_holder", (t_new - t_term) * 1000)
        assert t_new - t_term < 0.6  # target ~200 ms
        assert cluster.procs[old].wait(5.0) == 0
        gone = rig.first_change(old, present=False, after=t_term)
        assert gone is not None and gone <= t_new
        run = rig.probe_result(prober)
        outage = probe_mod.longest_outage_ms(run.records, start=t_term - 0.2, end=run.end)
        figure("sigterm_client_outage", outage)
        assert outage < 1500
        rig.assert_no_dual()
