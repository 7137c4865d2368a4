"""UDP transport: authenticated datagrams to and from the configured peers.

One socket bound to this node's address and port. Every received datagram goes through the
codec (which never raises); anything dropped is counted per reason and logged rate-limited.
What one step sends one peer, for every VIP group, leaves in one datagram (`send_batch`; the
codec splits only a batch over `MAX_PACKET`). The receiver gets the whole `Decoded` batch,
with the sender's configuration fingerprint.
A packet can therefore neither crash nor stall the loop: the work per datagram is bounded by
the codec's header checks and one HMAC, and one wake-up reads at most `READ_BURST` datagrams.

Two ways of reading (the engine chooses, `defer`):

* at once (the default): the socket is registered with the event loop, which wakes for every
  datagram; the receiver handles it with its own clock's time (`stamp` None);
* deferred: the socket is not registered, so a datagram wakes nothing; the engine reads what
  came in with `drain()` when its own timer wakes it (a settled node: at its rounds). Each
  datagram then carries the kernel's receive time (`SO_TIMESTAMPNS`, on the real-time
  clock), which the engine turns into a receipt time on its own clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from hafailover.core.messages import Message
from hafailover.runtime.logs import RateLimitedLogger
from hafailover.wire import DEFAULT_GROUP, Codec, Decoded, Dropped, EncodeError

log = logging.getLogger("hafailover.transport")

Address = tuple[str, int]


Item = tuple[str, Message]  # (group, message)

# Bytes read per datagram: more than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
# (A buffer this size is served from malloc's heap; asyncio's 256 KiB default was mmapped and
# unmapped for every datagram.)
RECV_BUFFER = 65536
# Datagrams read per wake-up of the loop when reading at once: a flood cannot hold the loop
# for longer than this many HMACs before other callbacks run.
READ_BURST = 64
# Datagrams `drain()` reads at most; past it the engine reads at once again.
DRAIN_MAX = 256
# struct timespec, as SO_TIMESTAMPNS delivers it (SO_TIMESTAMPNS_OLD on 64-bit Linux).
SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)

# (the batch, the kernel's receive time on the real-time clock when read by `drain`, else None)
OnBatch = Callable[[Decoded, float | None], None]


class TransportPort(Protocol):
    def send_batch(self, to: str, items: Sequence[Item]) -> None: ...

    def defer(self, on: bool) -> None:
        """Deferred reading on (no wake-up per datagram; `drain` reads) or off."""

    def drain(self) -> bool:
        """Read and deliver every datagram waiting (at most `DRAIN_MAX`); False if more wait."""

    def close(self) -> None: ...

    @property
    def drops(self) -> Mapping[str, int]: ...


class UdpTransport:
    def __init__(
        self,
        codec: Codec,
        peers: Mapping[str, Address],
        on_batch: OnBatch,
        sock: socket.socket,
    ) -> None:
        self._codec = codec
        self._peers = dict(peers)
        self._on_batch = on_batch
        self._sock: socket.socket | None = sock
        self._loop = asyncio.get_running_loop()
        self._epoch = time.monotonic()
        self._limited = RateLimitedLogger(log, burst=5, interval=60.0)
        self._registered = False
        self.send_errors = 0
        self.defer(False)

    @classmethod
    async def bind(
        cls,
        codec: Codec,
        local: Address,
        peers: Mapping[str, Address],
        on_batch: OnBatch,
    ) -> UdpTransport:
        family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # Heartbeats are latency-critical control traffic (DSCP CS6, as VRRP uses).
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            sock.bind(local)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return cls(codec, peers, on_batch, sock)

    # reading -----------------------------------------------------------------------------

    def defer(self, on: bool) -> None:
        if self._sock is None or on != self._registered:
            return
        if on:
            self._loop.remove_reader(self._sock.fileno())
        else:
            self._loop.add_reader(self._sock.fileno(), self._readable)
        self._registered = not on

    @property
    def deferred(self) -> bool:
        return self._sock is not None and not self._registered

    @property
    def local_address(self) -> Address:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def drain(self) -> bool:
        return self._read(DRAIN_MAX, stamped=True) < DRAIN_MAX

    def _readable(self) -> None:
        self._read(READ_BURST, stamped=False)

    def _read(self, limit: int, stamped: bool) -> int:
        """Read and deliver up to `limit` datagrams; how many were read (errors included)."""
        count = 0
        while count < limit and self._sock is not None:
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(RECV_BUFFER, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                # ICMP errors (peer down, port unreachable) are normal during failures.
                self._limited.debug("icmp", "socket error: %s", e)
                count += 1
                continue
            count += 1
            self._deliver(data, addr, _stamp(ancillary) if stamped else None)
        return count

    def _deliver(self, data: bytes, addr: tuple[str | int, ...], stamp: float | None) -> None:
        result = self._codec.decode(data)
        if isinstance(result, Dropped):
            self._limited.warning(
                str(result.reason), "dropped packet from %s: %s", addr[0], result.reason
            )
            return
        assert isinstance(result, Decoded)
        try:
            self._on_batch(result, stamp)
        except Exception:  # a bug in a handler must not kill the transport
            log.exception("handling a datagram from %s failed", result.sender)

    # sending -----------------------------------------------------------------------------

    def send(self, to: str, message: Message, group: str = DEFAULT_GROUP) -> None:
        self.send_batch(to, [(group, message)])

    def send_batch(self, to: str, items: Sequence[Item]) -> None:
        """Every item for `to` in one datagram (several only past `MAX_PACKET`)."""
        addr = self._peers.get(to)
        if addr is None or self._sock is None or not items:
            return
        try:
            ms = int((time.monotonic() - self._epoch) * 1000)
            packets = self._codec.encode_batch(items, ms, to=to)
        except EncodeError as e:
            log.error("cannot encode %d messages for %s: %s", len(items), to, e)
            return
        for packet in packets:
            try:
                self._sock.sendto(packet, addr)
            except OSError as e:
                self.send_errors += 1
                self._limited.debug(f"send:{to}", "send to %s failed: %s", to, e)

    @property
    def drops(self) -> Mapping[str, int]:
        return {str(k): v for k, v in self._codec.drops.items()}

    def close(self) -> None:
        if self._sock is not None:
            self.defer(True)
            self._sock.close()
            self._sock = None


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time of a datagram (real-time clock), from its ancillary data."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return float(sec + nsec * 1e-9)
    return None

