"""A minimal namespace network for the VIP, link-watcher and announcer tests.

Separate from `lab.Lab` on purpose: these tests exercise the netlink and packet code
underneath the lab, so they build the bridge with plain `ip` commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


class VipNet:
    """Bridge namespace + node namespaces (eth0 in each, 10.213.0.1N/24, fd00:213::1N/64).

    Node n's eth0 is one end of a veth pair whose other end, `v{n}`, is a port of br0 in the
    bridge namespace: setting `v{n}` down takes the carrier away from the node's eth0.
    """

    def __init__(self, nodes: int) -> None:
        self.prefix = f"hfvip{os.getpid()}"
        self.bridge = f"{self.prefix}-br"
        self.nodes = [f"{self.prefix}-n{i}" for i in range(1, nodes + 1)]
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []

    @staticmethod
    def ip(*args: str) -> str:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def create(self) -> None:
        for ns in [self.bridge, *self.nodes]:
            self.ip("netns", "add", ns)
            self.created.append(ns)
        b = self.bridge
        self.ip("-n", b, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self.ip("-n", b, "link", "set", "br0", "up")
        for n, ns in enumerate(self.nodes, start=1):
            # Created inside the bridge namespace, the peer lands directly in the node's.
            self.ip("-n", b, "link", "add", f"v{n}", "type", "veth", "peer", "eth0", "netns", ns)
            self.ip("-n", b, "link", "set", f"v{n}", "master", "br0", "up")
            self.ip("-n", ns, "link", "set", "lo", "up")
            self.ip("-n", ns, "link", "set", "eth0", "up")
            self.ip("-n", ns, "addr", "add", f"10.213.0.{10 + n}/24", "dev", "eth0")
            self.ip("-n", ns, "addr", "add", f"fd00:213::{10 + n}/64", "dev", "eth0", "nodad")

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)

    def run_py(self, ns: str, code: str, *args: str, timeout: float = 30) -> Any:
        """Run `code` with this interpreter in `ns`; return the JSON of its last output line."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def add_address(self, ns: str, address: str, dev: str = "eth0") -> None:
        """`ip addr add` (IPv6 without duplicate address detection, as the daemon adds VIPs)."""
        extra = ["nodad"] if ":" in address else []
        self.ip("-n", ns, "addr", "add", address, "dev", dev, *extra)

    def addrs(self, ns: str, dev: str = "eth0") -> list[dict[str, Any]]:
        """`ip -j addr show dev`: the address entries (addr_info) of the interface."""
        out = json.loads(self.ip("-n", ns, "-j", "addr", "show", "dev", dev))
        return list(out[0]["addr_info"]) if out else []
