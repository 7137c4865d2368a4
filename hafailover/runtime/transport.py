"""UDP transport: authenticated datagrams to and from the configured peers.

One socket bound to this node's address and port. Every received datagram goes through the
codec (which never raises); anything dropped is counted per reason and logged rate-limited.
What one step sends one peer, for every VIP group, leaves in one datagram (`send_batch`; the
codec splits only a batch over `MAX_PACKET`). The receiver gets the whole `Decoded` batch,
with the sender's configuration fingerprint.
A packet can therefore neither crash nor stall the loop: the work per datagram is bounded by
the codec's header checks and one HMAC.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast

from hafailover.core.messages import Message
from hafailover.runtime.logs import RateLimitedLogger
from hafailover.wire import DEFAULT_GROUP, Codec, Decoded, Dropped, EncodeError

log = logging.getLogger("hafailover.transport")

Address = tuple[str, int]


Item = tuple[str, Message]  # (group, message)

# Bytes read per datagram: more than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
RECV_BUFFER = 65536


class TransportPort(Protocol):
    def send_batch(self, to: str, items: Sequence[Item]) -> None: ...

    def close(self) -> None: ...

    @property
    def drops(self) -> Mapping[str, int]: ...


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(
        self,
        codec: Codec,
        peers: Mapping[str, Address],
        on_batch: Callable[[Decoded], None],
    ) -> None:
        self._codec = codec
        self._peers = dict(peers)
        self._on_batch = on_batch
        self._transport: asyncio.DatagramTransport | None = None
        self._epoch = time.monotonic()
        self._limited = RateLimitedLogger(log, burst=5, interval=60.0)
        self.send_errors = 0

    @classmethod
    async def bind(
        cls,
        codec: Codec,
        local: Address,
        peers: Mapping[str, Address],
        on_batch: Callable[[Decoded], None],
    ) -> UdpTransport:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Heartbeats are latency-critical control traffic (DSCP CS6, as VRRP uses).
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)
            sock.bind(local)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        proto = cls(codec, peers, on_batch)
        await loop.create_datagram_endpoint(lambda: proto, sock=sock)
        return proto

    # asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)
        # asyncio reads each datagram with recvfrom(max_size), 256 KiB by default: a buffer
        # that large is mmapped, remapped and unmapped by malloc for every datagram (~75 us of
        # a heartbeat's receive). Any UDP datagram fits in RECV_BUFFER, which malloc serves
        # from its heap; nothing is truncated.
        if getattr(transport, "max_size", 0) > RECV_BUFFER:
            setattr(transport, "max_size", RECV_BUFFER)  # noqa: B010 (untyped in asyncio)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        result = self._codec.decode(data)
        if isinstance(result, Dropped):
            self._limited.warning(
                str(result.reason), "dropped packet from %s: %s", addr[0], result.reason
            )
            return
        assert isinstance(result, Decoded)
        try:
            self._on_batch(result)
        except Exception:  # a bug in a handler must not kill the transport
            log.exception("handling a datagram from %s failed", result.sender)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (peer down, port unreachable) are normal during failures.
        self._limited.debug("icmp", "socket error: %s", exc)

    # sending -----------------------------------------------------------------------------

    def send(self, to: str, message: Message, group: str = DEFAULT_GROUP) -> None:
        self.send_batch(to, [(group, message)])

    def send_batch(self, to: str, items: Sequence[Item]) -> None:
        """Every item for `to` in one datagram (several only past `MAX_PACKET`)."""
        addr = self._peers.get(to)
        if addr is None or self._transport is None or not items:
            return
        try:
            ms = int((time.monotonic() - self._epoch) * 1000)
            packets = self._codec.encode_batch(items, ms, to=to)
        except EncodeError as e:
            log.error("cannot encode %d messages for %s: %s", len(items), to, e)
            return
        for packet in packets:
            try:
                self._transport.sendto(packet, addr)
            except OSError as e:
                self.send_errors += 1
                self._limited.debug(f"send:{to}", "send to %s failed: %s", to, e)

    @property
    def drops(self) -> Mapping[str, int]:
        return {str(k): v for k, v in self._codec.drops.items()}

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

