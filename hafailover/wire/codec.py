"""Authenticated, versioned UDP wire format: one datagram carries a batch of messages.

Wire version 2. What one node sends one peer in one step, for every VIP group, travels in one
datagram (several only when it would not fit in `MAX_PACKET`): the HMAC, the header and the
syscall are paid once per peer and step, not once per group. Version 1 (one message per
datagram, no groups) is not understood any more: a version-1 packet is dropped as
`bad-version`, and a version-1 node drops ours the same way (see "Upgrading" below).

All fixed-size integers are unsigned big-endian. A *varint* is an unsigned LEB128 integer
(7 bits per byte, least significant group first, high bit = more bytes follow), at most a u64
and always in its shortest form. A *str* is a u8 byte length followed by UTF-8. A *flags* byte
packs booleans, bit 0 first; bits beyond the ones defined must be 0.

Packet layout (N = length of the sender name, B = length of the body):

| Offset    | Size | Field          | Encoding                                                  |
|-----------|------|----------------|-----------------------------------------------------------|
| 0         | 2    | magic          | b"HF"                                                     |
| 2         | 1    | version        | u8, currently 2                                           |
| 3         | 1    | kind           | u8, 1 = batch (the only kind so far)                      |
| 4         | 4    | cluster id     | first 4 bytes of sha256(UTF-8 cluster name)               |
| 8         | 1    | sender length  | u8, N, at most 64                                         |
| 9         | N    | sender         | UTF-8 node name                                           |
| 9+N       | 8    | incarnation    | u64, sender's start time in ns (see keys.new_incarnation) |
| 17+N      | 8    | sequence       | u64, 1, 2, 3, ... per sender incarnation                  |
| 25+N      | 4    | timestamp_ms   | u32, sender's monotonic ms since its incarnation started, |
|           |      |                | modulo 2**32 (wraps after 49.7 days)                      |
| 29+N      | B    | body           | the batch, below                                          |
| 29+N+B    | 32   | HMAC           | HMAC-SHA256, cluster key, over R + bytes [0, 29+N+B)      |

The body, in order:

1. **Config fingerprint** (node level): count u8 (<= 16), then per section: name str (1-32
   bytes), digest as u8 length (1-32) + bytes. Count 0: the sender did not send one. Peers
   compare it with their own to detect configuration drift (`Decoded.fingerprint`).
2. **Name table**: count u8 (<= 64), then that many distinct node names (str). Heartbeat peer
   summaries refer to a name by its index, so a node name costs one byte per group, not 1+n.
3. **Items**, until the end of the body: group str (0-64 bytes; 0: node level), message type u8
   (`MessageType`), payload length varint, payload. The length lets a receiver skip the item
   of a group it does not have (counted as `unknown-group`, the rest of the batch is
   delivered): during a configuration change the nodes' group lists differ.

| Type                    | Payload fields, in order                                         |
|-------------------------|------------------------------------------------------------------|
| 1 HEARTBEAT             | term varint, round varint, peer count u8 (<= 64), then per peer: |
|                         |   name index u8, flags (healthy, maintenance, reachable)         |
| 2 HEARTBEAT_ACK         | term varint, round varint, flags (success, healthy, maintenance) |
| 3 VOTE_REQUEST          | term varint, flags (pre, healthy, maintenance), transfer_from str|
| 4 VOTE_RESPONSE         | term varint, flags (pre, granted, healthy, maintenance),         |
|                         |   retry_after_ms varint (<= 2**32 - 1)                           |
| 5 TIMEOUT_NOW           | term varint                                                      |
| 6 TRANSFER_REQUEST      | term varint, request_id varint, target str                       |
| 7 MAINTENANCE_REQUEST   | term varint, request_id varint, flags (on)                       |
| 8 COMMAND_REPLY         | term varint, request_id varint, flags (accepted), reason str     |
|                         |   (a `Reason` value), detail as u16 length (<= 256) + UTF-8      |
| 9 NODE_HEARTBEAT        | seq varint, bucket count u8 (<= 16), then per bucket: index u8   |
|                         |   (< 16, ascending), digest u64 (not 0) (node level: no group)   |
| 10 NODE_ACK             | seq varint, match mask varint (< 2**16) (node level: no group)   |

Types 9 and 10 are node liveness (`hafailover.core.liveness`): they travel as items whose group
name is empty (length 0), and only they do; any other pairing is malformed.

`VoteResponse.retry_after` (float seconds) is sent in whole milliseconds, rounded *up* so that
a candidate never retries before the voter's promise has run out; it decodes to `ms / 1000`.
Integers keep the wire free of NaN and infinities. A `CommandReply.detail` over 256 bytes is
cut on a character boundary rather than refused.

Sizes: a 3-node heartbeat for a group named with 4 letters is about 18 bytes, its
acknowledgement about 12, so one 1400-byte datagram carries the heartbeats of some 70 such
groups; `Codec.encode_batch` splits a larger batch over as few datagrams as it needs, each
self-contained (own name table, fingerprint, sequence number and HMAC), and raises
`EncodeError` only for an item that could not fit even alone.

Decoding checks, in order; the first failure drops the whole packet with that `DropReason`:
size (oversize, too-short), magic, version, cluster id, sender (from-self, unknown-sender),
then the HMAC, and only then the kind and body (malformed) and replay protection (replay,
stale). Items of groups this node does not have are then counted as `unknown-group` one by one
and left out of `Decoded.items`. A header sender length over 64 is malformed; the kind byte is
only looked at once authenticated, so a flipped bit in it is bad-mac, never a parser error.
Cheap header checks come first so that garbage and other clusters' traffic cost no HMAC; the
body is parsed only once the packet is known to come from a cluster member, so the parser is
never exposed to unauthenticated input beyond the fixed header. The cluster id is not a
security measure (the HMAC is): it turns "two clusters share a network" into a clear
other-cluster count instead of a stream of bad-mac drops. The group name is inside the HMAC, so
a message can never be moved from one group's election to another's.

R is the recipient's name as u8 length + UTF-8; it is covered by the HMAC but never sent, so a
packet captured on its way to one node fails authentication at every other node.

Upgrading from wire version 1: the versions cannot talk to each other, so during a rolling
upgrade the cluster is split into the upgraded and the not-yet-upgraded nodes. Quorum keeps
that safe (only the side with a majority can hold a lease, and each side sees the other as
unreachable, counted as `bad-version`), at the cost of at most one failover, when the upgraded
side becomes the majority. Upgrade one node at a time, as for any restart.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from hafailover.core.groups import DEFAULT_GROUP, NODE_LEVEL
from hafailover.core.messages import MESSAGE_TYPES, Message, PeerSummary
from hafailover.wire.keys import MIN_KEY_BYTES
from hafailover.wire.payload import (
    MAX_STR,
    NODE_KINDS,
    EncodeError,
    Malformed,
    Reader,
    collect_names,
    decode_fingerprint,
    decode_names,
    decode_payload,
    encode_fingerprint,
    encode_names,
    encode_payload,
    uvarint,
)
from hafailover.wire.replay import ReplayGuard, Verdict

MAGIC = b"HF"
VERSION = 2
KIND_BATCH = 1
MAX_PACKET = 1400
MAX_NAME = MAX_STR  # node and group names, in the header and in payloads
MAC_SIZE = 32

_U64_MAX = (1 << 64) - 1
_TS_MASK = (1 << 32) - 1
# magic, version, kind, cluster id, sender length: everything before the sender name.
_FIXED = struct.Struct("!2sBB4sB")
# incarnation, sequence, timestamp_ms: everything between the sender name and the body.
_COUNTERS = struct.Struct("!QQI")
# The smallest body: no fingerprint, an empty name table, no items.
MIN_PACKET = _FIXED.size + _COUNTERS.size + 2 + MAC_SIZE

Item = tuple[str, Message]
"""One message of a batch and the VIP group whose election it belongs to."""


class DropReason(StrEnum):
    """Why `Codec.decode` dropped a packet (or, for unknown-group, one item of it). The values
    are stable (logs, metrics); new ones are only appended."""

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
    UNKNOWN_GROUP = "unknown-group"


@dataclass(frozen=True)
class Decoded:
    """An authenticated, fresh batch and its envelope."""

    sender: str
    incarnation: int
    sequence: int
    timestamp_ms: int  # as on the wire: modulo 2**32
    items: tuple[Item, ...]
    fingerprint: tuple[tuple[str, bytes], ...] = ()
    # Groups the sender sent items for that this node does not have (configuration drift).
    unknown_groups: tuple[str, ...] = field(default=())

    @property
    def message(self) -> Message:
        """The first message (for a caller that sends one message per packet). Raises
        LookupError for a batch without items."""
        if not self.items:
            raise LookupError("the batch carries no message")
        return self.items[0][1]


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
    """Encodes this node's batches and authenticates, parses and replay-checks its peers'.

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
        *,
        groups: Iterable[str] = (DEFAULT_GROUP,),
        fingerprint: Mapping[str, bytes] | None = None,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the cluster key must be at least {MIN_KEY_BYTES} bytes")
        if not 0 <= incarnation <= _U64_MAX:
            raise ValueError("incarnation must fit in a u64")
        # Keying the HMAC once and copying it per packet skips re-hashing the padded key.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._cluster_id = cluster_id(cluster_name)
        self._self_name = _name_bytes(self_name, "self_name")
        self._prefix = (
            _FIXED.pack(MAGIC, VERSION, KIND_BATCH, self._cluster_id, len(self._self_name))
            + self._self_name
        )
        self._recipient = _recipient(self._self_name)
        self._recipients: dict[str, bytes] = {}
        self._senders: dict[bytes, str] = {_name_bytes(n, "known sender"): n for n in known_senders}
        self._incarnation = incarnation
        self._sequence = 0
        self._guards = {name: ReplayGuard(max_age) for name in self._senders.values()}
        self._groups: frozenset[str] = frozenset()
        self._fingerprints: dict[bytes, tuple[tuple[str, bytes], ...]] = {}
        self._name_tables: dict[bytes, tuple[str, ...]] = {}
        self._group_tags: dict[str, bytes] = {}
        self._group_names: dict[bytes, str] = {}
        self.set_groups(groups)
        self._fingerprint = b"\x00"
        self.set_fingerprint(fingerprint or {})
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def sequence(self) -> int:
        """Sequence number of the last packet encoded (0 before the first)."""
        return self._sequence

    @property
    def groups(self) -> frozenset[str]:
        return self._groups

    def set_groups(self, groups: Iterable[str]) -> None:
        """The groups this node has (after a configuration reload): items of other groups are
        dropped on receipt, and only these may be sent."""
        names = tuple(groups)
        tags = {g: _group_tag(g) for g in names}
        self._groups = frozenset(names)
        self._group_names = {tag[1:]: g for g, tag in tags.items()}
        tags[NODE_LEVEL] = _NODE_TAG  # node-level items: always sent and understood
        self._group_tags = tags

    def set_fingerprint(self, fingerprint: Mapping[str, bytes]) -> None:
        """The configuration fingerprint (section -> digest) sent in every packet from now on.
        Raises EncodeError if it does not fit the format."""
        self._fingerprint = encode_fingerprint(fingerprint)

    def encode_batch(self, items: Sequence[Item], timestamp_ms: int, *, to: str) -> list[bytes]:
        """Authenticated packets for `items` (in order), valid only at node `to`: one packet
        unless they do not fit in `MAX_PACKET`, none for no items.

        The recipient's name is covered by the HMAC but not sent: a packet captured on its way
        to one node fails authentication at any other (no cross-node replays).

        `timestamp_ms` is this node's monotonic milliseconds since its incarnation started; it
        is reduced modulo 2**32 here so the caller never has to care about the wrap. Raises
        `EncodeError` (a ValueError) when a field does not fit the format, a group is not one
        of this node's, or one item alone would exceed `MAX_PACKET`; nothing is sent then, and
        sequence numbers are only used up by packets actually returned.
        """
        if not items:
            return []
        if timestamp_ms < 0:
            raise EncodeError("timestamp_ms must not be negative")
        names = collect_names([m for _, m in items])
        head = self._fingerprint + encode_names(names)
        memo: dict[object, bytes] = {}
        overhead = len(self._prefix) + _COUNTERS.size + len(head) + MAC_SIZE
        room = MAX_PACKET - overhead
        chunks: list[list[bytes]] = [[]]
        used = 0
        for group, message in items:
            encoded = self._item(group, message, names, memo)
            if len(encoded) > room:
                raise EncodeError(
                    f"{type(message).__name__} for group {group!r} would make a "
                    f"{len(encoded) + overhead}-byte packet, over the {MAX_PACKET}-byte limit "
                    "(fewer peers or shorter node names)"
                )
            if used + len(encoded) > room:
                chunks.append([])
                used = 0
            chunks[-1].append(encoded)
            used += len(encoded)
        recipient = self._recipients.get(to)
        if recipient is None:
            recipient = self._recipients[to] = _recipient(_name_bytes(to, "recipient"))
        ts = timestamp_ms & _TS_MASK
        packets = []
        for chunk in chunks:
            self._sequence += 1
            body = b"".join(
                (self._prefix, _COUNTERS.pack(self._incarnation, self._sequence, ts), head, *chunk)
            )
            mac = self._mac.copy()
            mac.update(recipient)
            mac.update(body)
            packets.append(body + mac.digest())
        return packets

    def encode(
        self, message: Message, timestamp_ms: int, *, to: str, group: str = DEFAULT_GROUP
    ) -> bytes:
        """One packet carrying one message (a batch of one)."""
        return self.encode_batch([(group, message)], timestamp_ms, to=to)[0]

    def _item(
        self, group: str, message: Message, names: Mapping[str, int], memo: dict[object, bytes]
    ) -> bytes:
        tag = self._group_tags.get(group)
        if tag is None:
            raise EncodeError(f"group {group!r} is not one of this node's groups")
        kind = MESSAGE_TYPES.get(type(message))
        if kind is None:
            raise EncodeError(f"not a protocol message: {type(message).__name__}")
        if (kind in NODE_KINDS) != (group == NODE_LEVEL):
            raise EncodeError(
                f"{type(message).__name__} cannot travel in group {group!r}: node-level "
                "messages go in the group '' and election messages in a named group"
            )
        payload = encode_payload(message, names, memo)
        return b"".join((tag, bytes((kind,)), uvarint(len(payload), "length"), payload))

    def decode(self, data: bytes | bytearray | memoryview) -> Decoded | Dropped:
        """Authenticate and parse one received datagram. Never raises for any input bytes;
        every drop is counted in `drops`."""
        result = self._decode(bytes(data))
        if isinstance(result, DropReason):
            self.drops[result] += 1
            return Dropped(result)
        if result.unknown_groups:
            self.drops[DropReason.UNKNOWN_GROUP] += len(result.unknown_groups)
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
            if data[3] != KIND_BATCH:
                raise Malformed(f"unknown packet kind {data[3]}")
            fingerprint, items, unknown = self._body(
                Reader(data, counters_at + _COUNTERS.size, body_end)
            )
        except Malformed:
            return DropReason.MALFORMED

        verdict = self._guards[sender].admit(incarnation, sequence, timestamp_ms)
        if verdict is Verdict.REPLAY:
            return DropReason.REPLAY
        if verdict is Verdict.STALE:
            return DropReason.STALE
        return Decoded(sender, incarnation, sequence, timestamp_ms, items, fingerprint, unknown)

    def _body(
        self, r: Reader
    ) -> tuple[tuple[tuple[str, bytes], ...], tuple[Item, ...], tuple[str, ...]]:
        # A sender's fingerprint and name table are the same bytes in datagram after datagram:
        # parse each distinct one once (both encodings are self-delimiting, so equal bytes at
        # this position parse to the same value and length).
        fingerprint = _memoized(r, self._fingerprints, decode_fingerprint)
        names = _memoized(r, self._name_tables, decode_names)
        items: list[Item] = []
        unknown: list[str] = []
        memo: dict[bytes, tuple[PeerSummary, ...]] = {}
        data, body_end, known = r.data, r.end, self._group_names
        pos = r.pos
        while pos < body_end:
            # Group str, type u8, length varint: read in place (one item per group and peer
            # and round makes this the hottest loop of the decoder).
            n = data[pos]
            tag_end = pos + 1 + n
            if n > MAX_NAME or tag_end + 2 > body_end:
                raise Malformed("bad item header")
            raw = data[pos + 1 : tag_end]
            kind = data[tag_end]
            if (n == 0) != (kind in NODE_KINDS):
                raise Malformed("node-level message in a group, or election message in none")
            length = data[tag_end + 1]
            pos = tag_end + 2
            if length >= 0x80:
                # The reader may still be bounded by the previous item's end.
                r.pos, r.end = tag_end + 1, body_end
                length = r.uvarint()
                pos = r.pos
            end = pos + length
            if end > body_end:
                raise Malformed("item runs past the body")
            group = known.get(raw) if n else NODE_LEVEL
            if group is None:
                try:
                    unknown.append(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise Malformed("group name is not UTF-8") from e
            else:
                r.pos, r.end = pos, end
                items.append((group, decode_payload(kind, r, names, memo)))
            pos = end
        return fingerprint, tuple(items), tuple(unknown)


_MEMO_ENTRIES = 16
_T = TypeVar("_T")


def _memoized(r: Reader, memo: dict[bytes, _T], parse: Callable[[Reader], _T]) -> _T:
    data, pos, end = r.data, r.pos, r.end
    for raw, value in memo.items():
        if data.startswith(raw, pos, end):
            r.pos = pos + len(raw)
            return value
    value = parse(r)
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[data[pos : r.pos]] = value
    return value


def _recipient(name: bytes) -> bytes:
    """The implicit header the HMAC covers: who the packet is for (u8 length + UTF-8 name)."""
    return bytes([len(name)]) + name


_NODE_TAG = b"\x00"  # the empty group name: a node-level item


def _group_tag(group: str) -> bytes:
    raw = _name_bytes(group, "group")
    return bytes([len(raw)]) + raw
