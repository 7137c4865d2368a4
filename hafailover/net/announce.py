"""Telling the segment that a VIP moved here, and noticing when someone else claims it.

`RawAnnouncer` writes frames that were crafted once at start-up (by `hafailover.net.craft` in a
subprocess, so scapy never loads into the daemon) to AF_PACKET sockets opened at start-up. The
takeover path is therefore a handful of `send()` calls: no imports, no netlink, no allocation
worth mentioning.

`ConflictWatcher` reads ARP (packet socket) and neighbour advertisements (raw ICMPv6 socket)
and reports a VIP claimed by another MAC while we hold it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from hafailover.net.vip import IPAddress, Vip

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ICMP6_FILTER = 1  # linux/icmpv6.h; not exported by the socket module
ND_NEIGHBOR_ADVERT = 136
CRAFT_TIMEOUT = 30.0
_RECV_SIZE = 2048  # ARP and NA frames are < 100 bytes; anything longer is not ours to parse
_DRAIN_LIMIT = 10_000


class AnnounceError(Exception):
    """Frames could not be built, or sockets could not be opened; the message says why."""


# --------------------------------------------------------------------------------------------
# Building the frames (once, out of process)


def _craft_request(
    vips: Sequence[Vip], macs: Mapping[str, bytes], router: Mapping[str, bool] | None
) -> bytes:
    entries = []
    for vip in vips:
        mac = macs.get(vip.interface)
        if mac is None or len(mac) != 6:
            raise AnnounceError(f"no Ethernet address known for interface {vip.interface!r}")
        entries.append(
            {
                "address": str(vip.address),
                "interface": vip.interface,
                "mac": mac.hex(":"),
                "router": bool((router or {}).get(vip.interface, False)),
            }
        )
    return json.dumps(entries).encode()


def _parse_craft_reply(vips: Sequence[Vip], out: bytes) -> dict[Vip, list[bytes]]:
    try:
        reply: Any = json.loads(out)
        if not isinstance(reply, list) or len(reply) != len(vips):
            raise ValueError("wrong number of entries")
        frames: dict[Vip, list[bytes]] = {}
        for vip, entry in zip(vips, reply, strict=True):
            if entry["address"] != str(vip.address) or entry["interface"] != vip.interface:
                raise ValueError(f"entry for {entry['address']} where {vip.address} was asked")
            frames[vip] = [bytes.fromhex(h) for h in entry["frames"]]
            if not frames[vip]:
                raise ValueError(f"no frames for {vip}")
    except (ValueError, KeyError, TypeError) as e:
        raise AnnounceError(f"unexpected output from hafailover.net.craft: {e}") from None
    return frames


_CRAFT_ARGV = [sys.executable, "-m", "hafailover.net.craft"]


def build_frames(
    vips: Sequence[Vip],
    macs: Mapping[str, bytes],
    *,
    router: Mapping[str, bool] | None = None,
    timeout: float = CRAFT_TIMEOUT,
) -> dict[Vip, list[bytes]]:
    """Announcement frames per VIP (`macs`: interface -> MAC), crafted in one subprocess."""
    vips = list(dict.fromkeys(vips))
    request = _craft_request(vips, macs, router)
    try:
        done = subprocess.run(_CRAFT_ARGV, input=request, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AnnounceError(f"hafailover.net.craft did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        raise AnnounceError(f"hafailover.net.craft failed: {done.stderr.decode().strip()}")
    return _parse_craft_reply(vips, done.stdout)


async def build_frames_async(
    vips: Sequence[Vip],
    macs: Mapping[str, bytes],
    *,
    router: Mapping[str, bool] | None = None,
    timeout: float = CRAFT_TIMEOUT,
) -> dict[Vip, list[bytes]]:
    """`build_frames` without blocking the event loop while scapy loads (~0.4 s)."""
    vips = list(dict.fromkeys(vips))
    request = _craft_request(vips, macs, router)
    proc = await asyncio.create_subprocess_exec(
        *_CRAFT_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(request), timeout)
    except TimeoutError:
        raise AnnounceError(f"hafailover.net.craft did not finish within {timeout:g}s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: leave no child behind
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise AnnounceError(f"hafailover.net.craft failed: {err.decode().strip()}")
    return _parse_craft_reply(vips, out)


# --------------------------------------------------------------------------------------------
# Sending


class FrameSocket(Protocol):
    def send(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def open_packet_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket that can only send on `ifname`.

    Protocol 0: the kernel delivers nothing to it, so no receive queue can fill up.
    Non-blocking: a full device queue drops a frame instead of stalling the event loop.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, 0))
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise AnnounceError(f"cannot open a packet socket on {ifname!r}: {e.strerror}") from e
    return sock


def _ipv6_forwarding(ifname: str) -> bool:
    # /proc/sys/net follows the reading process's network namespace.
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


class Announcer(Protocol):
    """Port: gratuitous ARP / unsolicited NA for every VIP.

    start(): build frames, open sockets (once). announce(): one burst now, synchronously, the
    repeats scheduled. cancel(): nothing more goes out (repeats and refresh). set_holding():
    the periodic refresh runs only while holding. close(): cancel() and close the sockets.
    """

    async def start(self) -> None: ...

    def announce(self) -> None: ...

    def cancel(self) -> None: ...

    def set_holding(self, holding: bool) -> None: ...

    def close(self) -> None: ...


class RawAnnouncer:
    """Real Announcer: prebuilt frames written to AF_PACKET sockets.

    `count` bursts in all, `interval` seconds apart; with `refresh` > 0, one more burst every
    `refresh` seconds while holding (for switches and hosts that missed the takeover).
    `macs`, `frames` and `socket_factory` replace discovery, crafting and the packet sockets.
    `may_announce`, if given, is asked before every burst: a repeat or refresh that comes due
    while the holder cannot run (frozen, starved) fires first when it resumes, before anything
    can tell this announcer that the lease ran out; the question stops it (and cancels the
    rest) instead of claiming an address about to be released.
    """

    def __init__(
        self,
        vips: Sequence[Vip],
        count: int = 3,
        interval: float = 0.1,
        refresh: float = 0.0,
        *,
        macs: Mapping[str, bytes] | None = None,
        frames: Mapping[Vip, Sequence[bytes]] | None = None,
        socket_factory: Callable[[str], FrameSocket] | None = None,
        craft_timeout: float = CRAFT_TIMEOUT,
        may_announce: Callable[[], bool] | None = None,
    ) -> None:
        if not 1 <= count <= 100:
            raise ValueError("count must be between 1 and 100")
        if interval <= 0 or refresh < 0:
            raise ValueError("interval must be positive and refresh not negative")
        self._vips = list(dict.fromkeys(vips))
        self._count, self._interval, self._refresh = count, interval, refresh
        self._macs = dict(macs or {})
        self._frames = dict(frames) if frames is not None else None
        self._socket_factory = socket_factory
        self._craft_timeout = craft_timeout
        self._may_announce = may_announce
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: dict[str, FrameSocket] = {}
        self._burst: list[tuple[FrameSocket, bytes]] = []
        self._repeat: asyncio.TimerHandle | None = None
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._remaining = 0
        self._holding = False
        self.frames_sent = 0
        self.send_errors = 0

    @property
    def holding(self) -> bool:
        return self._holding

    @property
    def pending(self) -> bool:
        """Whether a repeat or refresh is scheduled."""
        return self._repeat is not None or self._refresh_handle is not None

    async def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        factory = self._socket_factory or open_packet_socket
        sockets: dict[str, FrameSocket] = {}
        try:
            for ifname in dict.fromkeys(v.interface for v in self._vips):
                sockets[ifname] = factory(ifname)
            frames: Mapping[Vip, Sequence[bytes]] | None = self._frames
            if frames is None:
                macs = dict(self._macs)
                for ifname, sock in sockets.items():
                    if ifname not in macs and isinstance(sock, socket.socket):
                        # A bound packet socket reports its device's hardware address.
                        macs[ifname] = sock.getsockname()[4]
                router = {ifname: _ipv6_forwarding(ifname) for ifname in sockets}
                frames = await build_frames_async(
                    self._vips, macs, router=router, timeout=self._craft_timeout
                )
            burst = [(sockets[v.interface], bytes(f)) for v in self._vips for f in frames[v]]
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        self._sockets, self._burst, self._loop = sockets, burst, loop

    def announce(self) -> None:
        if self._loop is None:
            raise AnnounceError("announce() before start()")
        self._cancel_repeats()
        self._send_burst()
        self._remaining = self._count - 1
        if self._remaining > 0:
            self._repeat = self._loop.call_later(self._interval, self._on_repeat)

    def _on_repeat(self) -> None:
        self._repeat = None
        self._send_burst()
        self._remaining -= 1
        if self._remaining > 0 and self._loop is not None:
            self._repeat = self._loop.call_later(self._interval, self._on_repeat)

    def _on_refresh(self) -> None:
        self._refresh_handle = None
        if not self._holding or self._loop is None:
            return
        self._send_burst()
        self._refresh_handle = self._loop.call_later(self._refresh, self._on_refresh)

    def _send_burst(self) -> None:
        if self._may_announce is not None and not self._may_announce():
            self.cancel()
            return
        error: OSError | None = None
        for sock, frame in self._burst:
            try:
                sock.send(frame)
                self.frames_sent += 1
            except OSError as e:  # interface down, queue full: the next burst may get through
                self.send_errors += 1
                error = e
        if error is not None:
            log.warning("announcement frame not sent: %s", error)

    def _cancel_repeats(self) -> None:
        if self._repeat is not None:
            self._repeat.cancel()
            self._repeat = None
        self._remaining = 0

    def cancel(self) -> None:
        # Announcing an address we no longer hold would pull its traffic away from the new
        # holder, so cancel() silences everything, the refresh included.
        self._cancel_repeats()
        self._holding = False
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None

    def set_holding(self, holding: bool) -> None:
        if not holding:
            self.cancel()
            return
        self._holding = True
        if self._refresh > 0 and self._refresh_handle is None and self._loop is not None:
            self._refresh_handle = self._loop.call_later(self._refresh, self._on_refresh)

    def close(self) -> None:
        self.cancel()
        for sock in self._sockets.values():
            sock.close()
        self._sockets, self._burst = {}, []


class FakeAnnouncer:
    """Announcer for tests: records calls, sends nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started = False
        self.holding = False
        self.announcements = 0
        self.closed = False

    async def start(self) -> None:
        self.calls.append("start")
        self.started = True

    def announce(self) -> None:
        if not self.started:
            raise AnnounceError("announce() before start()")
        self.calls.append("announce")
        self.announcements += 1

    def cancel(self) -> None:
        self.calls.append("cancel")
        self.holding = False

    def set_holding(self, holding: bool) -> None:
        self.calls.append(f"set_holding({holding})")
        self.holding = holding

    def close(self) -> None:
        self.calls.append("close")
        self.holding = False
        self.closed = True


# --------------------------------------------------------------------------------------------
# Conflict detection


def parse_arp_claim(frame: bytes) -> tuple[ipaddress.IPv4Address, bytes] | None:
    """(sender IP, sender MAC) of an Ethernet/IPv4 ARP request or reply, else None.

    ARP probes (sender IP 0.0.0.0, RFC 5227) ask about an address without claiming it.
    """
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4 or op not in (1, 2):
        return None
    spa = frame[28:32]
    if spa == b"\0\0\0\0":
        return None
    return ipaddress.IPv4Address(spa), bytes(frame[22:28])


def parse_na_claim(icmp: bytes) -> tuple[ipaddress.IPv6Address, bytes] | None:
    """(target, target link-layer address) of an ICMPv6 neighbour advertisement, else None.

    `icmp` starts at the ICMPv6 header (what a raw ICMPv6 socket returns). Without the
    target link-layer option nobody's cache moves, so there is no claim to report.
    """
    if len(icmp) < 24 or icmp[0] != ND_NEIGHBOR_ADVERT or icmp[1] != 0:
        return None
    target = ipaddress.IPv6Address(bytes(icmp[8:24]))
    offset = 24
    for _ in range(32):  # bounded: a hostile packet cannot make us loop long
        if offset + 8 > len(icmp):
            return None
        kind, units = icmp[offset], icmp[offset + 1]
        if units == 0:
            return None  # RFC 4861 4.6: a zero-length option invalidates the packet
        if kind == 2 and units == 1:
            return target, bytes(icmp[offset + 2 : offset + 8])
        offset += units * 8
    return None


def _na_only_filter() -> bytes:
    # Linux ICMP6_FILTER: a set bit blocks that ICMPv6 type.
    words = [0xFFFFFFFF] * 8
    words[ND_NEIGHBOR_ADVERT >> 5] &= ~(1 << (ND_NEIGHBOR_ADVERT & 31))
    return struct.pack("=8I", *words)


class ConflictWatcher:
    """Calls `on_conflict(ip_text)` when another MAC claims one of our VIPs while we hold it.

    A claim is an ARP request or reply with sender IP == VIP, or a neighbour advertisement for
    the VIP, whose MAC is not ours. At most one call per address per `quiet_period` seconds, so
    a peer's GARP burst is one report. `start()` needs the running loop.
    """

    def __init__(
        self,
        vips: Sequence[Vip],
        own_mac: bytes | Mapping[str, bytes],
        on_conflict: Callable[[str], None],
        *,
        quiet_period: float = 1.0,
        max_reads: int = 64,
    ) -> None:
        self._watched: dict[tuple[str, IPAddress], str] = {
            (v.interface, v.ip): str(v.ip) for v in vips
        }
        self._vips = list(dict.fromkeys(vips))
        self._own = own_mac
        self._on_conflict = on_conflict
        self._quiet = quiet_period
        self._max_reads = max_reads
        self._last: dict[str, float] = {}
        self._holding = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self.conflicts = 0

    @property
    def holding(self) -> bool:
        return self._holding

    def set_held(self, vips: Sequence[Vip]) -> None:
        """Only `vips` are this node's now (with VIP groups each group holds on its own): a
        claim on another watched VIP is a peer holding its group, not a conflict."""
        self._watched = {(v.interface, v.ip): str(v.ip) for v in vips}
        self._holding = bool(self._watched)

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            for ifname in dict.fromkeys(v.interface for v in self._vips if v.version == 4):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
                self._sockets.append(sock)
                sock.bind((ifname, ETH_P_ARP))
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._on_readable, sock, ifname, True)
            for ifname in dict.fromkeys(v.interface for v in self._vips if v.version == 6):
                sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                self._sockets.append(sock)
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _na_only_filter())
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._on_readable, sock, ifname, False)
        except OSError as e:
            self._loop = loop
            self.close()
            raise AnnounceError(f"cannot watch for address conflicts: {e}") from e
        self._loop = loop

    def set_holding(self, holding: bool) -> None:
        if holding and not self._holding:
            # Whatever queued up before we held the VIPs (the previous holder's announcements
            # in particular) says nothing about a conflict now.
            for sock in self._sockets:
                for _ in range(_DRAIN_LIMIT):
                    try:
                        sock.recv(_RECV_SIZE)
                    except OSError:  # BlockingIOError: empty
                        break
        self._holding = holding

    def close(self) -> None:
        for sock in self._sockets:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []

    def _on_readable(self, sock: socket.socket, ifname: str, arp: bool) -> None:
        # Level-triggered: stopping after max_reads leaves the rest for the next loop pass, so
        # one burst of traffic cannot starve heartbeats.
        try:
            for _ in range(self._max_reads):
                try:
                    if arp:
                        frame, addr = sock.recvfrom(_RECV_SIZE)
                        if addr[2] != socket.PACKET_OUTGOING:
                            self.check_arp(addr[0], frame)
                    else:
                        data, anc, _flags, _src = sock.recvmsg(_RECV_SIZE, socket.CMSG_SPACE(4))
                        # Like the kernel, believe only on-link senders (RFC 4861 7.1.2).
                        hlim = [
                            struct.unpack("=i", d[:4])[0]
                            for lvl, kind, d in anc
                            if lvl == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT
                        ]
                        if hlim == [255]:
                            self.check_na(ifname, data)
                except (BlockingIOError, InterruptedError):
                    return
        except OSError as e:  # e.g. ENETDOWN once when the link goes down
            log.warning("conflict watcher on %s: %s", ifname, e)
        except Exception:
            log.exception("conflict watcher on %s: unexpected error", ifname)

    def check_arp(self, ifname: str, frame: bytes) -> None:
        claim = parse_arp_claim(frame)
        if claim is not None:
            self._claim(ifname, claim[0], claim[1])

    def check_na(self, ifname: str, icmp: bytes) -> None:
        claim = parse_na_claim(icmp)
        if claim is not None:
            self._claim(ifname, claim[0], claim[1])

    def _claim(self, ifname: str, ip: IPAddress, mac: bytes) -> None:
        if not self._holding:
            return
        address = self._watched.get((ifname, ip))
        own = self._own if isinstance(self._own, bytes) else self._own.get(ifname)
        if address is None or mac == own:
            return
        now = time.monotonic()
        if now - self._last.get(address, -self._quiet) < self._quiet:
            return
        self._last[address] = now
        self.conflicts += 1
        log.warning("address conflict: %s on %s claimed by %s", address, ifname, mac.hex(":"))
        try:
            self._on_conflict(address)
        except Exception:
            log.exception("conflict callback failed for %s", address)

