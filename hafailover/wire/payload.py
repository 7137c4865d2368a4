"""Struct packing of the message payloads; the byte layout is documented in `codec`.

Kept apart from the envelope so each stays readable. The decoder only ever sees payloads whose
HMAC has been verified, but it still checks every length and value: a member running a buggy
or newer build must produce a `malformed` drop, never an exception or a half-built message.
"""

from __future__ import annotations

import math
import struct
from typing import assert_never

from hafailover.core.messages import (
    Heartbeat,
    HeartbeatAck,
    MaintenanceRequest,
    Message,
    MessageType,
    PeerSummary,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)

MAX_STR = 64  # node names, and the payload strings that hold node names
MAX_PEERS = 64

_U8 = struct.Struct("!B")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
# `retry_after` goes on the wire in whole milliseconds, rounded up. x / 1000 * 1000 can come
# out a few ulps above x, so an excess below a microsecond counts as float noise, not as
# another millisecond: ms / 1000 then re-encodes to exactly ms.
_MS_NOISE = 1e-3


class EncodeError(ValueError):
    """A message that cannot be put on the wire; the text says which field and why."""


class Malformed(Exception):
    """Internal: an authenticated payload that does not parse."""


class Writer:
    """Collects the encoded payload fields, range-checking each."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, value: int, what: str) -> None:
        if not 0 <= value <= 0xFF:
            raise EncodeError(f"{what} {value} does not fit in a u8")
        self.parts.append(_U8.pack(value))

    def u32(self, value: int, what: str) -> None:
        if not 0 <= value <= _U32_MAX:
            raise EncodeError(f"{what} {value} does not fit in a u32")
        self.parts.append(_U32.pack(value))

    def u64(self, value: int, what: str) -> None:
        if not 0 <= value <= _U64_MAX:
            raise EncodeError(f"{what} {value} does not fit in a u64")
        self.parts.append(_U64.pack(value))

    def flag(self, value: bool) -> None:
        self.parts.append(b"\x01" if value else b"\x00")

    def text(self, value: str, what: str) -> None:
        raw = value.encode("utf-8")
        if len(raw) > MAX_STR:
            raise EncodeError(f"{what} {value!r} is over {MAX_STR} bytes in UTF-8")
        self.parts.append(_U8.pack(len(raw)))
        self.parts.append(raw)

    def seconds_as_ms(self, value: float, what: str) -> None:
        if not math.isfinite(value) or value < 0:
            raise EncodeError(f"{what} must be a finite, non-negative number of seconds")
        self.u32(max(0, math.ceil(value * 1000 - _MS_NOISE)), f"{what} in ms")


class Reader:
    """Reads fields from data[pos:end], raising `Malformed` instead of reading past `end`."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self._data = data
        self._pos = pos
        self._end = end

    def _advance(self, n: int) -> int:
        at = self._pos
        if at + n > self._end:
            raise Malformed("payload truncated")
        self._pos = at + n
        return at

    def u8(self) -> int:
        return self._data[self._advance(1)]

    def u32(self) -> int:
        value: int = _U32.unpack_from(self._data, self._advance(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self._data, self._advance(8))[0]
        return value

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise Malformed("bool is neither 0 nor 1")
        return value == 1

    def text(self) -> str:
        n = self.u8()
        if n > MAX_STR:
            raise Malformed("string too long")
        at = self._advance(n)
        try:
            return self._data[at : at + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise Malformed("string is not UTF-8") from e

    def seconds_from_ms(self) -> float:
        return self.u32() / 1000

    def finish(self) -> None:
        # Trailing bytes mean the sender's idea of the layout differs from ours: refuse
        # rather than guess which fields we understood.
        if self._pos != self._end:
            raise Malformed("trailing bytes after payload")


def encode_payload(w: Writer, m: Message) -> None:
    w.u64(m.term, "term")
    match m:
        case Heartbeat():
            w.u64(m.round, "round")
            if len(m.peers) > MAX_PEERS:
                raise EncodeError(f"{len(m.peers)} peers in a heartbeat, at most {MAX_PEERS}")
            w.u8(len(m.peers), "peer count")
            for p in m.peers:
                w.text(p.name, "peer name")
                w.flag(p.healthy)
                w.flag(p.maintenance)
                w.flag(p.reachable)
        case HeartbeatAck():
            w.u64(m.round, "round")
            w.flag(m.success)
            w.flag(m.healthy)
            w.flag(m.maintenance)
        case VoteRequest():
            w.flag(m.pre)
            w.flag(m.healthy)
            w.flag(m.maintenance)
            w.text(m.transfer_from, "transfer_from")
        case VoteResponse():
            w.flag(m.pre)
            w.flag(m.granted)
            w.flag(m.healthy)
            w.flag(m.maintenance)
            w.seconds_as_ms(m.retry_after, "retry_after")
        case TimeoutNow():
            pass
        case TransferRequest():
            w.text(m.target, "target")
        case MaintenanceRequest():
            w.flag(m.on)
        case _:
            assert_never(m)


def _peer(r: Reader) -> PeerSummary:
    # Keyword arguments are evaluated left to right, which is the wire order.
    return PeerSummary(name=r.text(), healthy=r.flag(), maintenance=r.flag(), reachable=r.flag())


def decode_payload(kind: int, r: Reader) -> Message:
    """Parse a whole payload of message type `kind`; raises `Malformed` on any mismatch."""
    term = r.u64()
    message: Message
    if kind == MessageType.HEARTBEAT:
        round_ = r.u64()
        count = r.u8()
        if count > MAX_PEERS:
            raise Malformed("too many peers")
        message = Heartbeat(term=term, round=round_, peers=tuple(_peer(r) for _ in range(count)))
    elif kind == MessageType.HEARTBEAT_ACK:
        message = HeartbeatAck(
            term=term, round=r.u64(), success=r.flag(), healthy=r.flag(), maintenance=r.flag()
        )
    elif kind == MessageType.VOTE_REQUEST:
        message = VoteRequest(
            term=term, pre=r.flag(), healthy=r.flag(), maintenance=r.flag(), transfer_from=r.text()
        )
    elif kind == MessageType.VOTE_RESPONSE:
        message = VoteResponse(
            term=term,
            pre=r.flag(),
            granted=r.flag(),
            healthy=r.flag(),
            maintenance=r.flag(),
            retry_after=r.seconds_from_ms(),
        )
    elif kind == MessageType.TIMEOUT_NOW:
        message = TimeoutNow(term=term)
    elif kind == MessageType.TRANSFER_REQUEST:
        message = TransferRequest(term=term, target=r.text())
    elif kind == MessageType.MAINTENANCE_REQUEST:
        message = MaintenanceRequest(term=term, on=r.flag())
    else:
        # A type number from a newer build: same version byte, so refuse it as malformed.
        raise Malformed(f"unknown message type {kind}")
    r.finish()
    return message
