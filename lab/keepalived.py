"""keepalived (the distribution's package) in a `Lab`: configs, check scripts, start, faults.

The counterpart of `lab.cluster.HaCluster` for the benchmark: the same three nodes,
the same VIP on eth0, the same kind of mode-file health check, so both systems are measured on
one lab with one client. Every node runs

    keepalived --dont-fork --log-console --log-detail --no-syslog --vrrp \
        -f CONF -p PIDFILE -r VRRP_PIDFILE -c CHECKERS_PIDFILE

in its namespace: in the foreground (the lab owns the process and its group), only the VRRP
subsystem, and with pid files of its own, because all the lab's namespaces share one
filesystem and keepalived refuses to start when its default pid file names a live process.

VRRP: all nodes `state BACKUP`, priorities 150/100/50, preemption on (keepalived's default),
multicast adverts on eth0 (the lab's bridge has multicast snooping off, so 224.0.0.18 reaches
everyone), `advert_int` 1 with VRRPv2 (keepalived's defaults) or a fraction of a second with
VRRPv3. A `track_script` reads the node's mode file like HaCluster's check does: 'ok', 'fail'
or 'hang'. A failing script puts the instance into FAULT (no weight), which drops the VIP.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Same VIP and same mode-file check script as the hafailover lab, so both are measured alike.
from lab.cluster import CHECK_SCRIPT, VIP, VIP_CIDR
from lab.netns import Lab, LabProcess

VRID = 51


class KeepalivedError(RuntimeError):
    """keepalived is missing or did not come up."""


@dataclass(frozen=True)
class KeepalivedOptions:
    advert_int: float = 1.0
    vrrp_version: int = 2  # advert_int below 1 s needs 3
    priorities: tuple[int, ...] = (150, 100, 50)
    check_interval: float = 1.0
    check_timeout: float = 2.0
    check_fall: int = 2
    check_rise: int = 2
    with_check: bool = True


def binary() -> str:
    path = shutil.which("keepalived") or next(
        (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if Path(p).exists()), None)
    if path is None:
        raise KeepalivedError("keepalived is not installed (apt-get install keepalived)")
    return path


def version() -> str:
    """First line of `keepalived -v`, e.g. 'Keepalived v2.2.7 (01/16,2022)'."""
    r = subprocess.run([binary(), "-v"], capture_output=True, text=True, timeout=10)
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "keepalived (unknown version)"


def _num(x: float) -> str:
    return f"{x:g}"


class KeepalivedCluster:
    """One keepalived per lab node; `procs[node]` is its parent process (the group leader)."""

    def __init__(self, lab: Lab, options: KeepalivedOptions | None = None) -> None:
        self.lab = lab
        self.opts = options or KeepalivedOptions()
        if self.opts.advert_int < 1 and self.opts.vrrp_version != 3:
            raise ValueError("advert_int below 1 s needs vrrp_version 3")
        if len(self.opts.priorities) < len(lab.nodes):
            raise ValueError("give one priority per node")
        self.binary = binary()
        self.root = lab.workdir / "keepalived"
        self.root.mkdir(exist_ok=True)
        self.procs: dict[str, LabProcess] = {}
        for n in lab.nodes:
            self._write_node(n)

    def node_dir(self, node: str) -> Path:
        return self.root / node

    def config_path(self, node: str) -> Path:
        return self.node_dir(node) / "keepalived.conf"

    def priority(self, node: str) -> int:
        return self.opts.priorities[self.lab.nodes.index(node)]

    def config_text(self, node: str) -> str:
        o = self.opts
        d = self.node_dir(node)
        lines = [
            "global_defs {",
            f"    router_id {node}",
            f"    vrrp_version {o.vrrp_version}",
            "    script_user root",
            "}",
        ]
        if o.with_check:
            lines += [
                "vrrp_script lab_check {",
                f'    script "{d / "check.sh"}"',
                f"    interval {_num(o.check_interval)}",
                f"    timeout {_num(o.check_timeout)}",
                f"    fall {o.check_fall}",
                f"    rise {o.check_rise}",
                "}",
            ]
        lines += [
            "vrrp_instance lab {",
            "    state BACKUP",
            "    interface eth0",
            f"    virtual_router_id {VRID}",
            f"    priority {self.priority(node)}",
            f"    advert_int {_num(o.advert_int)}",
            "    virtual_ipaddress {",
            f"        {VIP_CIDR} dev eth0",
            "    }",
        ]
        if o.with_check:
            lines += ["    track_script {", "        lab_check", "    }"]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _write_node(self, node: str) -> None:
        d = self.node_dir(node)
        d.mkdir(exist_ok=True)
        script = d / "check.sh"
        script.write_text(CHECK_SCRIPT)
        script.chmod(0o755)
        self.config_path(node).write_text(self.config_text(node))

    def argv(self, node: str) -> list[str]:
        d = self.node_dir(node)
        return [self.binary, "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
                "--vrrp", "-f", str(self.config_path(node)), "-p", str(d / "keepalived.pid"),
                "-r", str(d / "vrrp.pid"), "-c", str(d / "checkers.pid")]

    def set_check(self, node: str, mode: str) -> float:
        """'ok', 'fail' or 'hang': what the node's track_script finds from now on."""
        (self.node_dir(node) / "check-mode").write_text(mode)
        return time.monotonic()

    def start(self, node: str) -> LabProcess:
        proc = self.lab.spawn(node, self.argv(node), name="keepalived")
        self.procs[node] = proc
        return proc

    def start_all(self, timeout: float = 10.0) -> None:
        for n in self.lab.nodes:
            self.start(n)
        for n in self.lab.nodes:
            self.wait_ready(n, timeout)

    def vrrp_pid(self, node: str) -> int | None:
        try:
            text = (self.node_dir(node) / "vrrp.pid").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def wait_ready(self, node: str, timeout: float = 10.0) -> None:
        """Until the VRRP child runs and has entered BACKUP (or MASTER)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[node]
            if not proc.alive():
                raise KeepalivedError(f"keepalived on {node} exited ({proc.returncode}):\n"
                                      f"{self.log(node)[-3000:]}")
            if self.vrrp_pid(node) is not None and re.search(
                    r"Entering (BACKUP|MASTER) STATE", self.log(node)):
                return
            time.sleep(0.05)
        raise KeepalivedError(f"keepalived on {node} not ready in {timeout}s:\n"
                              f"{self.log(node)[-3000:]}")

    def log(self, node: str) -> str:
        proc = self.procs[node]
        return "".join(p.read_text(errors="replace") for p in (proc.stdout, proc.stderr)
                       if p.exists())

    def holders(self) -> list[str]:
        return self.lab.vip_holders(VIP)
