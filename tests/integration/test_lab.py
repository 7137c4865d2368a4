"""The netns lab itself: topology, isolation, faults, echo/probe, monitors, teardown.

Every test builds its own namespaces (cleaned up even on failure) and is bounded well below
20 s; pings always carry -c and -W (or -w) so nothing can hang.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import Lab, LabError, cleanup_stale
from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod

VIP = "10.213.0.100"


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ping(lab: Lab, src: str, dst: str, count: int = 1, interval: float = 0.2,
         wait: float = 1.0) -> int:
    """Number of replies src got from dst (a node name or an address) to `count` pings.

    No -w: with a deadline ping keeps sending until `count` replies arrive. The run's
    timeout bounds it instead (ping is killed if it ever overruns)."""
    addr = dst if dst[0].isdigit() else lab.address(dst)
    r = lab.run(src, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                      "-W", str(wait), addr], check=False, timeout=count * interval * 3 + wait + 5)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m and int(m.group(1)) == count, r.stdout + r.stderr
    return int(m.group(2))


def reachable_again(lab: Lab, src: str, dst: str, timeout: float = 6.0) -> bool:
    """After a heal, src's ARP entry for dst may still be INCOMPLETE/FAILED from the fault;
    the kernel re-resolves on the next packets, so allow a few seconds of retries."""
    return wait_until(lambda: ping(lab, src, dst, count=2) == 2, timeout)


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that is not us (it runs nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture(autouse=True)
def no_leftover_namespaces() -> Iterator[None]:
    yield
    mine = re.compile(rf"^hf{os.getpid()}(_\d+)?-")
    assert not [n for n in netns_list() if mine.match(n)]


@pytest.mark.netns
def test_lab_builds_and_tears_down() -> None:
    lab = Lab(3)
    names = set(lab.namespaces)
    try:
        assert len(names) == 5 and names <= netns_list()
        assert [lab.address(n) for n in lab.nodes] == ["10.213.0.11", "10.213.0.12", "10.213.0.13"]
        assert lab.address("client") == "10.213.0.50"
        for node in [*lab.nodes, "client"]:
            links = {x["ifname"]: x for x in json.loads(lab.ip(node, "-j", "addr").stdout)}
            assert set(links) == {"lo", "eth0"}
            assert "UP" in links["lo"]["flags"]
            assert {(a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"]
                    if a["family"] == "inet"} == {(lab.address(node), 24)}
        br = json.loads(subprocess.run(["ip", "-n", lab.bridge_ns, "-j", "-d", "link", "show",
                                        "br0"], capture_output=True, text=True).stdout)[0]
        assert br["linkinfo"]["info_data"]["stp_state"] == 0
        assert br["linkinfo"]["info_data"]["forward_delay"] == 0
        ports = json.loads(subprocess.run(["ip", "-n", lab.bridge_ns, "-j", "link", "show",
                                           "master", "br0"], capture_output=True,
                                          text=True).stdout)
        assert {p["ifname"] for p in ports} == {lab.bridge_port(n)
                                               for n in [*lab.nodes, "client"]}
        workdir = lab.workdir
    finally:
        lab.close()
    lab.close()  # idempotent
    assert not names & netns_list()
    assert not workdir.exists()


@pytest.mark.netns
def test_nodes_ping_each_other_and_the_client() -> None:
    with Lab(3) as lab:
        everyone = [*lab.nodes, "client"]
        for a in everyone:
            for b in everyone:
                if a != b:
                    assert ping(lab, a, b) == 1, (a, b)


@pytest.mark.netns
def test_namespaces_are_isolated_from_the_root_namespace() -> None:
    with Lab(2) as lab:
        ours = set(lab.namespaces)
        for ns in ours:
            routes = json.loads(subprocess.run(["ip", "-n", ns, "-j", "route", "show"],
                                               capture_output=True, text=True).stdout)
            assert all(r["dst"] != "default" for r in routes), (ns, routes)
            assert all(r["dst"] == "10.213.0.0/24" for r in routes), (ns, routes)
            # Every veth in the lab has its peer in another lab namespace, never in root.
            ids = {x["nsid"]: x.get("name") for x in json.loads(subprocess.run(
                ["ip", "-n", ns, "-j", "netns", "list-id"], capture_output=True,
                text=True).stdout or "[]")}
            veths = json.loads(subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show",
                                               "type", "veth"], capture_output=True,
                                              text=True).stdout)
            for v in veths:
                assert ids.get(v.get("link_netnsid")) in ours, (ns, v["ifname"], ids)
        # ...and no root-namespace interface is a peer of a lab interface.
        root_ids = {x["nsid"]: x.get("name") for x in json.loads(subprocess.run(
            ["ip", "-j", "netns", "list-id"], capture_output=True, text=True).stdout or "[]")}
        for link in json.loads(subprocess.run(["ip", "-j", "-d", "link", "show"],
                                              capture_output=True, text=True).stdout):
            if "link_netnsid" in link:
                assert root_ids.get(link["link_netnsid"]) not in ours, link["ifname"]
        # Without a default route nothing off-subnet is even routable (no packet leaves).
        r = lab.run("node1", ["ip", "route", "get", "192.0.2.1"], check=False)
        assert r.returncode != 0 and "unreachable" in r.stderr.lower()


@pytest.mark.netns
def test_partition_is_silent_and_heal_restores() -> None:
    with Lab(3) as lab:
        assert ping(lab, "node1", "node2") == 1
        lab.partition("node1")
        link = lab.ip("node1", "link", "show", "eth0").stdout
        assert "LOWER_UP" in link and "state UP" in link
        port = subprocess.run(["ip", "-n", lab.bridge_ns, "link", "show",
                               lab.bridge_port("node1")], capture_output=True, text=True).stdout
        assert "LOWER_UP" in port
        assert ping(lab, "node1", "node2", count=3) == 0
        assert ping(lab, "client", "node1", count=3) == 0
        assert ping(lab, "node2", "node3") == 1
        assert ping(lab, "client", "node2") == 1
        lab.heal("node1")
        assert reachable_again(lab, "node1", "node2")
        assert reachable_again(lab, "client", "node1")


@pytest.mark.netns
def test_partition_groups() -> None:
    with Lab(3) as lab:
        lab.partition_groups([["node1", "node2"], ["node3"]])
        assert ping(lab, "node1", "node2") == 1
        assert ping(lab, "node1", "node3", count=2) == 0
        assert ping(lab, "node3", "node2", count=2) == 0
        assert ping(lab, "client", "node3") == 1  # not in any group: reaches everyone
        assert ping(lab, "client", "node1") == 1
        lab.heal()
        assert reachable_again(lab, "node1", "node3")
        assert reachable_again(lab, "node3", "node2")


@pytest.mark.netns
def test_link_down_stops_traffic() -> None:
    with Lab(2) as lab:
        assert ping(lab, "node1", "node2") == 1
        lab.link_down("node2")
        assert "state DOWN" in lab.ip("node2", "link", "show", "eth0").stdout
        assert ping(lab, "node1", "node2", count=3) == 0
        lab.link_up("node2")
        assert reachable_again(lab, "node1", "node2")


@pytest.mark.netns
def test_loss_drops_about_half() -> None:
    with Lab(1) as lab:
        assert ping(lab, "client", "node1", count=3) == 3  # ARP resolved before the loss
        lab.loss(50)
        rules = subprocess.run(["ip", "netns", "exec", lab.bridge_ns, "nft", "list", "ruleset"],
                               capture_output=True, text=True).stdout
        assert "numgen random mod 1000 < 500" in rules
        got = ping(lab, "client", "node1", count=400, interval=0.01)
        assert 0.30 <= 1 - got / 400 <= 0.70, got
        lab.clear_loss()
        assert ping(lab, "client", "node1", count=50, interval=0.01) >= 49


@pytest.mark.netns
def test_probe_follows_a_vip_moved_by_hand() -> None:
    with Lab(2) as lab:
        echo_mod.start(lab, 7000)
        lab.ip("node1", "addr", "add", f"{VIP}/24", "dev", "eth0")
        proc = probe_mod.start(lab, VIP, 7000, duration=2.5)
        time.sleep(1.2)
        t_move = time.monotonic()
        lab.ip("node1", "addr", "del", f"{VIP}/24", "dev", "eth0")
        lab.ip("node2", "addr", "add", f"{VIP}/24", "dev", "eth0")
        lab.garp("node2", VIP)  # otherwise the client keeps sending to node1's MAC
        assert proc.wait(6.0) == 0, proc.stderr.read_text()
        assert proc.data is not None
        run = probe_mod.load(proc.data)
        spans = probe_mod.responders_over_time(run.records)
        assert [s.responder for s in spans] == ["node1", "node2"], spans
        assert spans[0].last <= t_move + 0.05 and spans[1].first >= t_move
        assert run.meta["sent"] >= 200
        assert probe_mod.longest_outage_ms(run.records, run.start, t_move) < 250
        assert probe_mod.longest_outage_ms(run.records) < 1500
        gaps = probe_mod.outages(run.records, min_ms=0)  # all gaps; edges have None
        switch = [g for g in gaps if g.before and g.after and g.before != g.after]
        assert [(g.before, g.after) for g in switch] == [("node1", "node2")]
        assert switch[0].start <= t_move + 0.05 <= switch[0].end + 0.05 and switch[0].ms < 1500


@pytest.mark.netns
def test_monitor_sees_add_and_remove_within_50ms() -> None:
    with Lab(2) as lab:
        monitor_mod.start(lab, VIP)
        t0 = time.monotonic()
        lab.ip("node1", "addr", "add", f"{VIP}/24", "dev", "eth0")
        t1 = time.monotonic()
        time.sleep(0.2)
        assert lab.vip_holders(VIP) == ["node1"]
        t2 = time.monotonic()
        lab.ip("node1", "addr", "del", f"{VIP}/24", "dev", "eth0")
        t3 = time.monotonic()
        time.sleep(0.2)
        lab.ip("node2", "addr", "add", f"{VIP}/24", "dev", "eth0")
        time.sleep(0.1)
        t4 = time.monotonic()
        lab.ip("node1", "addr", "add", f"{VIP}/24", "dev", "eth0")
        time.sleep(0.3)
        lab.ip("node1", "addr", "del", f"{VIP}/24", "dev", "eth0")
        t5 = time.monotonic()
        time.sleep(0.1)
        tl = monitor_mod.timeline(lab)
        n1 = [(t, p) for t, n, p in tl.merged() if n == "node1" and t > t0]
        assert len(n1) == 4, tl.merged()
        (a_t, a_p), (d_t, d_p) = n1[0], n1[1]
        assert a_p and t0 <= a_t <= t1 + 0.05
        assert not d_p and t2 <= d_t <= t3 + 0.05
        assert tl.holder_at(t1 + 0.1) == "node1"
        assert tl.holder_at(t3 + 0.1) is None
        assert tl.holders_at(t4 + 0.15) == ["node1", "node2"]
        with pytest.raises(ValueError):
            tl.holder_at(t4 + 0.15)
        dual = tl.dual_holder_ms()
        assert 250 <= dual <= (t5 - t4) * 1000 + 50, dual
        assert tl.dual_holder_ms(exclude={"node1": [(t4 - 0.01, math.inf)]}) == 0
        assert tl.dual_holder_ms(exclude=lambda node, t: node == "node2") == 0
        assert abs(tl.dual_holder_ms(exclude=lambda node, t: False) - dual) < 1
        assert lab.vip_holders(VIP) == ["node2"]
        # Monitors still run: the open interval lasts until the timeline was read.
        assert tl.holder_at(t5 + 0.05) == "node2"


@pytest.mark.netns
def test_spawn_runs_the_program_itself_inside_the_namespace() -> None:
    with Lab(1) as lab:
        p = lab.spawn("node1", ["sleep", "30"])
        assert wait_until(lambda: Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep", 5)
        ns_inode = os.stat(f"/run/netns/{lab.ns('node1')}").st_ino
        assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == ns_inode
        lab.freeze(p)
        assert wait_until(lambda: Path(f"/proc/{p.pid}/stat").read_text().split()[2] == "T", 2)
        lab.thaw(p)
        assert wait_until(lambda: Path(f"/proc/{p.pid}/stat").read_text().split()[2] != "T", 2)
        assert lab.stop(p, timeout=2) == -signal.SIGTERM


@pytest.mark.netns
def test_close_kills_everything_even_when_the_body_raises() -> None:
    pids: list[int] = []
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lab(2, term_timeout=1.0) as lab:
        names = lab.namespaces
        pids.append(lab.spawn("node1", ["sleep", "30"]).pid)
        # Ignores SIGTERM (and so does its child): needs the SIGKILL escalation.
        pids.append(lab.spawn("node2", ["sh", "-c", "trap '' TERM; sleep 30"]).pid)
        frozen = lab.spawn("client", ["sleep", "30"])
        lab.freeze(frozen)
        pids.append(frozen.pid)
        # A daemon that left our process group: only the namespace sweep finds it.
        sh = lab.spawn("node1", ["sh", "-c", "setsid sleep 30 >/dev/null 2>&1 & echo $!; wait"])
        lab.wait_for_output(sh, "\n")
        pids += [sh.pid, int(sh.output().split()[0])]
        raise RuntimeError("boom")
    assert len(pids) == 5
    assert all(gone(p) for p in pids), [p for p in pids if not gone(p)]
    assert not set(names) & netns_list()


@pytest.mark.netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_lab_owner_still_cleans_up(sig: int) -> None:
    code = textwrap.dedent("""
        import time
        from lab import Lab
        lab = Lab(1, prefix="hfsig", term_timeout=1.0)
        p = lab.spawn("node1", ["sleep", "30"])
        print(p.pid, " ".join(lab.namespaces), flush=True)
        time.sleep(15)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        pid_s, *names = owner.stdout.readline().split()
        assert names and set(names) <= netns_list()
        owner.send_signal(sig)
        owner.wait(10)
        assert owner.returncode == -sig, owner.stderr.read() if owner.stderr else ""
        assert gone(int(pid_s))
        assert not set(names) & netns_list()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)
        cleanup_stale("hfsig")


@pytest.mark.netns
def test_cleanup_stale_removes_only_dead_runs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert gone(dead.pid)
    me = os.getpid()
    stale = {f"hfst{dead.pid}-br", f"hfst{dead.pid}_2-node1"}
    keep = {f"hfst{me}-br", f"hfstx{dead.pid}-br", f"hfst{dead.pid}"}
    try:
        for n in stale | keep:
            subprocess.run(["ip", "netns", "add", n], check=True)
        assert set(cleanup_stale("hfst")) == stale
        assert not stale & netns_list() and keep <= netns_list()
    finally:
        for n in (stale | keep) & netns_list():
            subprocess.run(["ip", "netns", "del", n], check=False)


@pytest.mark.netns
def test_delay_needs_netem() -> None:
    with Lab(1) as lab:
        if lab.has_netem():
            lab.delay(30, ["node1"])
            r = lab.run("client", ["ping", "-n", "-c", "2", "-W", "2", lab.address("node1")])
            assert re.search(r"time=(3\d|4\d)\.", r.stdout), r.stdout
            lab.clear_delay()
        else:
            with pytest.raises(LabError, match="netem"):
                lab.delay(30)
