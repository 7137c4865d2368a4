"""hafailover under systemd as PID 1, installed from its Debian package: one three-node cluster
of containers (lab.nspawn) shared by the tests of this module, in the order written.

Needs root, network namespaces, systemd-nspawn and mmdebstrap (./dev test installs them); the
first run makes the cached Debian root file system. Marked netns: under CI=true a skip fails.
Figures are printed as "FIGURE name = value unit" (pytest -s).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import probe as probe_mod
from tests.systemd.syslab import (
    UNIT,
    VIP,
    Cluster,
    cluster_fixture,
    figure,
    follower_of,
    measure_freeze,
    measure_readiness,
    measure_release_vips,
    repack,
    wait_for,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WATCHDOG_S = 0.5  # the unit's WatchdogSec
# CAP_NET_ADMIN (12) and CAP_NET_RAW (13): the whole effective set the daemon may have.
NET_CAPS = (1 << 12) | (1 << 13)


@pytest.fixture(scope="module")
def cluster(deb: Path) -> Iterator[Cluster]:
    yield from cluster_fixture(deb)


def test_readiness_and_status_line(cluster: Cluster) -> None:
    for n, seconds in cluster.install_seconds.items():
        figure(f"apt_install_{n}", seconds, "s")
    for n, seconds in cluster.ready_seconds.items():
        figure(f"systemctl_start_{n}", seconds, "s")
    node = cluster.nodes[-1]
    ready = measure_readiness(cluster, node)
    # Type=notify: `systemctl start` returned only after READY=1, so the socket answers now.
    assert cluster.status(node) is not None, "systemctl start returned before the socket answered"
    figure("readiness", ready, "s")
    assert ready < 10.0  # 0.4-0.5 s on a quiet machine; this bounds a loaded CI host
    leader = cluster.wait_settled()
    text = cluster.lab.exec(node, ["systemctl", "show", "-p", "StatusText", "--value", UNIT])
    assert re.match(rf"follower, term \d+, leader {leader}, healthy", text.stdout), text.stdout
    status = cluster.systemctl(node, "status", "--no-pager", UNIT, check=False).stdout
    assert "Status: \"follower, term" in status, status


def test_hardening_in_force(cluster: Cluster) -> None:
    leader = cluster.leader()
    pid = cluster.lab.main_pid(leader)
    assert pid is not None
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    assert int(fields["CapEff"].strip(), 16) == NET_CAPS, fields["CapEff"]
    assert int(fields["CapBnd"].strip(), 16) == NET_CAPS, fields["CapBnd"]
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filters: address families, W^X, personality...
    # LimitCORE=0: the watchdog's SIGABRT must not make the exit (and the VIP removal after it)
    # wait for a core dump.
    core = next(ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if ln.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core
    # ProtectSystem=strict: in the daemon's mount namespace (its checks and hooks share it)
    # / is read-only and only the state and runtime directories are writable.
    mounts = {fields[4]: fields[5].split(",") for fields in
              (line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines())}
    assert "ro" in mounts["/"], mounts["/"]
    assert "rw" in mounts["/var/lib/hafailover"] and "rw" in mounts["/run/hafailover"]
    assert "ro" in mounts.get("/etc", mounts["/"])
    r = cluster.lab.exec(leader, ["systemd-analyze", "security", "--no-pager", UNIT])
    score = float(re.findall(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)[0])
    figure("systemd_analyze_security", score, "")
    assert score <= 4.5, r.stdout[-3000:]


def test_journal_carries_prefixed_fields(cluster: Cluster) -> None:
    leader = cluster.leader()
    entries = cluster.journal(leader, "HAFAILOVER_REASON=elected")
    assert entries, "journalctl HAFAILOVER_REASON=elected found nothing on the leader"
    last = entries[-1]
    assert last["_SYSTEMD_UNIT"] == UNIT
    assert last["HAFAILOVER_ROLE"] == "leader" and last["HAFAILOVER_LEADER"] == leader
    assert last["HAFAILOVER_NODE"] == leader and int(last["HAFAILOVER_TERM"]) >= 1
    assert "REASON" not in last and "ROLE" not in last


def test_reload_applies_a_check_and_refuses_a_cluster_change(cluster: Cluster) -> None:
    node = cluster.nodes[-1]
    leader = cluster.wait_settled()
    assert node != leader
    changed = cluster.config.replace(
        "checks:\n", "checks:\n  - {name: reloaded, script: [/bin/true], interval: 1s}\n")
    cluster.write_config(node, changed)
    cluster.systemctl(node, "reload")

    def has_check() -> bool:
        s = cluster.status(node)
        return s is not None and any(c.get("name") == "reloaded" for c in s["checks"])
    wait_for(has_check, 5, "the reloaded check in status")

    since = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.0)  # journalctl --since has a one-second resolution
    port_changed = changed.replace("  name: syslab\n", "  name: syslab\n  port: 5406\n")
    cluster.write_config(node, port_changed)
    main_pid = cluster.lab.main_pid(node)
    cluster.systemctl(node, "reload")

    def refused() -> str | None:
        lines = [e.get("MESSAGE", "") for e in cluster.journal(node, "-u", UNIT, "--since", since)]
        return next((ln for ln in lines if "reload refused" in ln), None)
    line = wait_for(refused, 5, "'reload refused' in the journal")
    assert "port" in line, line
    assert cluster.lab.main_pid(node) == main_pid, "a refused reload must not restart"
    assert follower_of(cluster, node, leader)
    cluster.write_config(node, cluster.config)
    cluster.systemctl(node, "reload")


def test_stop_on_the_leader_hands_over_within_100ms(cluster: Cluster) -> None:
    leader = cluster.wait_settled()
    t0 = time.monotonic()
    try:
        cluster.systemctl(leader, "stop")
        removed = wait_for(lambda: cluster.timeline_removals(leader, t0), 5,
                           "VIP off the leader")[0]
        others = [n for n in cluster.nodes if n != leader]
        added = wait_for(lambda: sorted(t for n in others for t in cluster.timeline_adds(n, t0)),
                         5, "a new holder")[0]
    finally:
        cluster.systemctl(leader, "start")
    gap = (added - removed) * 1000
    figure("stop_handover_gap", gap)
    # 60-70 ms measured here; a host running more than one runnable task per core (other test
    # suites) delays each of the handover's steps, so the bound widens only then.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    bound = 100 if load <= 1 else 250
    figure("stop_handover_load_per_core", load, "")
    assert gap < bound, f"next holder {gap:.0f} ms after the VIP left the stopping leader"
    new = cluster.wait_settled()
    assert new != leader and follower_of(cluster, leader, new)


def freeze_or_kill(cluster: Cluster, sig: signal.Signals, name: str) -> None:
    figures = measure_freeze(cluster, sig)
    figure(f"{name}_stale_address", figures["stale_address"])
    figure(f"{name}_client_outage", figures["client_outage"])
    figure(f"{name}_back_as_follower", figures["back_as_follower"], "s")
    if sig == signal.SIGSTOP:
        assert "watchdog_kill" in figures, "no 'Watchdog timeout' in the journal"
        figure("watchdog_kill_after_sigstop", figures["watchdog_kill"])
        if "exit_to_vip_removed" in figures:
            figure("watchdog_exit_to_vip_removed", figures["exit_to_vip_removed"])
        assert figures["watchdog_kill"] < (WATCHDOG_S + 0.5) * 1000
    stale, outage = figures["stale_address"], figures["client_outage"]
    # ~0.7-0.9 s on a quiet machine (0.6 s watchdog + ExecStopPost's release-vips); the bound
    # leaves room for the Python start-up of release-vips on a loaded 2-core CI host.
    assert stale < 2500, f"the frozen/killed leader kept the VIP {stale:.0f} ms"
    assert outage < 2500, f"client outage {outage:.0f} ms"
    assert len(cluster.holders()) == 1


def test_watchdog_kills_a_frozen_leader(cluster: Cluster) -> None:
    freeze_or_kill(cluster, signal.SIGSTOP, "watchdog")


def test_kill_9_of_the_leader(cluster: Cluster) -> None:
    freeze_or_kill(cluster, signal.SIGKILL, "kill9")


def test_release_vips_removes_a_recorded_address(cluster: Cluster) -> None:
    # ExecStopPost's command on its own: its run time is most of the watchdog's stale address
    # after the kill (a Python start-up, the record, one netlink removal).
    node = next(n for n in cluster.nodes if n != cluster.wait_settled())
    seconds = measure_release_vips(cluster, node)
    figure("release_vips", seconds, "s")
    assert seconds < 5.0


def test_boot_joins_the_cluster_without_operator_action(cluster: Cluster) -> None:
    leader = cluster.wait_settled()
    node = next(n for n in cluster.nodes if n != leader)
    cluster.lab.poweroff(node)
    assert cluster.holders() == [leader]
    t0 = time.monotonic()
    cluster.lab.boot(node)
    wait_for(lambda: follower_of(cluster, node, leader), 20, f"{node} following after boot")
    figure("boot_to_following", time.monotonic() - t0, "s")
    assert cluster.holders() == [leader]


def test_package_upgrade_remove_purge(cluster: Cluster, tmp_path: Path) -> None:
    lab = cluster.lab
    new_deb = repack(cluster.deb, "99.0.0", tmp_path)
    leader = cluster.wait_settled()
    probe = probe_mod.start(lab.lab, VIP, duration=60.0)
    time.sleep(0.5)
    # As docs/operations.md says: the followers first, the leader last, one node at a time.
    order = [*(n for n in cluster.nodes if n != leader), leader]
    t0 = time.monotonic()
    for n in order:
        seconds = lab.install_deb(n, new_deb)
        figure(f"apt_upgrade_{n}", seconds, "s")
        r = lab.exec(n, ["dpkg-query", "-W", "-f", "${Version}", "hafailover"])
        assert r.stdout == "99.0.0"
        # Back as a follower of whoever holds the VIP now: the leader handed over first.
        holder = cluster.wait_settled()
        assert holder != n or n != leader, f"{n} holds the VIP right after its upgrade"
        assert follower_of(cluster, n, holder) or n == holder
    assert cluster.wait_settled() != leader
    lab.lab.stop(probe, timeout=10)
    assert probe.data is not None
    run = probe_mod.load(probe.data)
    # Outages with lost probes (a late reply under load, lost=0, is not one).
    gaps = [g for g in probe_mod.outages(run.records, start=t0, end=run.end) if g.lost]
    figure("upgrade_outages", ", ".join(f"{g.ms:.0f}" for g in gaps) or "none", "ms")
    assert len(gaps) <= 1, f"more than one interruption during the upgrade: {gaps}"
    assert all(g.ms < 1000 for g in gaps), gaps

    node = next(n for n in cluster.nodes if n != cluster.wait_settled())
    lab.exec(node, ["apt-get", "remove", "-y", "-q", "hafailover"])
    kept = lab.exec(node, ["ls", "-A", "/etc/hafailover", "/var/lib/hafailover"]).stdout
    assert "hafailover.yaml" in kept and "cluster.key" in kept
    assert lab.exec(node, ["test", "-e", "/opt/hafailover/bin/hafailover"], check=False
                    ).returncode != 0
    lab.exec(node, ["apt-get", "purge", "-y", "-q", "hafailover"])
    gone = lab.exec(node, ["ls", "-d", "/etc/hafailover", "/var/lib/hafailover",
                           "/etc/systemd/system/multi-user.target.wants/hafailover.service"],
                    check=False)
    assert gone.returncode != 0 and gone.stdout.strip() == "", gone.stdout
    assert len(cluster.holders()) == 1
