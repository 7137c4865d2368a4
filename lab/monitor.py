"""Who holds the VIP: a per-node watcher and the analysis of the merged timelines.

    python -m lab.monitor --address 10.213.0.100 --interval 0.01 --node node1 \
        --out node1.jsonl

Run inside ONE node namespace; it reports whether that namespace has the address configured.
It talks rtnetlink directly: a RTM_GETADDR dump costs ~15 us, against ~0.5 ms for pyroute2's
IPRoute.get_addr() and ~1.5 ms for `ip -o addr`, which would eat a 10 ms poll budget. Besides
polling every interval it subscribes to address events, so a change is normally seen within
microseconds and the poll is only the safety net (a lost event, ENOBUFS).

Output (JSON lines, flushed as written so a killed monitor still leaves its data): a "start"
line with the initial state, one "change" line per transition (t = when detected, prev = the
poll before, so the change happened in (prev, t]), an "alive" line every second, and an "end"
line with poll statistics. All times are time.monotonic(), shared by every namespace.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import itertools
import json
import math
import select
import signal
import socket
import struct
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.netns import Lab, LabError, LabProcess

MAX_DURATION = 24 * 3600.0
_NLMSG_ERROR, _NLMSG_DONE, _RTM_NEWADDR, _RTM_GETADDR = 2, 3, 20, 22
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x10, 0x100
_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")


class AddressWatcher:
    """Answers "is this address configured in my namespace?" with one rtnetlink dump."""

    def __init__(self, address: str) -> None:
        ip = ipaddress.ip_address(address)
        self.family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        self.packed = ip.packed
        self._seq = 0
        self.dump_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.dump_sock.bind((0, 0))
        groups = _RTMGRP_IPV4_IFADDR if ip.version == 4 else _RTMGRP_IPV6_IFADDR
        self.event_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.event_sock.bind((0, groups))
        self.event_sock.setblocking(False)

    def close(self) -> None:
        self.dump_sock.close()
        self.event_sock.close()

    def present(self) -> bool:
        self._seq += 1
        self.dump_sock.send(_NLMSGHDR.pack(24, _RTM_GETADDR, _NLM_F_REQUEST_DUMP, self._seq, 0)
                            + struct.pack("=BBBBI", self.family, 0, 0, 0, 0))
        found = False
        while True:
            data = self.dump_sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    raise OSError("malformed netlink message")
                if seq == self._seq:
                    if mtype == _NLMSG_DONE:
                        return found
                    if mtype == _NLMSG_ERROR:
                        raise OSError("netlink dump failed")
                    if mtype == _RTM_NEWADDR and self._matches(data, off + 24, off + length):
                        found = True
                off += (length + 3) & ~3

    def _matches(self, data: bytes, pos: int, end: int) -> bool:
        # IFA_LOCAL is the host's own address; IFA_ADDRESS is the peer on point-to-point
        # links and equal to it otherwise (IPv6 only sends IFA_ADDRESS).
        local = address = None
        while pos + _RTATTR.size <= end:
            rlen, rtype = _RTATTR.unpack_from(data, pos)
            if rlen < _RTATTR.size:
                break
            if rtype == _IFA_LOCAL:
                local = data[pos + 4:pos + rlen]
            elif rtype == _IFA_ADDRESS:
                address = data[pos + 4:pos + rlen]
            pos += (rlen + 3) & ~3
        return (local if local is not None else address) == self.packed

    def drain_events(self) -> int:
        n = 0
        while True:
            try:
                self.event_sock.recv(1 << 16)
                n += 1
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:  # ENOBUFS: events were lost; the dump that follows covers it
                n += 1


def watch(address: str, node: str, interval: float, duration: float, out: IO[str]) -> None:
    if not 0 < duration <= MAX_DURATION or interval <= 0:
        raise ValueError("need 0 < duration <= 86400 and interval > 0")
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def emit(**rec: Any) -> None:
        out.write(json.dumps(rec) + "\n")
        out.flush()

    w = AddressWatcher(address)
    polls, events, poll_cost, max_cost, max_gap = 0, 0, 0.0, 0.0, 0.0
    t = time.monotonic()
    state = w.present()
    emit(type="start", t=t, node=node, address=address, interval=interval, present=state)
    last = t
    next_poll = t + interval
    next_alive = t + 1.0
    deadline = t + duration
    while not stop and (now := time.monotonic()) < deadline:
        ready, _, _ = select.select([w.event_sock], [], [], max(0.0, next_poll - now))
        if ready:
            events += w.drain_events()
        t = time.monotonic()
        if not ready and t < next_poll:
            continue  # woken early by a signal
        state_now = w.present()
        cost = time.monotonic() - t
        polls += 1
        poll_cost += cost
        max_cost = max(max_cost, cost)
        max_gap = max(max_gap, t - last)
        if state_now != state:
            emit(type="change", t=t, prev=last, present=state_now, by="event" if ready else "poll")
            state = state_now
        last = t
        if t >= next_poll:
            # Absolute schedule; after a stall, resume from now instead of bursting.
            next_poll += interval
            if next_poll <= t:
                next_poll = t + interval
        if t >= next_alive:
            emit(type="alive", t=t, present=state)
            next_alive = t + 1.0
    w.close()
    emit(type="end", t=time.monotonic(), present=state, polls=polls, events=events,
         poll_mean_us=1e6 * poll_cost / max(polls, 1), poll_max_us=1e6 * max_cost,
         max_gap_ms=1e3 * max_gap)


# The monitors start() ran, per lab and address, for timeline(); forgotten with the lab.
_started: weakref.WeakKeyDictionary[Lab, dict[str, dict[str, LabProcess]]] = (
    weakref.WeakKeyDictionary())


def start(lab: Lab, address: str, interval: float = 0.01,
          nodes: Sequence[str] | None = None) -> dict[str, LabProcess]:
    """One monitor per node (default: all), each in its namespace; returns once all run.
    timeline(lab, address) merges the records of every monitor started for address."""
    procs: dict[str, LabProcess] = {}
    for n in nodes if nodes is not None else lab.nodes:
        data = lab.workdir / f"monitor-{n}-{address.replace(':', '_')}.jsonl"
        procs[n] = p = lab.spawn_python(n, __name__, [
            "--address", address, "--interval", str(interval), "--node", n, "--out", str(data)])
        p.data = data
    for p in procs.values():
        assert p.data is not None
        lab.wait_for_output(p, '"start"', path=p.data)
    _started.setdefault(lab, {}).setdefault(address, {}).update(procs)
    return procs


def timeline(lab: Lab, address: str | None = None) -> HolderTimeline:
    """The merged timeline of address's monitors in lab (also while they still run); address
    may be left out when only one address is monitored."""
    monitored = _started.get(lab, {})
    if address is None and len(monitored) != 1:
        raise LabError(f"say which address; monitored: {sorted(monitored)}")
    address = address or next(iter(monitored))
    if address not in monitored:
        raise LabError(f"no monitor was started for {address}; monitored: {sorted(monitored)}")
    return merge(monitored[address])


def merge(monitors: Mapping[str, LabProcess]) -> HolderTimeline:
    """The timeline of the monitors started by start(), also while they still run."""
    now = time.monotonic()
    return HolderTimeline({n: load_timeline(p.data, until=now if p.alive() else None)
                           for n, p in monitors.items() if p.data is not None})


# --- analysis ---------------------------------------------------------------------------------

Interval = tuple[float, float]
# Leave out a node's holding: per node, intervals to ignore (math.inf allowed), or a callback
# (node, t) -> True to ignore. A callback is sampled at <= 1 ms resolution.
Exclude = Mapping[str, Iterable[Interval]] | Callable[[str, float], bool] | None


@dataclass(frozen=True)
class NodeTimeline:
    node: str
    start: float  # when the monitor began to observe
    end: float  # last moment observed (its end, the given `until`, or its last record)
    changes: tuple[tuple[float, bool], ...]  # (t, present), the first one at `start`
    stats: Mapping[str, Any] | None = None  # the monitor's "end" record

    def held(self) -> list[Interval]:
        """The intervals during which this node had the address."""
        spans: list[Interval] = []
        since: float | None = None
        for t, present in self.changes:
            if present and since is None:
                since = t
            elif not present and since is not None:
                spans.append((since, t))
                since = None
        if since is not None and self.end > since:
            spans.append((since, self.end))
        return spans


def load_timeline(path: str | Path, until: float | None = None) -> NodeTimeline:
    """Read a monitor's file. If it has no "end" line the monitor is running or was killed:
    the last state is taken to last until `until` (default: its last record)."""
    node, start, end, stats = "?", math.nan, None, None
    changes: list[tuple[float, bool]] = []
    last = math.nan
    for line in Path(path).read_text().splitlines():
        if not line.endswith("}"):
            continue  # a line being written right now
        d = json.loads(line)
        last = d["t"]
        if d["type"] == "start":
            node, start = d["node"], d["t"]
            changes.append((d["t"], d["present"]))
        elif d["type"] == "change":
            changes.append((d["t"], d["present"]))
        elif d["type"] == "end":
            end, stats = d["t"], d
    if math.isnan(start):
        raise ValueError(f"{path}: no start record")
    return NodeTimeline(node, start, end if end is not None else (until or last),
                        tuple(changes), stats)


def _subtract(spans: list[Interval], cut: Iterable[Interval]) -> list[Interval]:
    for c0, c1 in sorted(cut):
        nxt: list[Interval] = []
        for a, b in spans:
            if c1 <= a or c0 >= b:
                nxt.append((a, b))
                continue
            if a < c0:
                nxt.append((a, c0))
            if c1 < b:
                nxt.append((c1, b))
        spans = nxt
    return spans


def _holding(spans: list[Interval], t: float) -> bool:
    i = bisect.bisect_right(spans, (t, math.inf)) - 1
    return i >= 0 and spans[i][0] <= t < spans[i][1]


class HolderTimeline(Mapping[str, NodeTimeline]):
    """All nodes' monitor timelines, keyed by node."""

    def __init__(self, timelines: Mapping[str, NodeTimeline]) -> None:
        self._tl = dict(timelines)

    def __getitem__(self, node: str) -> NodeTimeline:
        return self._tl[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tl)

    def __len__(self) -> int:
        return len(self._tl)

    def merged(self) -> list[tuple[float, str, bool]]:
        """Every node's transitions, as (t, node, present), in time order."""
        return sorted((t, n, p) for n, tl in self._tl.items() for t, p in tl.changes)

    def holders_at(self, t: float) -> list[str]:
        return sorted(n for n, tl in self._tl.items() if _holding(tl.held(), t))

    def holder_at(self, t: float) -> str | None:
        """The single holder at t, None if nobody; ValueError if several hold it."""
        h = self.holders_at(t)
        if len(h) > 1:
            raise ValueError(f"several holders at {t}: {h}")
        return h[0] if h else None

    def dual_intervals(self, exclude: Exclude = None, start: float = -math.inf,
                       end: float = math.inf) -> list[Interval]:
        """The (merged) intervals during which two or more nodes held the address."""
        held = {n: [(max(a, start), min(b, end)) for a, b in tl.held() if b > start and a < end]
                for n, tl in self._tl.items()}
        if isinstance(exclude, Mapping):
            held = {n: _subtract(s, exclude.get(n, ())) for n, s in held.items()}
        cuts = sorted({x for s in held.values() for iv in s for x in iv})
        out: list[Interval] = []
        for a, b in itertools.pairwise(cuts):
            # Between consecutive boundaries the set of holders is constant.
            mid = (a + b) / 2
            holders = [n for n, s in held.items() if _holding(s, mid)]
            if len(holders) < 2:
                continue
            pieces = [(a, b)]
            if callable(exclude):
                k = max(1, math.ceil((b - a) / 0.001))
                pieces = [(a + (b - a) * i / k, a + (b - a) * (i + 1) / k) for i in range(k)]
                pieces = [(x, y) for x, y in pieces
                          if sum(not exclude(n, (x + y) / 2) for n in holders) >= 2]
            for x, y in pieces:
                if out and out[-1][1] >= x:
                    out[-1] = (out[-1][0], y)
                else:
                    out.append((x, y))
        return out

    def dual_holder_ms(self, exclude: Exclude = None, start: float = -math.inf,
                       end: float = math.inf) -> float:
        return 1000.0 * sum(b - a for a, b in self.dual_intervals(exclude, start, end))


def dual_holder_ms(timelines: Mapping[str, NodeTimeline], exclude: Exclude = None,
                   start: float = -math.inf, end: float = math.inf) -> float:
    """Total time, in ms, during which two or more nodes held the address."""
    return HolderTimeline(timelines).dual_holder_ms(exclude, start, end)


def holder_at(timelines: Mapping[str, NodeTimeline], t: float) -> str | None:
    return HolderTimeline(timelines).holder_at(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="report whether this namespace holds an address")
    ap.add_argument("--address", required=True)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--node", default=socket.gethostname())
    ap.add_argument("--duration", type=float, default=3600.0, help="exit after this many s")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.out, "a") as out:
        watch(a.address, a.node, a.interval, a.duration, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
