"""Packing of the batch body and the message payloads; the byte layout is documented in `codec`.

Kept apart from the envelope so each stays readable. The decoder only ever sees bodies whose
HMAC has been verified, but it still checks every length and value: a member running a buggy
or newer build must produce a `malformed` drop, never an exception or a half-built message.

Speed matters here (one heartbeat per group per peer per interval goes through it), so the
encoders return `bytes` built with `struct` and a table of one-byte varints rather than a
field-by-field writer object, and the decoder is one cursor class with short methods.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import assert_never

from hafailover.core.messages import (
    CommandReply,
    Heartbeat,
    HeartbeatAck,
    MaintenanceRequest,
    Message,
    MessageType,
    NodeAck,
    NodeHeartbeat,
    PeerSummary,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)
from hafailover.core.reasons import Reason
from hafailover.errors import LocalError

MAX_STR = 64  # node names, group names, and the payload strings that hold node names
MAX_DETAIL = 256  # CommandReply.detail, in UTF-8 bytes (a u16 length on the wire)
MAX_PEERS = 64  # peer summaries in one heartbeat, and names in one packet's name table
MAX_SECTIONS = 16  # config fingerprint entries
MAX_SECTION = 32  # bytes of a fingerprint section name
MAX_DIGEST = 32  # bytes of a fingerprint digest

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
MAX_BUCKETS = 16  # node liveness buckets (hafailover.core.liveness.BUCKETS)
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_SMALL = [bytes([i]) for i in range(128)]
_REASONS = {r.value: r for r in Reason}
# `retry_after` goes on the wire in whole milliseconds, rounded up. x / 1000 * 1000 can come
# out a few ulps above x, so an excess below a microsecond counts as float noise, not as
# another millisecond: ms / 1000 then re-encodes to exactly ms.
_MS_NOISE = 1e-3


class EncodeError(LocalError, ValueError):
    """A message that cannot be put on the wire; the text says which field and why."""


class Malformed(Exception):
    """Internal: an authenticated body that does not parse."""


# ------------------------------------------------------------------ encoding


def uvarint(value: int, what: str) -> bytes:
    """Unsigned LEB128 (7 bits per byte, least significant first), at most a u64."""
    if 0 <= value < 128:
        return _SMALL[value]
    if not 0 <= value <= _U64_MAX:
        raise EncodeError(f"{what} {value} does not fit in a u64")
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def text(value: str, what: str, limit: int = MAX_STR) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise EncodeError(f"{what} {value!r} is over {limit} bytes in UTF-8")
    return _SMALL[len(raw)] + raw  # limit <= 64 < 128


def _flags(*bits: bool) -> bytes:
    value = 0
    for i, bit in enumerate(bits):
        if bit:
            value |= 1 << i
    return _SMALL[value]


def _flags3(a: bool, b: bool, c: bool) -> bytes:
    return _SMALL[(1 if a else 0) | (2 if b else 0) | (4 if c else 0)]


def _ms(value: float, what: str) -> bytes:
    if not math.isfinite(value) or value < 0:
        raise EncodeError(f"{what} must be a finite, non-negative number of seconds")
    ms = max(0, math.ceil(value * 1000 - _MS_NOISE))
    if ms > _U32_MAX:
        raise EncodeError(f"{what} in ms {ms} does not fit in a u32")
    return uvarint(ms, what)


def encode_peers(peers: Sequence[PeerSummary], names: Mapping[str, int]) -> bytes:
    """A heartbeat's peer list: count, then per peer its name index and flags."""
    if len(peers) > MAX_PEERS:
        raise EncodeError(f"{len(peers)} peers in a heartbeat, at most {MAX_PEERS}")
    parts = [_SMALL[len(peers)]]
    for p in peers:
        parts.append(_SMALL[names[p.name]])
        parts.append(_flags3(p.healthy, p.maintenance, p.reachable))
    return b"".join(parts)


def encode_payload(
    m: Message, names: Mapping[str, int], peers_memo: dict[object, bytes] | None = None
) -> bytes:
    """The payload of one message. `names` maps every peer name a heartbeat mentions to its
    index in the packet's name table (see `collect_names`). `peers_memo` may cache encoded peer
    lists within one batch: the groups a node leads usually report the very same peers."""
    match m:
        case NodeHeartbeat():
            if len(m.digests) > MAX_BUCKETS:
                raise EncodeError(f"{len(m.digests)} buckets in a node heartbeat, at most 16")
            parts = [uvarint(m.seq, "seq"), _SMALL[len(m.digests)]]
            for bucket, digest in m.digests:
                if not 0 <= bucket < MAX_BUCKETS or not 0 < digest <= _U64_MAX:
                    raise EncodeError(f"bad node heartbeat bucket {bucket} or digest")
                parts.append(_SMALL[bucket] + _U64.pack(digest))
            return b"".join(parts)
        case NodeAck():
            if not 0 <= m.mask < 1 << MAX_BUCKETS:
                raise EncodeError(f"node ack mask {m.mask} has more than 16 bits")
            return uvarint(m.seq, "seq") + uvarint(m.mask, "mask")
    term = uvarint(m.term, "term")
    match m:
        case Heartbeat():
            if peers_memo is None:
                peers = encode_peers(m.peers, names)
            else:
                peers = peers_memo.get(m.peers, b"")
                if not peers:
                    peers = peers_memo[m.peers] = encode_peers(m.peers, names)
            return term + uvarint(m.round, "round") + peers
        case HeartbeatAck():
            return term + uvarint(m.round, "round") + _flags3(m.success, m.healthy, m.maintenance)
        case VoteRequest():
            return (
                term
                + _flags(m.pre, m.healthy, m.maintenance)
                + text(m.transfer_from, "transfer_from")
            )
        case VoteResponse():
            flags = _flags(m.pre, m.granted, m.healthy, m.maintenance)
            return term + flags + _ms(m.retry_after, "retry_after")
        case TimeoutNow():
            return term
        case TransferRequest():
            return term + uvarint(m.request_id, "request_id") + text(m.target, "target")
        case MaintenanceRequest():
            return term + uvarint(m.request_id, "request_id") + _flags(m.on)
        case CommandReply():
            # An over-long operator phrase is cut (on a character boundary), never refused:
            # losing the reply would turn an answered command into a timeout.
            detail = m.detail.encode("utf-8")[:MAX_DETAIL]
            detail = detail.decode("utf-8", "ignore").encode("utf-8")
            return b"".join(
                (
                    term,
                    uvarint(m.request_id, "request_id"),
                    _flags(m.accepted),
                    text(m.reason.value, "reason"),
                    _U16.pack(len(detail)),
                    detail,
                )
            )
        case _:
            assert_never(m)


def collect_names(messages: Sequence[Message]) -> dict[str, int]:
    """The name table for a packet: every peer name its heartbeats mention, numbered in order
    of first use."""
    table: dict[str, int] = {}
    for m in messages:
        if isinstance(m, Heartbeat):
            for p in m.peers:
                if p.name not in table:
                    table[p.name] = len(table)
    if len(table) > MAX_PEERS:
        raise EncodeError(f"{len(table)} distinct peer names in one batch, at most {MAX_PEERS}")
    return table


def encode_names(table: Mapping[str, int]) -> bytes:
    parts = [_SMALL[len(table)]]
    parts.extend(text(name, "peer name") for name in table)
    return b"".join(parts)


def encode_fingerprint(fingerprint: Mapping[str, bytes]) -> bytes:
    if len(fingerprint) > MAX_SECTIONS:
        raise EncodeError(f"{len(fingerprint)} fingerprint sections, at most {MAX_SECTIONS}")
    parts = [_SMALL[len(fingerprint)]]
    for section, digest in fingerprint.items():
        if not section:
            raise EncodeError("a fingerprint section needs a name")
        if not 1 <= len(digest) <= MAX_DIGEST:
            raise EncodeError(f"fingerprint digest of {section!r} must be 1 to {MAX_DIGEST} bytes")
        parts.append(text(section, "fingerprint section", MAX_SECTION))
        parts.append(_SMALL[len(digest)] + digest)
    return b"".join(parts)


# ------------------------------------------------------------------ decoding


class Reader:
    """A cursor over data[pos:end]; raises `Malformed` instead of reading past `end`."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def u8(self) -> int:
        at = self.pos
        if at >= self.end:
            raise Malformed("truncated")
        self.pos = at + 1
        return self.data[at]

    def uvarint(self) -> int:
        at = self.pos
        if at < self.end:
            b = self.data[at]
            if b < 0x80:  # the common case: one byte
                self.pos = at + 1
                return b
        return self._long_uvarint()

    def _long_uvarint(self) -> int:
        data, at, end = self.data, self.pos, self.end
        value = shift = 0
        while True:
            if at >= end:
                raise Malformed("truncated")
            b = data[at]
            at += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise Malformed("varint longer than a u64")
        if b == 0:
            raise Malformed("varint not in its shortest form")
        if value > _U64_MAX:
            raise Malformed("varint larger than a u64")
        self.pos = at
        return value

    def flags(self, count: int) -> int:
        value = self.u8()
        if value >> count:
            raise Malformed("unknown flag bits set")
        return value

    def raw(self, n: int) -> bytes:
        at = self.pos
        if at + n > self.end:
            raise Malformed("truncated")
        self.pos = at + n
        return self.data[at : at + n]

    def text(self, limit: int = MAX_STR, *, nonempty: bool = False) -> str:
        n = self.u8()
        if n > limit or (nonempty and n == 0):
            raise Malformed("bad string length")
        try:
            return self.raw(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Malformed("string is not UTF-8") from e

    def finish(self) -> None:
        # Trailing bytes mean the sender's idea of the layout differs from ours: refuse
        # rather than guess which fields we understood.
        if self.pos != self.end:
            raise Malformed("trailing bytes")


def decode_fingerprint(r: Reader) -> tuple[tuple[str, bytes], ...]:
    count = r.u8()
    if count > MAX_SECTIONS:
        raise Malformed("too many fingerprint sections")
    out: list[tuple[str, bytes]] = []
    for _ in range(count):
        section = r.text(MAX_SECTION, nonempty=True)
        n = r.u8()
        if not 1 <= n <= MAX_DIGEST:
            raise Malformed("bad digest length")
        out.append((section, r.raw(n)))
    if len({s for s, _ in out}) != len(out):
        raise Malformed("duplicate fingerprint section")
    return tuple(out)


def decode_names(r: Reader) -> tuple[str, ...]:
    count = r.u8()
    if count > MAX_PEERS:
        raise Malformed("too many names")
    names = tuple(r.text() for _ in range(count))
    if len(set(names)) != count:
        raise Malformed("duplicate name in the name table")
    return names


def _decode_peers(r: Reader, names: Sequence[str]) -> tuple[PeerSummary, ...]:
    count = r.u8()
    if count > MAX_PEERS:
        raise Malformed("too many peers")
    peers = []
    for _ in range(count):
        index = r.u8()
        if index >= len(names):
            raise Malformed("peer name index outside the name table")
        f = r.flags(3)
        peers.append(PeerSummary(names[index], bool(f & 1), bool(f & 2), bool(f & 4)))
    return tuple(peers)


_B = (False, True)
# Plain ints: comparing with an IntEnum member costs a method call per comparison.
_HEARTBEAT = int(MessageType.HEARTBEAT)
_HEARTBEAT_ACK = int(MessageType.HEARTBEAT_ACK)
_VOTE_REQUEST = int(MessageType.VOTE_REQUEST)
_VOTE_RESPONSE = int(MessageType.VOTE_RESPONSE)
_TIMEOUT_NOW = int(MessageType.TIMEOUT_NOW)
_TRANSFER_REQUEST = int(MessageType.TRANSFER_REQUEST)
_MAINTENANCE_REQUEST = int(MessageType.MAINTENANCE_REQUEST)
_COMMAND_REPLY = int(MessageType.COMMAND_REPLY)
_NODE_HEARTBEAT = int(MessageType.NODE_HEARTBEAT)
_NODE_ACK = int(MessageType.NODE_ACK)
NODE_KINDS = frozenset((_NODE_HEARTBEAT, _NODE_ACK))
"""Message types of node level: only in items of the group '' (and only they are)."""


def decode_payload(
    kind: int,
    r: Reader,
    names: Sequence[str],
    peers_memo: dict[bytes, tuple[PeerSummary, ...]] | None = None,
) -> Message:
    """Parse one whole payload of message type `kind`; raises `Malformed` on any mismatch.
    `peers_memo` may cache decoded peer lists (keyed by their bytes) within one packet."""
    message: Message
    if kind == _NODE_HEARTBEAT:
        seq = r.uvarint()
        count = r.u8()
        if count > MAX_BUCKETS:
            raise Malformed("too many buckets")
        digests: list[tuple[int, int]] = []
        for _ in range(count):
            bucket = r.u8()
            (digest,) = _U64.unpack(r.raw(8))
            if bucket >= MAX_BUCKETS or digest == 0 or (digests and bucket <= digests[-1][0]):
                raise Malformed("bad bucket")
            digests.append((bucket, digest))
        message = NodeHeartbeat(seq, tuple(digests))
        r.finish()
        return message
    if kind == _NODE_ACK:
        seq = r.uvarint()
        mask = r.uvarint()
        if mask >> MAX_BUCKETS:
            raise Malformed("ack mask over 16 bits")
        message = NodeAck(seq, mask)
        r.finish()
        return message
    term = r.uvarint()
    if kind == _HEARTBEAT:
        round_ = r.uvarint()
        if peers_memo is None:
            peers = _decode_peers(r, names)
        else:
            # The peer list is the rest of the payload: the same bytes mean the same peers
            # (the name table is per packet), and PeerSummary is immutable, so share it.
            raw = r.data[r.pos : r.end]
            cached = peers_memo.get(raw)
            if cached is None:
                cached = peers_memo[raw] = _decode_peers(r, names)
            else:
                r.pos = r.end
            peers = cached
        message = Heartbeat(term, round_, peers)
    elif kind == _HEARTBEAT_ACK:
        round_ = r.uvarint()
        f = r.flags(3)
        message = HeartbeatAck(term, round_, _B[f & 1], _B[f >> 1 & 1], _B[f >> 2])
    elif kind == _VOTE_REQUEST:
        f = r.flags(3)
        message = VoteRequest(term, bool(f & 1), bool(f & 2), bool(f & 4), r.text())
    elif kind == _VOTE_RESPONSE:
        f = r.flags(4)
        ms = r.uvarint()
        if ms > _U32_MAX:
            raise Malformed("retry_after over a u32 of ms")
        message = VoteResponse(term, bool(f & 1), bool(f & 2), bool(f & 4), bool(f & 8), ms / 1000)
    elif kind == _TIMEOUT_NOW:
        message = TimeoutNow(term)
    elif kind == _TRANSFER_REQUEST:
        rid = r.uvarint()
        message = TransferRequest(term, r.text(), rid)
    elif kind == _MAINTENANCE_REQUEST:
        rid = r.uvarint()
        message = MaintenanceRequest(term, bool(r.flags(1)), rid)
    elif kind == _COMMAND_REPLY:
        rid = r.uvarint()
        accepted = bool(r.flags(1))
        reason = _REASONS.get(r.text())
        if reason is None:
            raise Malformed("unknown reason")
        (n,) = _U16.unpack(r.raw(2))
        if n > MAX_DETAIL:
            raise Malformed("detail too long")
        try:
            detail = r.raw(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Malformed("detail is not UTF-8") from e
        message = CommandReply(term, rid, accepted, reason, detail)
    else:
        # A type number from a newer build: same version byte, so refuse it as malformed.
        raise Malformed(f"unknown message type {kind}")
    r.finish()
    return message
