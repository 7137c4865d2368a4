"""A throwaway L2 cluster built from network namespaces.

One namespace holds a bridge; every node and the client get their own namespace joined to it
by a veth pair (``eth0`` inside, a port named after the node on the bridge; with
``two_bridges`` each node also has ``eth1`` on a second bridge for heartbeats). Nothing is ever
connected to the root namespace and no namespace has a default route, so whatever runs in the
lab cannot reach a real network. Faults are injected on the bridge with nftables (silent
partitions, loss) or by taking links down, and processes are started generically with
``ip netns exec`` so the same lab drives hafailover, keepalived or anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
CLIENT = "client"
CLIENT_ADDRESS = "10.213.0.50"
DEFAULT_PREFIX = "hf"
_MAX_NODES = 39  # node addresses .11-.49 stay below the client's .50
_NODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
# Names are f"{prefix}{pid}-..." and cleanup_stale() parses the pid back out, which a prefix
# ending in a digit would make ambiguous.
_PREFIX_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9]{0,14}[A-Za-z])?$")
_NFT = "bridge hflab"
_PKG_ROOT = str(Path(__file__).resolve().parents[1])
_CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """The lab could not be built or a fault could not be applied."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run in a namespace failed; unlike the base class, str() shows its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


@dataclass
class LabProcess:
    """A process started in a namespace. ``pid`` is the program's own (ip netns exec execs)."""

    node: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float
    data: Path | None = None  # the result file of a monitor or probe

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after timeout seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.popen.wait(timeout)
        return None

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""


# --- process-wide registry: Ctrl-C, SIGTERM and interpreter exit still clean up ---------------

_open_labs: list[Lab] = []
_saved_handlers: dict[int, Any] = {}  # signal -> the handler we replaced
_defer_depth = 0
_pending: list[int] = []
_counter = 0


def _close_all() -> None:
    for lab in list(_open_labs):
        lab.close()


atexit.register(_close_all)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() only works there; atexit still covers us
    for sig in (signal.SIGINT, signal.SIGTERM):
        prev = signal.getsignal(sig)
        if sig not in _saved_handlers and prev not in (signal.SIG_IGN, None):
            _saved_handlers[sig] = prev
            signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig, prev in list(_saved_handlers.items()):
            if signal.getsignal(sig) is _on_signal:
                signal.signal(sig, prev)
            del _saved_handlers[sig]


def _on_signal(signum: int, _frame: object) -> None:
    if _defer_depth:
        # Interrupting close() or spawn() half-way would leak namespaces or processes; the
        # signal is re-raised as soon as that critical section ends.
        _pending.append(signum)
        return
    _close_all()
    _restore_handlers()
    os.kill(os.getpid(), signum)  # now the previous handler: KeyboardInterrupt, or death


@contextlib.contextmanager
def _deferring_signals() -> Iterator[None]:
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0 and _pending:
            sig = _pending[0]
            _pending.clear()
            os.kill(os.getpid(), sig)


def _cmd(argv: Sequence[str], *, input: str | None = None, timeout: float = 10.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabCommandError(r.returncode, list(argv), r.stdout, r.stderr)
    return r


def _netns_names() -> list[str]:
    return [ln.split()[0] for ln in _cmd(["ip", "netns", "list"], check=False).stdout.splitlines()
            if ln.strip()]


def _netns_pids(ns: str) -> list[int]:
    out = _cmd(["ip", "netns", "pids", ns], check=False).stdout
    return [int(x) for x in out.split() if x.isdigit() and int(x) != os.getpid()]


def _sweep_netns(names: Sequence[str], timeout: float) -> None:
    """Stop whatever still runs inside the namespaces (daemons that forked away, children).

    `ip netns pids` lists exactly the processes in that namespace, so this can only hit
    processes of the lab, never anything else on the machine.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for ns in names for p in _netns_pids(ns)]
        if not pids:
            return
        for pid, s in ((p, s) for p in pids for s in (signal.SIGCONT, sig)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, s)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_netns_pids(ns) for ns in names):
            time.sleep(0.02)


def _delete_netns(names: Sequence[str]) -> None:
    if names:  # -force: keep going past a namespace that is already gone
        _cmd(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
             check=False)


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces left by earlier lab runs whose process is dead; returns their names.

    Only names f"{prefix}{pid}-..." or f"{prefix}{pid}_{k}-..." whose pid is no longer alive
    are touched (after stopping what still runs in them); anything else is left alone.
    """
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"bad lab prefix {prefix!r}")
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)(?:_\d+)?-")
    stale = [n for n in _netns_names()
             if (m := pattern.match(n)) is not None and not os.path.exists(f"/proc/{m.group(1)}")]
    _sweep_netns(stale, timeout=1.0)
    _delete_netns(stale)
    return stale


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a short-lived thread that has joined namespace ns: setns(CLONE_NEWNET) only
    affects that thread, so this process never leaves its namespace (sockets keep theirs)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=target, name=f"in-netns-{ns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


class Lab:
    """N nodes (node1..nodeN, or the names given) + a client on one bridge; a context manager.

    Node i is 10.213.0.(10+i)/24 on eth0 in namespace ns(node), the client 10.213.0.50.
    With two_bridges=True every node also has eth1 on a second bridge (br1, nodes only),
    10.213.1.(10+i)/24 (`hb_address`): heartbeats on eth1, VIPs and the client on eth0, so
    one of a node's links can fail while the other works (`set_carrier`).
    Fault methods return the monotonic time they took effect (also logged in self.events).
    """

    def __init__(self, nodes: int | Sequence[str] = 3, prefix: str | None = None, *,
                 workdir: str | Path | None = None, term_timeout: float = 2.0,
                 two_bridges: bool = False) -> None:
        global _counter
        names = [f"node{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else [*nodes]
        if not 1 <= len(names) <= _MAX_NODES or len(set(names)) != len(names) or any(
                not _NODE_RE.match(n) or n in (CLIENT, "br") for n in names):
            raise ValueError(f"need 1..{_MAX_NODES} distinct, simple node names: {names!r}")
        prefix = DEFAULT_PREFIX if prefix is None else prefix
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad lab prefix {prefix!r} (letters/digits, ending in a letter)")
        self.name = f"{prefix}{os.getpid()}" + (f"_{_counter}" if _counter else "")
        _counter += 1
        self.nodes: list[str] = names
        self.bridge_ns = f"{self.name}-br"
        self.term_timeout = term_timeout
        self._ns = {e: f"{self.name}-{e}" for e in [*names, CLIENT]}
        self._addr = {n: f"10.213.0.{10 + i}" for i, n in enumerate(names, 1)}
        self._addr[CLIENT] = CLIENT_ADDRESS
        # Port names must fit IFNAMSIZ (15); long node names fall back to their index.
        self._port = {n: f"p-{n}" if len(n) <= 13 else f"p{i}" for i, n in enumerate(names, 1)}
        self._port[CLIENT] = "p-client"
        # eth1's bridge-side ports (two_bridges only): "q" instead of "p".
        self._port1 = {n: "q" + p[1:] for n, p in self._port.items() if n != CLIENT}
        self.two_bridges = two_bridges
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events: list[tuple[float, str]] = []  # (monotonic time, what the lab did)
        self._procs: list[LabProcess] = []
        self._partitioned: set[str] = set()
        self._groups: list[list[str]] = []
        self._loss: dict[str, int] = {}  # node -> drop probability in per mille
        self._netem: bool | None = None
        self._closed = self._closing = False
        _open_labs.append(self)
        _install_handlers()
        try:
            with _deferring_signals():
                self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        for ns in self.namespaces:
            _cmd(["ip", "netns", "add", ns])
        br = ["link set lo up",
              "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0"]
        for e, ns in self._ns.items():
            br += [f"link add {self._port[e]} type veth peer name eth0 netns {ns}",
                   f"link set {self._port[e]} master br0 up"]
        if self.two_bridges:
            br.append("link add br1 type bridge stp_state 0 forward_delay 0 mcast_snooping 0")
            br += [f"link add {self._port1[n]} type veth peer name eth1 netns {self._ns[n]}\n"
                   f"link set {self._port1[n]} master br1 up" for n in self.nodes]
            br.append("link set br1 up")
        br.append("link set br0 up")
        _cmd(["ip", "-n", self.bridge_ns, "-batch", "-"], input="\n".join(br) + "\n")
        for e, ns in self._ns.items():
            # Fixed MACs make captures readable: the last byte is the address's last octet.
            mac = f"02:00:0a:d5:00:{int(self._addr[e].rsplit('.', 1)[1]):02x}"
            _cmd(["ip", "-n", ns, "-batch", "-"], input=(
                f"link set lo up\nlink set eth0 address {mac} up\n"
                f"addr add {self._addr[e]}/24 dev eth0\n"))
            if self.two_bridges and e != CLIENT:
                _cmd(["ip", "-n", ns, "-batch", "-"], input=(
                    f"link set eth1 address {mac[:-5]}01:{mac[-2:]} up\n"
                    f"addr add {self.hb_address(e)}/24 dev eth1\n"))
        self._apply_nft()
        self._event("built")

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *self._ns.values()]

    def ns(self, node: str) -> str:
        """The namespace of a node (or of "client")."""
        if node not in self._ns:
            raise KeyError(f"no such lab node {node!r}")
        return self._ns[node]

    def _known(self, node: str) -> str:
        self.ns(node)
        return node

    def address(self, node: str) -> str:
        return self._addr[self._known(node)]

    def hb_address(self, node: str) -> str:
        """Where node's peers reach it: its eth1 address with two_bridges, else address()."""
        a = self.address(node)
        return a.replace("10.213.0.", "10.213.1.", 1) if self.two_bridges else a

    def bridge_port(self, node: str) -> str:
        """The name of node's veth peer in bridge_ns."""
        return self._port[self._known(node)]

    def _event(self, what: str) -> float:
        t = time.monotonic()
        self.events.append((t, what))
        return t

    def run(self, node: str, argv: Sequence[str], check: bool = True,
            timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run argv to completion in node's namespace, output captured as text."""
        return _cmd(["ip", "netns", "exec", self.ns(node), *argv], check=check, timeout=timeout)

    def ip(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n NS args...`: cheaper than run() since nothing is exec'd in the namespace."""
        return _cmd(["ip", "-n", self.ns(node), *args], check=check)

    def spawn(self, node: str, argv: Sequence[str], *, stdout: str | Path | None = None,
              stderr: str | Path | None = None, env: Mapping[str, str] | None = None,
              name: str | None = None) -> LabProcess:
        """Start argv in node's namespace; env is added to our environment. Output goes to
        files (default: in workdir). The process leads its own session, so a Ctrl-C at the
        terminal reaches only us (and we clean up) and freeze/kill reach its helpers too."""
        if self._closed or self._closing:
            raise LabError("lab is closed")
        tag = f"{node}-{name or Path(argv[0]).name}-{len(self._procs)}"
        out = Path(stdout or self.workdir / f"{tag}.out")
        err = Path(stderr or self.workdir / f"{tag}.err")
        with _deferring_signals(), open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(["ip", "netns", "exec", self.ns(node), *argv],
                                     stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
            proc = LabProcess(node, [*argv], popen, out, err, time.monotonic())
            self._procs.append(proc)
        self._event(f"spawn {node} pid={proc.pid} {' '.join(argv)[:80]}")
        return proc

    def spawn_python(self, node: str, module: str, args: Sequence[str] = (), *,
                     env: Mapping[str, str] | None = None) -> LabProcess:
        """spawn() `python -m module args` with this interpreter and this checkout importable."""
        path = os.pathsep.join(filter(None, [_PKG_ROOT, os.environ.get("PYTHONPATH")]))
        return self.spawn(node, [sys.executable, "-m", module, *args],
                          env={"PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(env or {})},
                          name=module.rsplit(".", 1)[-1])

    def wait_for_output(self, proc: LabProcess, needle: str, timeout: float = 5.0,
                        path: Path | None = None) -> None:
        """Wait until needle appears in proc's stdout (or path); fail early if proc dies."""
        path = path or proc.stdout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.alive():
            if path.exists() and needle in path.read_text(errors="replace"):
                return
            time.sleep(0.005)
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        raise LabError(f"{proc.argv[:4]} on {proc.node} did not write {needle!r} (exit="
                       f"{proc.returncode}): {proc.stderr.read_text(errors='replace')[-2000:]}")

    def _signal(self, proc: LabProcess, sig: int) -> None:
        # The whole group (a daemon's helper children too), but only while the leader is
        # unreaped: until then its pid, and so the group id, cannot belong to anyone else.
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def freeze(self, proc: LabProcess) -> float:
        """SIGSTOP the process (group): a hung host whose kernel still answers pings."""
        self._signal(proc, signal.SIGSTOP)
        return self._event(f"freeze {proc.node} pid={proc.pid}")

    def thaw(self, proc: LabProcess) -> float:
        # Stamped before the signal: nothing the process does in response can come earlier,
        # while a stamp taken after killpg returns can land after the reaction (the caller may
        # wait for the CPU while the thawed daemon already acts), which an `after=` filter
        # would then drop.
        t = self._event(f"thaw {proc.node} pid={proc.pid}")
        self._signal(proc, signal.SIGCONT)
        return t

    def kill(self, proc: LabProcess, sig: int = signal.SIGKILL) -> float:
        """Signal the process (group); SIGKILL by default: the daemon crashes.

        The time is stamped before the signal, as in `thaw`."""
        t = self._event(f"kill {proc.node} pid={proc.pid} sig={sig}")
        self._signal(proc, sig)
        return t

    def stop(self, proc: LabProcess, timeout: float = 3.0) -> int | None:
        """SIGCONT+SIGTERM, wait up to timeout, then SIGKILL; returns the exit code."""
        self._stop([proc], timeout)
        return proc.returncode

    def _stop(self, procs: Sequence[LabProcess], timeout: float) -> None:
        live = [p for p in procs if p.alive()]
        for p, sig in ((p, s) for p in live for s in (signal.SIGCONT, signal.SIGTERM)):
            self._signal(p, sig)  # SIGCONT first: a frozen process never acts on SIGTERM
        deadline = time.monotonic() + timeout
        for p in live:
            p.wait(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.alive():
                self._signal(p, signal.SIGKILL)
                p.wait(2.0)

    def _links(self, node: str) -> list[tuple[str, str]]:
        """(interface in node, its peer in bridge_ns) for each of node's links."""
        one = [("eth0", self.bridge_port(node))]
        return one + ([("eth1", self._port1[node])] if node in self._port1 and
                      self.two_bridges else [])

    def link_down(self, node: str) -> float:
        """Both ends of each of node's veths down: to its peers the host is simply gone."""
        for dev, port in self._links(node):
            self.ip(node, "link", "set", dev, "down")
            _cmd(["ip", "-n", self.bridge_ns, "link", "set", port, "down"])
        return self._event(f"link_down {node}")

    def link_up(self, node: str) -> float:
        for dev, port in self._links(node):
            _cmd(["ip", "-n", self.bridge_ns, "link", "set", port, "up"])
            self.ip(node, "link", "set", dev, "up")
        return self._event(f"link_up {node}")

    def set_carrier(self, node: str, up: bool, dev: str = "eth0") -> float:
        """Set only the bridge-side end of node's `dev` veth down (or up): node's `dev` stays
        administratively up but loses carrier (NO-CARRIER), like a pulled cable. The time is
        stamped before the `ip` command: the node may react before that command returns."""
        port = dict(self._links(node))[dev]
        t = self._event(f"carrier {'up' if up else 'down'} {node} {dev}")
        _cmd(["ip", "-n", self.bridge_ns, "link", "set", port, "up" if up else "down"])
        return t

    def partition(self, node: str) -> float:
        """Silently cut node off: the bridge drops all its frames, its carrier stays up."""
        self._partitioned.add(self._known(node))
        return self._apply_nft(f"partition {node}")

    def heal(self, node: str | None = None) -> float:
        """Undo partition(node); with no argument, all partitions and partition_groups()."""
        if node is None:
            self._partitioned.clear()
            self._groups = []
        self._partitioned.discard(node or "")
        return self._apply_nft(f"heal {node or 'all'}")

    def partition_groups(self, groups: Sequence[Sequence[str]]) -> float:
        """Drop traffic between the groups (replacing earlier groups). Nodes in no group, and
        the client unless listed, still reach everyone."""
        flat = [self._known(n) for g in groups for n in g]
        if len(flat) != len(set(flat)):
            raise ValueError("a node may appear in only one group")
        self._groups = [[*g] for g in groups if g]
        return self._apply_nft(f"partition_groups {self._groups}")

    def loss(self, percent: float, nodes: Sequence[str] | None = None) -> float:
        """Drop each frame the nodes (default: all nodes, not the client) send with probability
        percent/100, like netem loss on their egress: a round trip between the client and a
        lossy node loses ~percent, one between two lossy nodes more."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        for n in nodes if nodes is not None else self.nodes:
            self._loss[self._known(n)] = round(percent * 10)
        return self._apply_nft(f"loss {percent}% {nodes or 'all nodes'}")

    def clear_loss(self) -> float:
        self._loss.clear()
        return self._apply_nft("clear_loss")

    def _apply_nft(self, what: str = "") -> float:
        # The whole chain is rewritten in one nft transaction: no frame ever sees a
        # half-applied fault set, and there are no rule handles to track.
        def ports(nodes: Sequence[str] | set[str]) -> str:
            names = [p for n in sorted(nodes) for _, p in self._links(n)]
            return "{ " + ", ".join(f'"{p}"' for p in names) + " }"

        rules = [f"table {_NFT} {{\n chain forward {{\n"
                 "  type filter hook forward priority 0; policy accept;\n }\n}",
                 f"flush chain {_NFT} forward"]
        if self._partitioned:
            rules += [f"add rule {_NFT} forward {d}ifname {ports(self._partitioned)} drop"
                      for d in ("i", "o")]
        rules += [f"add rule {_NFT} forward iifname {ports(a)} oifname {ports(b)} drop"
                  for a in self._groups for b in self._groups if a is not b]
        for permille in sorted(set(self._loss.values()) - {0}):
            lossy = {n for n, p in self._loss.items() if p == permille}
            rules.append(f"add rule {_NFT} forward iifname {ports(lossy)} "
                         f"numgen random mod 1000 < {permille} drop")
        _cmd(["ip", "netns", "exec", self.bridge_ns, "nft", "-f", "-"],
             input="\n".join(rules) + "\n")
        return self._event(what or "nft")

    def has_netem(self) -> bool:
        """Whether the kernel has sch_netem (which delay() needs)."""
        if self._netem is None:
            tc = ["tc", "-n", self.ns(CLIENT), "qdisc"]
            self._netem = _cmd([*tc, "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                               check=False).returncode == 0
            _cmd([*tc, "del", "dev", "lo", "root"], check=False)
        return self._netem

    def delay(self, ms: float, nodes: Sequence[str] | None = None, jitter_ms: float = 0.0) -> float:
        """Delay every frame the nodes send by ms (netem on their eth0). Needs sch_netem."""
        if not self.has_netem():
            raise LabError("delay needs the sch_netem qdisc, which this kernel does not have "
                           "(tc: 'Specified qdisc kind is unknown'); nftables cannot delay")
        for n in nodes if nodes is not None else self.nodes:
            _cmd(["tc", "-n", self.ns(n), "qdisc", "replace", "dev", "eth0", "root", "netem",
                  "delay", f"{ms}ms", *([f"{jitter_ms}ms"] if jitter_ms else [])])
        return self._event(f"delay {ms}ms {nodes or 'all nodes'}")

    def clear_delay(self) -> float:
        for n in self.nodes if self._netem else []:
            _cmd(["tc", "-n", self.ns(n), "qdisc", "del", "dev", "eth0", "root"], check=False)
        return self._event("clear_delay")

    def vip_holders(self, address: str) -> list[str]:
        """Nodes that have address configured right now (a one-off `ip -j addr` per node)."""
        return [n for n in self.nodes
                if any(a.get("local") == address
                       for link in json.loads(self.ip(n, "-j", "addr").stdout or "[]")
                       for a in link.get("addr_info", []))]

    def garp(self, node: str, address: str, dev: str = "eth0") -> None:
        """Send one gratuitous ARP for address from node, as a failover daemon would."""
        raw = in_netns(self.ns(node), lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        with raw as s:
            s.bind((dev, 0x0806))
            mac: bytes = s.getsockname()[4]
            ip = socket.inet_aton(address)
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\0" * 6 + ip
            s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
        self._event(f"garp {node} {address}")

    def close(self) -> None:
        """Stop every process we started, delete the namespaces; idempotent and bounded."""
        if self._closed or self._closing:
            return
        self._closing = True
        with _deferring_signals():  # a Ctrl-C meanwhile is re-raised once all is gone
            try:
                self._stop(self._procs, self.term_timeout)
                _sweep_netns(self.namespaces, self.term_timeout)
            finally:
                _delete_netns([n for n in self.namespaces if n in set(_netns_names())])
                if self._own_workdir and not os.environ.get("HAFAILOVER_LAB_KEEP"):
                    shutil.rmtree(self.workdir, ignore_errors=True)
                self._closed = True
                if self in _open_labs:
                    _open_labs.remove(self)
                if not _open_labs:
                    _restore_handlers()
