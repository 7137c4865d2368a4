"""Shared pieces of the fault-injection tests (tests/integration/test_faults_*.py).

`running_cluster()` builds a `Lab`, starts the UDP echo and a VIP monitor on every node, then
the real daemons, and waits for the first VIP holder; the returned `Rig` bundles the analysis
helpers the tests share: monitor timelines, the daemons' decision history on the monotonic
clock, ARP and UDP capture with AF_PACKET sockets, and sending from the client namespace.

Everything network-facing lives in the lab's namespaces (10.213.0.0/16, no default route,
nothing joined to the root namespace) and every loop here is bounded in count and in time.
Measured figures are printed, so `pytest -s` shows them.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod
from lab.cluster import PORT, VIP, ClusterOptions, HaCluster
from lab.monitor import Exclude, HolderTimeline
from lab.netns import CLIENT, Lab, LabProcess, in_netns
from lab.probe import ProbeRun

T = TypeVar("T")
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
VIP_BYTES = socket.inet_aton(VIP)


def figure(name: str, value: float | str, unit: str = "ms") -> None:
    """Print one measured figure in a greppable form (visible with pytest -s)."""
    shown = f"{value:.1f}" if isinstance(value, float) else value
    print(f"FIGURE {name} = {shown} {unit}".rstrip(), flush=True)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             poll: float = 0.01) -> T:
    """Poll until predicate() returns something truthy (returned), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def mac_of(lab: Lab, node: str) -> bytes:
    """The fixed MAC the lab gives node's eth0 (02:00:0a:d5:00:<last octet>)."""
    return bytes([2, 0, 0x0A, 0xD5, 0, int(lab.address(node).rsplit(".", 1)[1])])


# --- capture ---------------------------------------------------------------------------------


class Frame(NamedTuple):
    t: float  # monotonic time of receipt
    data: bytes
    pkttype: int  # socket.PACKET_HOST, PACKET_BROADCAST, PACKET_OUTGOING, ...


class Capture:
    """AF_PACKET capture on one interface of a namespace, read by a thread.

    Bounded: it stops by itself after `max_seconds` or `max_frames`, whichever comes first.
    Use as a context manager (or start()/stop()); `frames` holds what was seen.
    """

    def __init__(self, lab: Lab, node: str, ifname: str = "eth0", proto: int = ETH_P_ALL, *,
                 bridge: bool = False, max_seconds: float = 30.0,
                 max_frames: int = 100_000) -> None:
        ns = lab.bridge_ns if bridge else lab.ns(node)
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                                       socket.htons(proto)))
        self.sock.bind((ifname, proto))
        self.sock.settimeout(0.05)
        self.max_seconds, self.max_frames = max_seconds, max_frames
        self.frames: list[Frame] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{node}", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(self.frames) >= self.max_frames:
                break
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                break
            self.frames.append(Frame(time.monotonic(), data, addr[2]))

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self) -> list[Frame]:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
        return self.frames

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Arp(NamedTuple):
    t: float
    op: int  # 1 request, 2 reply
    eth_dst: bytes
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes

    @property
    def gratuitous(self) -> bool:
        """A claim nobody asked for: sender IP = target IP, or a broadcast reply."""
        return self.spa == self.tpa or (self.op == 2 and self.eth_dst == BROADCAST)


def parse_arp(frames: Sequence[Frame]) -> list[Arp]:
    out = []
    for f in frames:
        d = f.data
        if len(d) < 42 or d[12:14] != b"\x08\x06":
            continue
        op = struct.unpack_from("!H", d, 20)[0]
        out.append(Arp(f.t, op, d[0:6], d[22:28], d[28:32], d[32:38], d[38:42]))
    return out


class Datagram(NamedTuple):
    t: float
    src: str
    dst: str
    dport: int
    payload: bytes


def parse_udp(frames: Sequence[Frame], port: int = PORT) -> list[Datagram]:
    """IPv4/UDP datagrams to `port` among the frames (no IP options in this lab)."""
    out = []
    for f in frames:
        d = f.data
        if len(d) < 42 or d[12:14] != b"\x08\x00" or d[23] != 17:
            continue
        ihl = (d[14] & 0x0F) * 4
        udp = 14 + ihl
        _sport, dport, length = struct.unpack_from("!HHH", d, udp)
        if dport != port:
            continue
        out.append(Datagram(f.t, socket.inet_ntoa(d[26:30]), socket.inet_ntoa(d[30:34]), dport,
                            d[udp + 8:udp + length]))
    return out


def client_udp_socket(lab: Lab) -> socket.socket:
    """A UDP socket living in the client's namespace (this thread never leaves ours)."""
    sock = in_netns(lab.ns(CLIENT), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.setblocking(False)
    return sock


# --- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    lab: Lab
    cluster: HaCluster
    first_holder: str
    # time.time() - time.monotonic(): turns the daemons' ISO event times into monotonic ones
    wall_offset: float = field(default_factory=lambda: time.time() - time.monotonic())

    @property
    def nodes(self) -> list[str]:
        return self.lab.nodes

    def timeline(self) -> HolderTimeline:
        return monitor_mod.timeline(self.lab, VIP)

    def changes(self, node: str, present: bool, after: float = -math.inf,
                before: float = math.inf) -> list[float]:
        """When the monitor on node saw the VIP appear (present) or vanish, in (after, before)."""
        tl = self.timeline()[node]
        return [t for t, p in tl.changes[1:] if p is present and after < t < before]

    def first_change(self, node: str, present: bool, after: float) -> float | None:
        ts = self.changes(node, present, after)
        return ts[0] if ts else None

    def wait_change(self, node: str, present: bool, after: float, timeout: float) -> float:
        """Wait until node's monitor recorded the VIP appearing/vanishing after `after`."""
        return wait_for(lambda: self.first_change(node, present, after), timeout,
                        f"VIP {'on' if present else 'off'} {node} after {after:.3f}")

    def holders_now(self) -> list[str]:
        return self.cluster.holders()

    def dual_ms(self, exclude: Exclude = None, start: float = -math.inf,
                end: float = math.inf) -> float:
        return self.timeline().dual_holder_ms(exclude, start, end)

    def assert_no_dual(self, exclude: Exclude = None, what: str = "") -> None:
        tl = self.timeline()
        dual = tl.dual_intervals(exclude)
        ms = 1000.0 * sum(b - a for a, b in dual)
        figure(f"dual_holder{'_' + what if what else ''}", ms)
        assert not dual, (f"two reachable nodes held the VIP for {ms:.1f} ms: "
                          f"{[(round(a, 3), round(b, 3)) for a, b in dual]}; "
                          f"transitions: {self.transitions()}")

    def transitions(self) -> list[tuple[float, str, bool]]:
        """Every monitor transition (rounded), for assertion messages."""
        return [(round(t, 3), n, p) for t, n, p in self.timeline().merged()]

    def mono(self, event: dict[str, Any]) -> float:
        """The monotonic time of a daemon decision (its ISO wall-clock stamp, ms precision)."""
        return datetime.fromisoformat(str(event["time"])).timestamp() - self.wall_offset

    def events(self, node: str, reason: str | None = None,
               after: float = -math.inf) -> list[dict[str, Any]]:
        """node's decisions (optionally one reason), made after monotonic time `after`
        (with 5 ms slack for the ms rounding of the stamps)."""
        return [e for e in self.cluster.event_log(node)
                if (reason is None or e["reason"] == reason) and self.mono(e) > after - 0.005]

    def wait_event(self, node: str, reason: str, after: float, timeout: float) -> dict[str, Any]:
        return wait_for(lambda: next(iter(self.events(node, reason, after)), None), timeout,
                        f"a {reason!r} decision on {node}")

    def term(self, node: str) -> int:
        return int(self.cluster.status(node)["term"])

    def terms(self, nodes: Sequence[str] | None = None) -> dict[str, int]:
        return {n: self.term(n) for n in (nodes or self.nodes)}

    def settle(self, leader: str, timeout: float = 10.0, nodes: Sequence[str] = ()) -> None:
        """Wait until every (given) node's daemon follows `leader` and the leader has quorum."""
        for n in nodes or [x for x in self.nodes if x in self.cluster.procs
                           and self.cluster.procs[x].alive()]:
            self.cluster.wait_status(
                n, lambda s: s["leader"] == leader and s["vip_holder"] == leader
                and bool(s["quorum"]), timeout)

    def probe(self, duration: float, interval: float = 0.01) -> LabProcess:
        return probe_mod.start(self.lab, VIP, duration=duration, interval=interval)

    def probe_result(self, proc: LabProcess, timeout: float = 30.0) -> ProbeRun:
        """Wait for the prober to finish (stopping it if it overruns) and load its records."""
        if proc.wait(timeout) is None:
            self.lab.stop(proc)
        assert proc.data is not None and proc.data.exists(), proc.stderr.read_text()
        return probe_mod.load(proc.data)


@contextlib.contextmanager
def running_cluster(nodes: int | Sequence[str] = 3, options: ClusterOptions | None = None,
                    *, echo: bool = True, monitor_nodes: Sequence[str] | None = None,
                    ready_timeout: float = 30.0) -> Iterator[Rig]:
    """A lab with echo + VIP monitors + daemons on every node and one VIP holder; cleaned up
    (processes killed by PID, namespaces deleted) whatever happens in the body."""
    with Lab(nodes) as lab:
        cluster = HaCluster(lab, options)
        if echo:
            echo_mod.start(lab)
        monitor_mod.start(lab, VIP, nodes=monitor_nodes)
        t0 = time.monotonic()
        cluster.start_all(timeout=ready_timeout)
        holder, t1 = cluster.wait_for_holder(timeout=ready_timeout)
        figure("startup_to_first_holder", (t1 - t0) * 1000)
        rig = Rig(lab, cluster, holder)
        rig.settle(holder, timeout=ready_timeout)
        yield rig
