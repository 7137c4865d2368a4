"""The cluster the systemd tests share: three containers booting systemd, the package installed
with apt, one config and key, the lab's VIP monitors and UDP echo running in their namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hafailover.control.client import ControlClient, DaemonUnreachable
from hafailover.wire.keys import generate_key
from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod
from lab.netns import LabProcess
from lab.nspawn import SystemdLab

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
VIP = "10.213.0.100"
UNIT = "hafailover.service"
# A scratch state directory inside a node's container (its /tmp is a tmpfs of its own).
CONTAINER_SCRATCH = "/".join(("", "var", "tmp", "release-figure"))
SOCKET = "/run/hafailover/control.sock"
PRIORITY = {"node1": 150, "node2": 100, "node3": 50}


def figure(name: str, value: float | str, unit: str = "ms") -> None:
    """One measured figure in a greppable form (pytest -s shows it; the report quotes it)."""
    shown = f"{value:.1f}" if isinstance(value, float) else value
    print(f"FIGURE {name} = {shown} {unit}".rstrip(), flush=True)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             poll: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def build_deb(out: Path, version: str | None = None) -> Path:
    """The package from this checkout (HAFAILOVER_DEB, if set, is used instead)."""
    given = os.environ.get("HAFAILOVER_DEB")
    if given and version is None:
        return Path(given)
    argv = [str(REPO / "packaging" / "build-deb.sh"), "--out", str(out)]
    if version:
        argv += ["--version", version]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"build-deb.sh failed:\n{r.stderr[-3000:]}"
    return Path(r.stdout.strip().splitlines()[-1])


def repack(deb: Path, version: str, out: Path) -> Path:
    """The same package rebuilt with another version (what a new release looks like to dpkg)."""
    tree = out / f"tree-{version}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    old = next(ln for ln in text.splitlines() if ln.startswith("Version:"))
    control.write_text(text.replace(old, f"Version: {version}"))
    new = out / deb.name.replace(old.split()[1], version)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(new)],
                   check=True, capture_output=True)
    return new


def config_text() -> str:
    nodes = "\n".join(f"  - {{name: {n}, address: 10.213.0.{10 + i}, priority: {PRIORITY[n]}}}"
                      for i, n in enumerate(PRIORITY, 1))
    return f"""# The systemd lab's cluster (tests/systemd).
cluster:
  name: syslab
  key_file: /etc/hafailover/cluster.key
nodes:
{nodes}
vips:
  - {{address: {VIP}/24, interface: eth0}}
checks:
  - {{name: alive, script: [/bin/true], interval: 1s}}
"""


class Cluster:
    def __init__(self, lab: SystemdLab, deb: Path) -> None:
        self.lab = lab
        self.deb = deb
        self.nodes = lab.nodes
        self.config = config_text()
        self.key = generate_key() + "\n"
        self.install_seconds: dict[str, float] = {}
        self.ready_seconds: dict[str, float] = {}
        self.monitors: dict[str, LabProcess] = {}

    def setup(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self.lab.boot, self.nodes))
            self.install_seconds = dict(zip(
                self.nodes, pool.map(lambda n: self.lab.install_deb(n, self.deb), self.nodes),
                strict=True))
        for n in self.nodes:
            self.write_config(n, self.config)
            self.lab.put(n, "/etc/hafailover/cluster.key", self.key, 0o600)
        # The lab's host-side tools, in the containers' namespaces.
        self.monitors = monitor_mod.start(self.lab.lab, VIP)
        echo_mod.start(self.lab.lab)
        for n in self.nodes:
            t0 = time.monotonic()
            self.systemctl(n, "start")
            self.ready_seconds[n] = time.monotonic() - t0
        self.wait_settled()

    def write_config(self, node: str, text: str) -> None:
        self.lab.put(node, "/etc/hafailover/hafailover.yaml", text, 0o644)

    def systemctl(self, node: str, *args: str, check: bool = True,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        verb, *rest = args
        return self.lab.exec(node, ["systemctl", verb, *rest, *([] if rest else [UNIT])],
                             check=check, timeout=timeout)

    def status(self, node: str) -> dict[str, Any] | None:
        try:
            return ControlClient(self.lab.path(node, SOCKET), timeout=1.0).status()
        except (DaemonUnreachable, OSError):
            return None

    def holders(self) -> list[str]:
        return self.lab.lab.vip_holders(VIP)

    def leader(self) -> str:
        [holder] = wait_for(lambda: (h if len(h := self.holders()) == 1 else None), 15,
                            "exactly one VIP holder")
        return holder

    def wait_settled(self, timeout: float = 20.0) -> str:
        """One holder, and every node's daemon follows it."""
        def settled() -> str | None:
            h = self.holders()
            if len(h) != 1:
                return None
            for n in self.nodes:
                s = self.status(n)
                if s is None or s.get("leader") != h[0]:
                    return None
            return h[0]
        return wait_for(settled, timeout, "a settled cluster")

    def journal(self, node: str, *args: str) -> list[dict[str, Any]]:
        r = self.lab.exec(node, ["journalctl", "--no-pager", "-o", "json", *args])
        return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]

    def timeline_removals(self, node: str, after: float) -> list[float]:
        tl = monitor_mod.timeline(self.lab.lab, VIP)[node]
        return [t for t, present in tl.changes if not present and t >= after]

    def timeline_adds(self, node: str, after: float) -> list[float]:
        tl = monitor_mod.timeline(self.lab.lab, VIP)[node]
        return [t for t, present in tl.changes if present and t >= after]


def follower_of(cluster: Cluster, node: str, leader: str) -> bool:
    s = cluster.status(node)
    return s is not None and s.get("role") == "follower" and s.get("leader") == leader


def measure_readiness(cluster: Cluster, node: str) -> float:
    """Seconds `systemctl start` takes on node after a stop (Type=notify: until READY=1)."""
    cluster.systemctl(node, "stop")
    t0 = time.monotonic()
    cluster.systemctl(node, "start")
    return time.monotonic() - t0


def measure_freeze(cluster: Cluster, sig: signal.Signals) -> dict[str, float]:
    """SIGSTOP (or kill) the settled leader's daemon from the host and time what follows, in ms
    from the signal: the VIP leaving the leader (`stale_address`), the longest client outage,
    the restarted daemon following the new leader (`back_as_follower`, s) and, for SIGSTOP,
    systemd's watchdog kill and the daemon's exit as the journal stamps them (the same
    CLOCK_MONOTONIC). Returns once the node is back as a follower."""
    lab = cluster.lab
    leader = cluster.wait_settled()
    pid = lab.main_pid(leader)
    assert pid is not None
    probe = probe_mod.start(lab.lab, VIP, duration=7.0)
    time.sleep(0.5)
    t0 = time.monotonic()  # stamped before the signal: nothing it causes can come earlier
    os.kill(pid, sig)
    removed = wait_for(lambda: cluster.timeline_removals(leader, t0), 5, "VIP off the leader")[0]
    new = wait_for(lambda: next((n for n in cluster.holders() if n != leader), None), 5,
                   "a new holder")
    wait_for(lambda: follower_of(cluster, leader, new) and lab.main_pid(leader) != pid, 15,
             f"{leader} restarted as a follower")
    restarted = time.monotonic()
    lab.lab.stop(probe, timeout=10)
    assert probe.data is not None
    run = probe_mod.load(probe.data)
    out = {
        "stale_address": (removed - t0) * 1000,
        "client_outage": probe_mod.longest_outage_ms(run.records, start=t0 - 0.2, end=run.end),
        "back_as_follower": restarted - t0,
    }
    if sig == signal.SIGSTOP:
        journal = cluster.journal(leader, "-u", UNIT, "-n", "200")
        kills = [int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 for e in journal
                 if "Watchdog timeout" in e.get("MESSAGE", "")]
        exits = [int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 for e in journal
                 if "Main process exited" in e.get("MESSAGE", "")]
        if kills and kills[-1] > t0:
            out["watchdog_kill"] = (kills[-1] - t0) * 1000
        if exits and exits[-1] > t0:
            out["exit_to_vip_removed"] = (removed - exits[-1]) * 1000
    return out


def measure_release_vips(cluster: Cluster, node: str, address: str = "10.213.0.201/24",
                         ) -> float:
    """Seconds the unit's ExecStopPost command (`release-vips`, as installed) takes inside node
    to remove one recorded address: a spare address, recorded in a scratch state directory
    passed as systemd passes it, so that the node's own daemon and VIP are not touched."""
    unit = cluster.lab.exec(node, ["cat", f"/lib/systemd/system/{UNIT}"]).stdout
    command = next(ln.split("=", 1)[1] for ln in unit.splitlines()
                   if ln.startswith("ExecStopPost="))
    assert "release-vips" in command, command
    record = json.dumps({"version": 1, "vips": [{"address": address, "interface": "eth0"}]})
    scratch = CONTAINER_SCRATCH  # inside the container, not this machine
    cluster.lab.put(node, f"{scratch}/vips.json", record + "\n", 0o600)
    cluster.lab.exec(node, ["ip", "addr", "add", address, "dev", "eth0"])
    script = f"TIMEFORMAT=%R; time {command} >/dev/null"
    r = cluster.lab.exec(node, ["bash", "-c", script],
                         env={"STATE_DIRECTORY": scratch})
    gone = cluster.lab.exec(node, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert address.split("/")[0] + "/" not in gone, f"release-vips left {address}: {gone}"
    return float(r.stderr.strip().splitlines()[-1])


def cluster_fixture(deb: Path) -> Iterator[Cluster]:
    with SystemdLab(3) as lab:
        cluster = Cluster(lab, deb)
        try:
            cluster.setup()
            yield cluster
        except BaseException:
            for n in lab.nodes:  # what the containers said, for the failure report
                with_journal = lab.containers[n].init_pid is not None
                if with_journal:
                    r = lab.exec(n, ["journalctl", "--no-pager", "-n", "40", "-u", UNIT],
                                 check=False)
                    print(f"--- {n} journal\n{r.stdout}", file=sys.stderr)
            raise
