"""Operator actions and cluster shapes: switchover, failback (preempt), a witness node."""

from __future__ import annotations

import math
import re
import signal
import time

import pytest

from lab import probe as probe_mod
from lab.cluster import ClusterOptions
from tests.integration.faultlab import Rig, figure, running_cluster, wait_for

PREEMPT_DELAY_S = 3.0
SWITCHOVER_RE = re.compile(r"VIP now held by (\S+) \(switchover took (\d+) ms\)")


def _switchover(rig: Rig, via: str, *args: str) -> tuple[str, float, float]:
    """Run `hafailover switchover ARGS` against via's daemon: (new holder, ms it printed,
    monotonic time the command started)."""
    t = time.monotonic()
    r = rig.cluster.cli(via, "switchover", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    m = SWITCHOVER_RE.search(r.stdout)
    assert m, r.stdout
    print(r.stdout.strip())
    return m.group(1), float(m.group(2)), t


@pytest.mark.netns
def test_switchover_via_the_cli_with_and_without_a_target() -> None:
    with running_cluster() as rig:
        cluster, first = rig.cluster, rig.first_holder
        prober = rig.probe(duration=8.0)
        time.sleep(0.5)
        second, took1, t1 = _switchover(rig, first)
        assert second != first
        assert cluster.wait_for_holder(timeout=3.0)[0] == second
        rig.settle(second)
        # Explicit target, asked through a follower's daemon (it forwards to the leader).
        target = next(n for n in rig.nodes if n not in (first, second))
        third, took2, t2 = _switchover(rig, first, "--to", target)
        assert third == target
        assert cluster.wait_for_holder(timeout=3.0)[0] == target
        figure("switchover_reported", took1)
        figure("switchover_to_reported", took2)
        assert took1 < 2000 and took2 < 2000
        rig.lab.stop(prober)
        run = rig.probe_result(prober)
        out1 = probe_mod.longest_outage_ms(run.records, start=t1, end=t2)
        out2 = probe_mod.longest_outage_ms(run.records, start=t2, end=run.end)
        figure("switchover_client_outage", out1)
        figure("switchover_to_client_outage", out2)
        assert out1 < 1000 and out2 < 1000
        spans = [s.responder for s in probe_mod.responders_over_time(run.records)]
        assert spans == [first, second, target], spans
        rig.assert_no_dual()


def _stop_and_restart_leader(rig: Rig) -> tuple[str, str, float]:
    """SIGTERM the leader, wait for the next, restart the old one: (old, new, t_ready)."""
    lab, cluster, old = rig.lab, rig.cluster, rig.cluster.holders()[0]
    t_stop = lab.kill(cluster.procs[old], signal.SIGTERM)
    assert cluster.procs[old].wait(5.0) == 0
    new, _ = cluster.wait_for_holder(timeout=5.0, exclude=(old,))
    rig.settle(new, nodes=[n for n in rig.nodes if n != old])
    assert rig.first_change(old, present=False, after=t_stop) is not None
    cluster.start(old)
    wait_for(lambda: cluster.try_status(old), 20.0, f"{old} to answer", poll=0.005)
    return old, new, time.monotonic()


@pytest.mark.netns
def test_restarted_old_leader_does_not_fail_back_without_preempt() -> None:
    with running_cluster(options=ClusterOptions(preempt=False, preempt_delay="1s")) as rig:
        old, new, t_ready = _stop_and_restart_leader(rig)
        rig.settle(new)
        time.sleep(max(0.0, t_ready + PREEMPT_DELAY_S + 0.5 - time.monotonic()))
        assert rig.cluster.holders() == [new]
        assert not rig.changes(old, present=True, after=t_ready)
        assert rig.cluster.status(old)["role"] == "follower"
        rig.assert_no_dual()


@pytest.mark.netns
def test_preempt_fails_back_after_the_delay_and_not_before() -> None:
    opts = ClusterOptions(preempt=True, preempt_delay=f"{PREEMPT_DELAY_S:g}s")
    with running_cluster(options=opts) as rig:
        cluster, top = rig.cluster, rig.nodes[0]  # node1 has the highest priority
        wait_for(lambda: cluster.holders() == [top], 3 * PREEMPT_DELAY_S + 5, f"{top} to lead")
        rig.settle(top)
        old, new, t_ready = _stop_and_restart_leader(rig)
        assert old == top and new != top
        t_back = rig.wait_change(top, present=True, after=t_ready,
                                 timeout=3 * PREEMPT_DELAY_S + 3)
        preempt = rig.events(new, "preempt", after=t_ready)
        assert preempt, rig.events(new, after=t_ready)
        figure("restart_ready_to_failback", (t_back - t_ready) * 1000)
        figure("preempt_decision_to_failback", (t_back - rig.mono(preempt[0])) * 1000)
        # Not before the delay: the restarted node only becomes eligible after it answers.
        assert t_back - t_ready >= PREEMPT_DELAY_S - 0.05
        assert t_back - t_ready < 3 * PREEMPT_DELAY_S
        rig.settle(top)
        assert cluster.holders() == [top]
        rig.assert_no_dual()


@pytest.mark.netns
def test_two_data_nodes_and_a_witness() -> None:
    with running_cluster(options=ClusterOptions(witnesses=("node3",))) as rig:
        lab, cluster, first = rig.lab, rig.cluster, rig.first_holder
        witness = "node3"
        assert first != witness
        assert cluster.status(witness)["role"] == "follower"
        other = next(n for n in rig.nodes if n not in (first, witness))
        t_fault = lab.link_down(first)
        lab.kill(cluster.procs[first])
        new, t_new = cluster.wait_for_holder(timeout=5.0, exclude=(first,))
        figure("witness_cluster_failover", (t_new - t_fault) * 1000)
        assert new == other and t_new - t_fault < 3.0
        rig.settle(other, nodes=[other, witness])
        time.sleep(1.0)
        tl = rig.timeline()[witness]
        assert not tl.held(), f"the witness held the VIP: {tl.changes}"
        # The dead host still has its address, but nobody can reach it.
        assert [h for h in cluster.holders() if h != first] == [other]
        rig.assert_no_dual(exclude={first: [(t_fault, math.inf)]})
