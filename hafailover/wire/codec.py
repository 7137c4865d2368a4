"""Authenticated, versioned UDP wire format for the protocol messages.

One message per datagram. All integers are unsigned and big-endian (network order).

Packet layout (N = length of the sender name, P = length of the payload):

| Offset    | Size | Field          | Encoding                                                  |
|-----------|------|----------------|-----------------------------------------------------------|
| 0         | 2    | magic          | b"HF"                                                     |
| 2         | 1    | version        | u8, currently 1                                           |
| 3         | 1    | type           | u8, `MessageType` number                                  |
| 4         | 4    | cluster id     | first 4 bytes of sha256(UTF-8 cluster name)               |
| 8         | 1    | sender length  | u8, N, at most 64                                         |
| 9         | N    | sender         | UTF-8 node name                                           |
| 9+N       | 8    | incarnation    | u64, sender's start time in ns (see keys.new_incarnation) |
| 17+N      | 8    | sequence       | u64, 1, 2, 3, ... per sender incarnation                  |
| 25+N      | 4    | timestamp_ms   | u32, sender's monotonic ms since its incarnation started, |
|           |      |                | modulo 2**32 (wraps after 49.7 days)                      |
| 29+N      | P    | payload        | per message type, see below                               |
| 29+N+P    | 32   | HMAC           | HMAC-SHA256, cluster key, over R + bytes [0, 29+N+P)      |

The smallest possible packet is 61 bytes (empty sender, empty payload); the largest accepted
or produced is `MAX_PACKET` = 1400 bytes, which stays below a 1500-byte Ethernet MTU with
IPv4/IPv6 and UDP headers, so a packet is never fragmented. A heartbeat carries 4 + n bytes
per peer (n = name length), so 64 peers fit with names of up to 16 bytes from a 5-byte
sender; `Codec.encode` raises `EncodeError` rather than send a larger packet.

Payload field encodings: `term` and `round` are u64; a bool is one u8 that must be 0 or 1;
a str is a u8 byte length (at most 64) followed by UTF-8. `VoteResponse.retry_after` (float
seconds) is sent as a u32 of whole milliseconds, rounded *up* so that a candidate never retries
before the voter's promise has run out; it decodes to `ms / 1000`. Integers keep the wire free
of NaN and infinities and make encoding exact for millisecond values.

| Type                    | Payload fields, in order                                         |
|-------------------------|------------------------------------------------------------------|
| 1 HEARTBEAT             | term u64, round u64, peer count u8 (<= 64), then per peer:       |
|                         |   name str, healthy u8, maintenance u8, reachable u8             |
| 2 HEARTBEAT_ACK         | term u64, round u64, success u8, healthy u8, maintenance u8      |
| 3 VOTE_REQUEST          | term u64, pre u8, healthy u8, maintenance u8, transfer_from str  |
| 4 VOTE_RESPONSE         | term u64, pre u8, granted u8, healthy u8, maintenance u8,        |
|                         |   retry_after_ms u32                                             |
| 5 TIMEOUT_NOW           | term u64                                                         |
| 6 TRANSFER_REQUEST      | term u64, target str                                             |
| 7 MAINTENANCE_REQUEST   | term u64, on u8                                                  |

Decoding checks, in order; the first failure drops the packet with that `DropReason`:
size (oversize, too-short), magic, version, cluster id, sender (from-self, unknown-sender),
then the HMAC, and only then the payload (malformed) and replay protection (replay, stale).
A header sender length over 64 is malformed; the type byte is only looked at with the payload,
so an unknown type (or a flipped bit in it) is malformed or bad-mac, never a parser error.
Cheap header checks come first so that garbage and other clusters' traffic cost no HMAC; the
payload is parsed only once the packet is known to come from a cluster member, so the parser
is never exposed to unauthenticated input beyond the fixed header. The cluster id is not a
security measure (the HMAC is): it turns "two clusters share a network" into a clear
other-cluster count instead of a stream of bad-mac drops.

R is the recipient's name as u8 length + UTF-8; it is covered by the HMAC but never sent, so a
packet captured on its way to one node fails authentication at every other node.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from hafailover.core.messages import MESSAGE_TYPES, Message
from hafailover.wire.keys import MIN_KEY_BYTES
from hafailover.wire.payload import (
    MAX_STR,
    EncodeError,
    Malformed,
    Reader,
    Writer,
    decode_payload,
    encode_payload,
)
from hafailover.wire.replay import ReplayGuard, Verdict

MAGIC = b"HF"
VERSION = 1
MAX_PACKET = 1400
MAX_NAME = MAX_STR  # node names, in the header and in payloads
MAC_SIZE = 32

_U64_MAX = (1 << 64) - 1
_TS_MASK = (1 << 32) - 1
# magic, version, type, cluster id, sender length: everything before the sender name.
_FIXED = struct.Struct("!2sBB4sB")
# incarnation, sequence, timestamp_ms: everything between the sender name and the payload.
_COUNTERS = struct.Struct("!QQI")
MIN_PACKET = _FIXED.size + _COUNTERS.size + MAC_SIZE


class DropReason(StrEnum):
    """Why `Codec.decode` dropped a packet. The values are stable (logs, metrics)."""

    TOO_SHORT = "too-short"
    BAD_MAGIC = "bad-magic"
    BAD_VERSION = "bad-version"
    OTHER_CLUSTER = "other-cluster"
    BAD_MAC = "bad-mac"
    UNKNOWN_SENDER = "unknown-sender"
    FROM_SELF = "from-self"
    MALFORMED = "malformed"
    REPLAY = "replay"
    STALE = "stale"
    OVERSIZE = "oversize"


@dataclass(frozen=True)
class Decoded:
    """An authenticated, fresh message and its envelope."""

    sender: str
    incarnation: int
    sequence: int
    timestamp_ms: int  # as on the wire: modulo 2**32
    message: Message


@dataclass(frozen=True)
class Dropped:
    """A packet that was not delivered; the codec has already counted it in `drops`."""

    reason: DropReason


def cluster_id(cluster_name: str) -> bytes:
    """The 4-byte cluster id carried in every packet header."""
    return hashlib.sha256(cluster_name.encode("utf-8")).digest()[:4]


def _name_bytes(name: str, what: str) -> bytes:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME:
        raise ValueError(f"{what} {name!r} must be 1 to {MAX_NAME} bytes in UTF-8")
    return raw


class Codec:
    """Encodes this node's messages and authenticates, parses and replay-checks its peers'.

    One instance per node and cluster; not thread-safe (it keeps the send sequence and the
    per-sender replay windows).
    """

    def __init__(
        self,
        key: bytes,
        cluster_name: str,
        self_name: str,
        known_senders: Iterable[str],
        incarnation: int,
        max_age: float = 2.0,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the cluster key must be at least {MIN_KEY_BYTES} bytes")
        if not 0 <= incarnation <= _U64_MAX:
            raise ValueError("incarnation must fit in a u64")
        # Keying the HMAC once and copying it per packet skips re-hashing the padded key.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._cluster_id = cluster_id(cluster_name)
        self._self_name = _name_bytes(self_name, "self_name")
        self._recipient = _recipient(self._self_name)
        self._senders: dict[bytes, str] = {_name_bytes(n, "known sender"): n for n in known_senders}
        self._incarnation = incarnation
        self._sequence = 0
        self._guards = {name: ReplayGuard(max_age) for name in self._senders.values()}
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def sequence(self) -> int:
        """Sequence number of the last packet encoded (0 before the first)."""
        return self._sequence

    def encode(self, message: Message, timestamp_ms: int, *, to: str) -> bytes:
        """One authenticated packet for `message`, valid only at node `to`.

        The recipient's name is covered by the HMAC but not sent: a packet captured on its way
        to one node fails authentication at any other (no cross-node replays).

        `timestamp_ms` is this node's monotonic milliseconds since its incarnation started; it
        is reduced modulo 2**32 here so the caller never has to care about the wrap. Raises
        `EncodeError` (a ValueError) when a field does not fit the format or the packet would
        exceed `MAX_PACKET`; the sequence number is only used up by a successful encode.
        """
        kind = MESSAGE_TYPES.get(type(message))
        if kind is None:
            raise EncodeError(f"not a protocol message: {type(message).__name__}")
        if timestamp_ms < 0:
            raise EncodeError("timestamp_ms must not be negative")
        writer = Writer()
        encode_payload(writer, message)
        sequence = self._sequence + 1
        body = b"".join(
            (
                _FIXED.pack(MAGIC, VERSION, kind, self._cluster_id, len(self._self_name)),
                self._self_name,
                _COUNTERS.pack(self._incarnation, sequence, timestamp_ms & _TS_MASK),
                *writer.parts,
            )
        )
        size = len(body) + MAC_SIZE
        if size > MAX_PACKET:
            raise EncodeError(
                f"{kind.name} packet would be {size} bytes, over the {MAX_PACKET}-byte limit "
                "(fewer peers or shorter node names)"
            )
        mac = self._mac.copy()
        mac.update(_recipient(_name_bytes(to, "recipient")))
        mac.update(body)
        self._sequence = sequence
        return body + mac.digest()

    def decode(self, data: bytes | bytearray | memoryview) -> Decoded | Dropped:
        """Authenticate and parse one received datagram. Never raises for any input bytes;
        every drop is counted in `drops`."""
        result = self._decode(bytes(data))
        if isinstance(result, DropReason):
            self.drops[result] += 1
            return Dropped(result)
        return result

    def _decode(self, data: bytes) -> Decoded | DropReason:
        size = len(data)
        if size > MAX_PACKET:
            return DropReason.OVERSIZE
        if size < MIN_PACKET:
            return DropReason.TOO_SHORT
        if data[0:2] != MAGIC:
            return DropReason.BAD_MAGIC
        if data[2] != VERSION:
            return DropReason.BAD_VERSION
        if data[4:8] != self._cluster_id:
            return DropReason.OTHER_CLUSTER
        name_len = data[8]
        if name_len > MAX_NAME:
            return DropReason.MALFORMED
        if size < MIN_PACKET + name_len:
            return DropReason.TOO_SHORT
        counters_at = _FIXED.size + name_len
        raw_sender = data[_FIXED.size : counters_at]
        # Our own multicast/broadcast coming back is normal traffic, not an attack: its own
        # reason keeps it out of the unknown-sender count.
        if raw_sender == self._self_name:
            return DropReason.FROM_SELF
        sender = self._senders.get(raw_sender)
        if sender is None:
            return DropReason.UNKNOWN_SENDER

        body_end = size - MAC_SIZE
        mac = self._mac.copy()
        mac.update(self._recipient)
        mac.update(memoryview(data)[:body_end])
        if not hmac.compare_digest(mac.digest(), data[body_end:]):
            return DropReason.BAD_MAC

        # From here on the bytes were written by a cluster member holding the key.
        incarnation, sequence, timestamp_ms = _COUNTERS.unpack_from(data, counters_at)
        try:
            reader = Reader(data, counters_at + _COUNTERS.size, body_end)
            message = decode_payload(data[3], reader)
        except Malformed:
            return DropReason.MALFORMED

        verdict = self._guards[sender].admit(incarnation, sequence, timestamp_ms)
        if verdict is Verdict.REPLAY:
            return DropReason.REPLAY
        if verdict is Verdict.STALE:
            return DropReason.STALE
        return Decoded(sender, incarnation, sequence, timestamp_ms, message)


def _recipient(name: bytes) -> bytes:
    """The implicit header the HMAC covers: who the packet is for (u8 length + UTF-8 name)."""
    return bytes([len(name)]) + name
