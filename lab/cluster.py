"""Real hafailover daemons in a `Lab`: configs, key, start/stop, status, check faults.

Every node gets the same cluster configuration; only `state_dir` and `control_socket` differ,
because all the lab's namespaces share one filesystem. Each node's health check is a script
that reads a mode file, so a test can make a node's service fail or hang on demand.

With `ClusterOptions.groups` the file has `groups:` instead of top-level `vips:` (one VIP per
group on eth0): `web_db_groups()` is the active/active pair of the VIP-groups issue,
`generated_groups(n)` n groups spread round-robin over the nodes. In a two-bridge lab the
nodes talk on eth1 (`Lab.hb_address`) while the VIPs stay on eth0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import echo as echo_mod
from lab.netns import Lab, LabProcess

VIP = "10.213.0.100"
VIP_CIDR = f"{VIP}/24"
PORT = 5405

CHECK_SCRIPT = """#!/bin/sh
# Lab health check: the node's service is what the mode file says.
mode=$(cat "$(dirname "$0")/check-mode" 2>/dev/null)
case "$mode" in
  fail) echo "service down (lab)"; exit 1 ;;
  hang) exec sleep 3600 ;;
esac
exit 0
"""


@dataclass(frozen=True)
class GroupSpec:
    """One `groups:` entry: a single VIP on eth0."""

    name: str
    vip: str  # address without prefix; the file says /24
    priority: dict[str, int] = field(default_factory=dict)
    preempt: bool | None = None  # None: cluster.preempt
    preempt_delay: str = ""  # empty: cluster.preempt_delay
    track_interfaces: tuple[str, ...] = ()

    def yaml(self) -> list[str]:
        prio = ", ".join(f"{n}: {p}" for n, p in self.priority.items())
        lines = [f"  - name: {self.name}",
                 f"    vips: [{{address: {self.vip}/24, interface: eth0}}]"]
        lines += [f"    priority: {{{prio}}}"] if prio else []
        lines += [f"    preempt: {str(self.preempt).lower()}"] if self.preempt is not None else []
        lines += [f"    preempt_delay: {self.preempt_delay}"] if self.preempt_delay else []
        if self.track_interfaces:
            lines.append(f"    track_interfaces: [{', '.join(self.track_interfaces)}]")
        return lines


def web_db_groups(preempt_delay: str = "3s") -> list[GroupSpec]:
    """The issue's example: web prefers node1, db prefers node2, node3 is everyone's last."""
    return [
        GroupSpec("web", "10.213.0.100", {"node1": 150, "node2": 100, "node3": 50},
                  preempt=True, preempt_delay=preempt_delay),
        GroupSpec("db", "10.213.0.101", {"node2": 150, "node1": 100, "node3": 50},
                  preempt=True, preempt_delay=preempt_delay),
    ]


def group_vip(i: int) -> str:
    """The VIP of generated group i: 10.213.0.100-.249, then 10.213.2.x upwards."""
    if i < 150:
        return f"10.213.0.{100 + i}"
    return f"10.213.{2 + (i - 150) // 250}.{1 + (i - 150) % 250}"


def generated_groups(n: int, nodes: list[str]) -> list[GroupSpec]:
    """n groups g000.. spread round-robin: group i prefers nodes[i % len(nodes)], then the
    next nodes in order."""
    out = []
    for i in range(n):
        order = nodes[i % len(nodes):] + nodes[:i % len(nodes)]
        prio = {node: 150 - 50 * k for k, node in enumerate(order)}
        out.append(GroupSpec(f"g{i:03d}", group_vip(i), {k: max(v, 1) for k, v in prio.items()}))
    return out


@dataclass
class ClusterOptions:
    heartbeat: str = "100ms"
    failover: str = "600ms"
    preempt: bool = False
    preempt_delay: str = "30s"
    witnesses: tuple[str, ...] = ()
    priorities: dict[str, int] = field(default_factory=dict)
    check_interval: str = "200ms"
    check_timeout: str = "300ms"
    check_fall: int = 2
    check_rise: int = 2
    with_check: bool = True
    log_level: str = "info"
    # cluster.vip_lifetime as written in the file ("false" turns it off); empty: the default.
    vip_lifetime: str = ""
    # None: top-level `vips:` with VIP (one group named default).
    groups: list[GroupSpec] | None = None
    metrics_port: int = 0  # > 0: metrics.listen on the node's lab address (eth0)
    link_settle: str = ""  # cluster.link_settle; empty: the default
    startup_settle: str = ""  # cluster.startup_settle; empty: the default


class HaCluster:
    def __init__(self, lab: Lab, options: ClusterOptions | None = None) -> None:
        self.lab = lab
        self.opts = options or ClusterOptions()
        self.root = lab.workdir / "hafailover"
        self.root.mkdir(exist_ok=True)
        self.key = self.root / "cluster.key"
        self.procs: dict[str, LabProcess] = {}
        self._write_key()
        for n in lab.nodes:
            self._write_node(n)

    # ------------------------------------------------------------------ files

    def _write_key(self) -> None:
        from hafailover.wire import generate_key

        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key() + "\n")

    def node_dir(self, node: str) -> Path:
        return self.root / node

    def config_path(self, node: str) -> Path:
        return self.node_dir(node) / "hafailover.yaml"

    def socket(self, node: str) -> Path:
        return self.node_dir(node) / "control.sock"

    def _write_node(self, node: str) -> None:
        d = self.node_dir(node)
        d.mkdir(exist_ok=True)
        o = self.opts
        lines = [
            "cluster:",
            "  name: lab",
            f"  key_file: {self.key}",
            f"  port: {PORT}",
            f"  heartbeat_interval: {o.heartbeat}",
            f"  failover_timeout: {o.failover}",
            f"  preempt: {str(o.preempt).lower()}",
            f"  preempt_delay: {o.preempt_delay}",
        ]
        if o.vip_lifetime:
            lines.append(f"  vip_lifetime: {o.vip_lifetime}")
        if o.link_settle:
            lines.append(f"  link_settle: {o.link_settle}")
        if o.startup_settle:
            lines.append(f"  startup_settle: {o.startup_settle}")
        lines += ["nodes:"]
        for i, n in enumerate(self.lab.nodes):
            default = max(10, 150 - 50 * i)
            witness = n in o.witnesses
            prio = 0 if witness else o.priorities.get(n, default)
            extra = ", witness: true" if witness else ""
            lines.append(
                f"  - {{name: {n}, address: {self.lab.hb_address(n)}, priority: {prio}{extra}}}"
            )
        if o.groups is None:
            lines += ["vips:", f"  - {{address: {VIP_CIDR}, interface: eth0}}"]
        else:
            lines += ["groups:", *(line for g in o.groups for line in g.yaml())]
        if o.metrics_port:
            lines += ["metrics:", f"  listen: \"{self.lab.address(node)}:{o.metrics_port}\""]
        if o.with_check and node not in o.witnesses:
            script = d / "check.sh"
            script.write_text(CHECK_SCRIPT)
            script.chmod(0o755)
            lines += [
                "checks:",
                f"  - {{name: service, script: [{script}], interval: {o.check_interval}, "
                f"timeout: {o.check_timeout}, fall: {o.check_fall}, rise: {o.check_rise}}}",
            ]
        lines += [
            f"control_socket: {self.socket(node)}",
            f"state_dir: {d / 'state'}",
            f"log_level: {o.log_level}",
        ]
        self.config_path(node).write_text("\n".join(lines) + "\n")

    def set_check(self, node: str, mode: str) -> float:
        """'ok', 'fail' or 'hang': what the node's health check finds from now on."""
        (self.node_dir(node) / "check-mode").write_text(mode)
        return time.monotonic()

    # ------------------------------------------------------------------ processes

    def start(self, node: str) -> LabProcess:
        proc = self.lab.spawn_python(
            node, "hafailover",
            ["run", "-c", str(self.config_path(node)), "--node", node],
            # Like an installed daemon: bytecode cached, so RSS is not inflated by compiling.
            env={"PYTHONDONTWRITEBYTECODE": ""},
        )
        self.procs[node] = proc
        return proc

    def start_all(self, timeout: float = 15.0) -> None:
        for n in self.lab.nodes:
            self.start(n)
        for n in self.lab.nodes:
            self.wait_ready(n, timeout)

    def wait_ready(self, node: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[node]
            if not proc.alive():
                raise RuntimeError(f"{node} daemon exited:\n{self.log(node)[-3000:]}")
            if self.try_status(node) is not None:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{node} daemon not ready in {timeout}s:\n{self.log(node)[-3000:]}")

    def kill_host(self, node: str, echo: dict[str, LabProcess] | None = None) -> float:
        """node's host dies: its links go down, its daemon (and echo) are SIGKILLed. Returns
        when its links went down."""
        t = self.lab.link_down(node)
        self.lab.kill(self.procs[node])
        if echo is not None and node in echo:
            self.lab.kill(echo[node])
        return t

    def revive_host(self, node: str, echo: dict[str, LabProcess] | None = None) -> float:
        """node's host is back, rebooted: without the VIPs it had (the namespace kept them),
        links up, echo (if given) and daemon started; returns when the links came up."""
        vips = [g.vip for g in self.opts.groups] if self.opts.groups is not None else [VIP]
        subprocess.run(["ip", "-n", self.lab.ns(node), "-force", "-batch", "-"],
                       input="".join(f"addr del {v}/24 dev eth0\n" for v in vips),
                       capture_output=True, text=True, timeout=30, check=False)
        t = self.lab.link_up(node)
        if echo is not None:
            echo.update(echo_mod.start(self.lab, nodes=[node]))
        self.start(node)
        self.wait_ready(node)
        return t

    def log(self, node: str) -> str:
        """The daemon's stderr (its log when not under systemd)."""
        proc = self.procs[node]
        return proc.stderr.read_text(errors="replace") if proc.stderr.exists() else ""

    def try_status(self, node: str) -> dict[str, Any] | None:
        from hafailover.control.client import ControlClient, DaemonUnreachable

        try:
            return ControlClient(self.socket(node), timeout=1.0).status()
        except (DaemonUnreachable, OSError):
            return None

    def status(self, node: str) -> dict[str, Any]:
        s = self.try_status(node)
        if s is None:
            raise RuntimeError(f"{node} daemon does not answer")
        return s

    def cli(self, node: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run the `hafailover` CLI against node's daemon (as an operator would on that host)."""
        return subprocess.run(
            [sys.executable, "-m", "hafailover", "--socket", str(self.socket(node)), *args],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    def holders(self, vip: str = VIP) -> list[str]:
        return self.lab.vip_holders(vip)

    def group_holders(self, exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """Group name -> the nodes that have its VIP now (one `ip -j addr` per node). Leave
        out dead hosts (`exclude`): their namespace keeps the address until its kernel
        lifetime runs out, though nobody can reach it."""
        groups = self.opts.groups or [GroupSpec("default", VIP)]
        have: dict[str, set[str]] = {n: set() for n in exclude}
        for n in (n for n in self.lab.nodes if n not in exclude):
            out = self.lab.ip(n, "-j", "addr").stdout or "[]"
            have[n] = {a.get("local", "") for link in json.loads(out)
                       for a in link.get("addr_info", [])}
        return {g.name: [n for n in self.lab.nodes if g.vip in have[n]] for g in groups}

    def wait_groups(self, predicate: Callable[[dict[str, list[str]]], bool], timeout: float = 10.0,
                    poll: float = 0.02, exclude: tuple[str, ...] = ()
                    ) -> tuple[dict[str, list[str]], float]:
        """Poll group_holders(exclude) until predicate holds: (holders, monotonic time seen)."""
        deadline = time.monotonic() + timeout
        last: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            last = self.group_holders(exclude)
            if predicate(last):
                return last, time.monotonic()
            time.sleep(poll)
        raise TimeoutError(f"group holders not as wanted in {timeout}s; now: {last}")

    def wait_for_holder(
        self, timeout: float = 10.0, exclude: tuple[str, ...] = (), poll: float = 0.01
    ) -> tuple[str, float]:
        """Wait until exactly one node other than `exclude` holds the VIP: (node, time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = [h for h in self.holders() if h not in exclude]
            if len(held) == 1:
                return held[0], time.monotonic()
            time.sleep(poll)
        raise TimeoutError(f"no single VIP holder (other than {exclude}) in {timeout}s; "
                           f"holders now: {self.holders()}")

    def leader(self) -> str:
        node, _ = self.wait_for_holder()
        return node

    def events(self, node: str, limit: int = 20) -> list[dict[str, Any]]:
        """The node's transition history, through the real CLI (`events --json`)."""
        r = self.cli(node, "events", "--json", "-n", str(limit))
        if r.returncode != 0:
            raise RuntimeError(f"events on {node} failed: {r.stderr}")
        events: list[dict[str, Any]] = json.loads(r.stdout)["events"]
        return events

    # ------------------------------------------------------------------ added for fault tests

    def event_log(self, node: str) -> list[dict[str, Any]]:
        """The node's decision history read straight from its state directory (oldest first):
        no CLI process, so it is cheap, and it still works while the daemon is down."""
        path = self.node_dir(node) / "state" / "events.jsonl"
        out: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.endswith("}"):  # skip a line being written right now
                    out.append(json.loads(line))
        return out

    def reload(self, node: str) -> float:
        """SIGHUP the node's daemon (re-read its configuration); returns when it was sent."""
        return self.lab.kill(self.procs[node], signal.SIGHUP)

    def wait_status(self, node: str, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float = 10.0, poll: float = 0.02) -> dict[str, Any]:
        """Poll the node's status until predicate(status) holds; returns that status."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.try_status(node)
            if last is not None and predicate(last):
                return last
            time.sleep(poll)
        raise TimeoutError(f"{node}: status condition not met in {timeout}s; last: {last}")
