"""Network faults on real daemons: a silent partition, a 2|3 split, sustained loss.

Partitions are silent (nftables drops on the bridge; every carrier stays up), so nothing but
the protocol's own timers can notice them. Dual holders are counted with no exclusion at all:
every node stays alive, so the VIP may never be on two of them at once.
"""

from __future__ import annotations

import time

import pytest

from lab import probe as probe_mod
from tests.integration.faultlab import figure, running_cluster

FAILOVER_S = 0.6
LOSS_SECONDS = 60.0
# Decisions that would mean the leadership moved or wavered.
LEADERSHIP_CHANGES = {"elected", "lease-expired", "higher-term", "new-leader", "prevote-won"}


@pytest.mark.netns
def test_silently_partitioned_leader_releases_and_rejoins_as_follower() -> None:
    with running_cluster() as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        prober = rig.probe(duration=9.0)
        time.sleep(0.5)
        old_term = rig.term(old)
        t_part = lab.partition(old)
        released = rig.wait_change(old, present=False, after=t_part, timeout=5.0)
        figure("partition_to_release", (released - t_part) * 1000)
        assert released - t_part < 3 * FAILOVER_S
        new, _ = cluster.wait_for_holder(timeout=5.0, exclude=(old,))
        t_new = rig.wait_change(new, present=True, after=t_part, timeout=1.0)
        figure("partition_to_new_holder", (t_new - t_part) * 1000)
        figure("release_to_new_holder", (t_new - released) * 1000)
        assert released <= t_new
        rig.settle(new, nodes=[n for n in rig.nodes if n != old])
        new_term = rig.term(new)
        assert new_term > old_term
        time.sleep(2.0)  # the cut-off node keeps pre-voting, which must not raise its term
        assert rig.term(old) == old_term, "the isolated node raised its term"

        t_heal = lab.heal()
        rig.settle(new)
        figure("heal_to_rejoined", (time.monotonic() - t_heal) * 1000)
        time.sleep(1.0)
        terms = rig.terms()
        assert terms == dict.fromkeys(rig.nodes, new_term), terms
        assert cluster.status(old)["role"] == "follower"
        assert not rig.events(new, "higher-term", after=t_heal)
        assert not rig.events(old, "prevote-won", after=t_part)
        assert cluster.holders() == [new]

        run = rig.probe_result(prober)
        assert run.end > t_heal + 1.0
        figure("partition_client_outage", probe_mod.longest_outage_ms(
            run.records, start=t_part, end=t_heal))
        after_heal = probe_mod.longest_outage_ms(run.records, start=t_heal, end=run.end)
        figure("client_outage_after_heal", after_heal)
        assert after_heal < 200
        spans = probe_mod.responders_over_time(run.records, start=t_heal)
        assert [s.responder for s in spans] == [new], spans
        rig.assert_no_dual()


@pytest.mark.netns
def test_five_nodes_split_two_three_with_the_leader_in_the_minority() -> None:
    with running_cluster(5) as rig:
        lab, cluster, old = rig.lab, rig.cluster, rig.first_holder
        minority = [old, next(n for n in rig.nodes if n != old)]
        majority = [n for n in rig.nodes if n not in minority]
        t_split = lab.partition_groups([minority, majority])
        released = rig.wait_change(old, present=False, after=t_split, timeout=5.0)
        new, _ = cluster.wait_for_holder(timeout=5.0, exclude=tuple(minority))
        t_new = rig.wait_change(new, present=True, after=t_split, timeout=1.0)
        figure("split_to_minority_release", (released - t_split) * 1000)
        figure("split_to_majority_holder", (t_new - t_split) * 1000)
        assert new in majority and released <= t_new and t_new - t_split < 3 * FAILOVER_S + 1
        rig.settle(new, nodes=majority)
        minority_terms = rig.terms(minority)
        time.sleep(2.0)
        assert cluster.holders() == [new]
        assert not [t for n in minority for t in rig.changes(n, present=True, after=released)]
        for n in minority:
            s = cluster.status(n)
            assert not s["holds_vip"] and s["role"] != "leader" and not s["quorum"], s
        assert rig.terms(minority) == minority_terms  # pre-votes only, no term inflation
        rig.assert_no_dual()


@pytest.mark.netns
def test_ten_percent_loss_on_every_link_changes_nothing() -> None:
    with running_cluster() as rig:
        lab, cluster, leader = rig.lab, rig.cluster, rig.first_holder
        terms = rig.terms()
        t_loss = lab.loss(10)
        t_end = t_loss + LOSS_SECONDS
        samples = 0
        while (left := t_end - time.monotonic()) > 0:  # bounded by LOSS_SECONDS
            time.sleep(min(2.0, left))
            samples += 1
            if rig.terms() != terms:
                break  # the outcome is decided; the report below says what happened
        t_stop = time.monotonic()
        lab.clear_loss()
        changes = [(round(t - t_loss, 3), n, p) for t, n, p in rig.timeline().merged()
                   if t > t_loss]
        decisions = [(round(rig.mono(e) - t_loss, 3), n, e["reason"], e["term"])
                     for n in rig.nodes for e in rig.events(n, after=t_loss)]
        decisions.sort()
        wavering = [d for d in decisions if d[2] in LEADERSHIP_CHANGES]
        figure("loss_seconds_observed", (t_stop - t_loss) * 1000)
        figure("loss_term_samples", str(samples), "")
        figure("loss_decisions", str(len(decisions)), "")
        # A stall of the whole machine (other load starving every daemon at once) also moves
        # the leader, by design (freeze safety); say so, since it is not what this test is about.
        stalled = [n for n in rig.nodes if any(
            "unhealthy" in line and "event loop" in line for line in cluster.log(n).splitlines())]
        report = ("EVERY DAEMON REPORTED EVENT-LOOP LAG: the machine stalled (CPU starvation "
                  "from other load), not the packet loss, moved the leader. "
                  if stalled == rig.nodes else "")
        report += (f"terms {terms} -> {rig.terms()}; decisions after the loss began: {decisions}; "
                  f"VIP transitions: {changes}; logs:\n" + "\n".join(
                      line for n in rig.nodes for line in cluster.log(n).splitlines()[-15:]))
        assert rig.terms() == terms, report
        assert changes == [] and wavering == [], report
        assert cluster.holders() == [leader], report
        rig.assert_no_dual()
