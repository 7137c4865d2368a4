"""The wire codec (version 2, batches): byte layout, round trips, and every drop reason.

`forge` below builds packets from the documented layout with plain struct/hmac calls, so the
layout is pinned by an implementation independent of the codec's own encoder.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hafailover.core.liveness import BUCKETS
from hafailover.core.messages import (
    MESSAGE_TYPES,
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
from hafailover.wire import (
    MAX_PACKET,
    Codec,
    Decoded,
    Dropped,
    DropReason,
    EncodeError,
    Item,
)
from hafailover.wire.payload import MAX_BUCKETS

KEY = bytes(range(32))
CLUSTER = "prod"
NODES = ("alpha", "bravo", "charlie")
GROUPS = ("web", "db", "default")
INC = 1_700_000_000_000_000_000


def codec(
    name: str = "bravo",
    *,
    key: bytes = KEY,
    cluster: str = CLUSTER,
    senders: tuple[str, ...] = NODES,
    incarnation: int = INC,
    max_age: float = 2.0,
    groups: tuple[str, ...] = GROUPS,
    fingerprint: dict[str, bytes] | None = None,
) -> Codec:
    return Codec(
        key, cluster, name, senders, incarnation, max_age, groups=groups, fingerprint=fingerprint
    )


def varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def item(group: str, kind: int, payload: bytes) -> bytes:
    return bytes([len(group)]) + group.encode() + bytes([kind]) + varint(len(payload)) + payload


def forge(
    items: bytes = b"",
    *,
    names: bytes = b"\x00",
    fingerprint: bytes = b"\x00",
    sender: str = "alpha",
    incarnation: int = INC,
    sequence: int = 1,
    ts: int = 0,
    key: bytes = KEY,
    cluster: str = CLUSTER,
    to: str = "bravo",
    version: int = 2,
    kind: int = 1,
) -> bytes:
    name = sender.encode()
    body = (
        b"HF"
        + bytes([version, kind])
        + hashlib.sha256(cluster.encode()).digest()[:4]
        + bytes([len(name)])
        + name
        + struct.pack("!QQI", incarnation, sequence, ts)
        + fingerprint
        + names
        + items
    )
    recipient = bytes([len(to.encode())]) + to.encode()
    return body + hmac.new(key, recipient + body, hashlib.sha256).digest()


def reason(result: Decoded | Dropped) -> DropReason | None:
    return result.reason if isinstance(result, Dropped) else None


def decoded(result: Decoded | Dropped) -> Decoded:
    assert isinstance(result, Decoded), result
    return result


# --- the byte layout, pinned -------------------------------------------------------------------

TWO_PEERS = (PeerSummary("bravo", True, False, True), PeerSummary("c", False, True, False))
TWO_NAMES = b"\x02\x05bravo\x01c"
GOLDEN: list[tuple[Message, bytes, bytes]] = [  # message, payload, name table
    (Heartbeat(7, 9, TWO_PEERS), b"\x07\x09\x02" + b"\x00\x05" + b"\x01\x02", TWO_NAMES),
    (Heartbeat(1, 2), b"\x01\x02\x00", b"\x00"),
    (Heartbeat(300, 2**14), b"\xac\x02" + b"\x80\x80\x01" + b"\x00", b"\x00"),
    (HeartbeatAck(3, 4, True, False, True), b"\x03\x04\x05", b"\x00"),
    (VoteRequest(5, True, True, False, "alpha"), b"\x05\x03\x05alpha", b"\x00"),
    (VoteRequest(5, False, False, True), b"\x05\x04\x00", b"\x00"),
    (VoteResponse(6, False, True, True, False, 0.25), b"\x06\x06\xfa\x01", b"\x00"),
    (TimeoutNow(2**64 - 1), b"\xff" * 9 + b"\x01", b"\x00"),
    (TransferRequest(8, "bravo", 300), b"\x08\xac\x02\x05bravo", b"\x00"),
    (TransferRequest(8), b"\x08\x00\x00", b"\x00"),
    (MaintenanceRequest(9, True, 1), b"\x09\x01\x01", b"\x00"),
    (
        CommandReply(10, 2, False, Reason.NOT_LEADER, "n1"),
        b"\x0a\x02\x00\x0anot-leader\x00\x02n1",
        b"\x00",
    ),
]


NODE_GOLDEN: list[tuple[Message, bytes]] = [  # node-level message, payload (group '')
    (NodeHeartbeat(5, ((3, 0x0102030405060708),)), b"\x05\x01\x03" + bytes(range(1, 9))),
    (
        NodeHeartbeat(300, ((0, 2**64 - 1), (15, 1))),
        b"\xac\x02\x02" + b"\x00" + b"\xff" * 8 + b"\x0f" + b"\x00" * 7 + b"\x01",
    ),
    (NodeAck(7, 0b1001), b"\x07\x09"),
    (NodeAck(2**14, 0xFFFF), b"\x80\x80\x01\xff\xff\x03"),
]


def test_node_liveness_buckets_agree_between_core_and_wire() -> None:
    assert BUCKETS == MAX_BUCKETS


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01\x01\x10" + b"\x01" * 8,  # bucket 16
        b"\x01\x01\x02" + b"\x00" * 8,  # digest 0 (an empty bucket is left out)
        b"\x01\x02\x02" + b"\x01" * 8 + b"\x02" + b"\x01" * 8,  # not ascending
        b"\x01\x11",  # 17 buckets
    ],
)
def test_bad_node_heartbeats_are_malformed(payload: bytes) -> None:
    assert codec().decode(forge(item("", 9, payload))) == Dropped(DropReason.MALFORMED)


def test_golden_examples_cover_every_message_type() -> None:
    covered = {MESSAGE_TYPES[type(m)] for m, _, _ in GOLDEN}
    covered |= {MESSAGE_TYPES[type(m)] for m, _ in NODE_GOLDEN}
    assert covered == set(MessageType)


@pytest.mark.parametrize(("message", "payload"), NODE_GOLDEN)
def test_node_level_items_have_an_empty_group_name(message: Message, payload: bytes) -> None:
    kind = MESSAGE_TYPES[type(message)]
    expected = forge(item("", kind, payload), sequence=1, ts=9)
    assert codec("alpha").encode_batch([("", message)], 9, to="bravo") == [expected]
    assert codec().decode(expected) == Decoded("alpha", INC, 1, 9, (("", message),))


def test_node_and_election_messages_never_swap_places() -> None:
    sender = codec("alpha")
    with pytest.raises(EncodeError, match="node-level"):
        sender.encode_batch([("web", NodeAck(1, 1))], 0, to="bravo")
    with pytest.raises(EncodeError, match="node-level"):
        sender.encode_batch([("", TimeoutNow(1))], 0, to="bravo")
    receiver = codec()
    for bad in (item("web", 10, b"\x01\x01"), item("", 5, b"\x01")):  # ack in a group, ...
        assert receiver.decode(forge(bad)) == Dropped(DropReason.MALFORMED)


@pytest.mark.parametrize(("message", "payload", "names"), GOLDEN)
def test_encode_matches_documented_layout(message: Message, payload: bytes, names: bytes) -> None:
    sender = codec("alpha")
    kind = MESSAGE_TYPES[type(message)]
    expected = forge(item("web", kind, payload), names=names, sequence=1, ts=1234)
    assert sender.encode_batch([("web", message)], 1234, to="bravo") == [expected]
    assert codec().decode(expected) == Decoded("alpha", INC, 1, 1234, (("web", message),))


def test_a_batch_of_several_groups_is_one_packet_in_order() -> None:
    items: list[Item] = [
        ("web", Heartbeat(4, 1, TWO_PEERS)),
        ("db", HeartbeatAck(2, 9, True, True, False)),
        ("web", TimeoutNow(4)),
    ]
    packets = codec("alpha", fingerprint={"nodes": b"\x01\x02"}).encode_batch(items, 5, to="bravo")
    expected = forge(
        item("web", 1, b"\x04\x01\x02\x00\x05\x01\x02")
        + item("db", 2, b"\x02\x09\x03")
        + item("web", 5, b"\x04"),
        names=TWO_NAMES,
        fingerprint=b"\x01\x05nodes\x02\x01\x02",
        ts=5,
    )
    assert packets == [expected]
    got = decoded(codec().decode(expected))
    assert got.items == tuple(items)
    assert got.fingerprint == (("nodes", b"\x01\x02"),)
    assert got.message == items[0][1]


def test_no_items_no_packet() -> None:
    sender = codec("alpha")
    assert sender.encode_batch([], 0, to="bravo") == []
    assert sender.sequence == 0


def test_sequence_increases_and_timestamp_wraps_mod_2_32() -> None:
    sender, receiver = codec("alpha"), codec()
    first = decoded(receiver.decode(sender.encode(TimeoutNow(1), 2**32 + 5, to="bravo")))
    second = decoded(receiver.decode(sender.encode(TimeoutNow(1), 2**32 + 6, to="bravo")))
    assert (first.sequence, first.timestamp_ms) == (1, 5)
    assert (second.sequence, second.timestamp_ms) == (2, 6)
    assert first.items == (("default", TimeoutNow(1)),)
    assert sender.sequence == 2


@pytest.mark.parametrize(
    ("seconds", "ms"), [(0.0, 0), (0.0004, 1), (0.6, 600), (1.0005, 1001), (4294967.295, 2**32 - 1)]
)
def test_retry_after_is_sent_as_ms_rounded_up(seconds: float, ms: int) -> None:
    packet = codec("alpha").encode(
        VoteResponse(1, False, False, True, False, seconds), 0, to="bravo"
    )
    assert decoded(codec().decode(packet)).message == VoteResponse(
        1, False, False, True, False, ms / 1000
    )


def test_a_long_reply_detail_is_cut_on_a_character_boundary() -> None:
    reply = CommandReply(1, 1, False, Reason.COMMAND_TIMEOUT, "é" * 200)  # 400 bytes
    got = decoded(codec().decode(codec("alpha").encode(reply, 0, to="bravo"))).message
    assert isinstance(got, CommandReply) and got.detail == "é" * 128



def test_an_item_of_128_bytes_or_more_after_another_item_decodes() -> None:
    # Its length takes a two-byte varint, read while the reader was still bounded by the
    # previous item's end: the whole packet used to be dropped as malformed.
    items: list[Item] = [
        ("web", Heartbeat(1, 1)),
        ("web", CommandReply(1, 7, False, Reason.COMMAND_TIMEOUT, "x" * 200)),
    ]
    packets = codec("alpha").encode_batch(items, 5, to="bravo")
    assert len(packets) == 1
    assert decoded(codec().decode(packets[0])).items == tuple(items)

# --- splitting big batches ---------------------------------------------------------------------

PEERS3 = tuple(PeerSummary(n, True, False, True) for n in NODES)


def test_fifty_groups_of_heartbeats_fit_one_packet() -> None:
    groups = tuple(f"group-{i:02d}" for i in range(50))
    items: list[Item] = [(g, Heartbeat(12, 90_000, PEERS3)) for g in groups]
    packets = codec("alpha", groups=groups).encode_batch(items, 0, to="bravo")
    assert len(packets) == 1 and len(packets[0]) <= MAX_PACKET
    assert decoded(codec(groups=groups).decode(packets[0])).items == tuple(items)


def test_a_batch_too_big_for_one_packet_is_split_in_order() -> None:
    groups = tuple(f"group-{i:03d}" for i in range(500))
    items: list[Item] = [(g, Heartbeat(12, 90_000, PEERS3)) for g in groups]
    sender, receiver = codec("alpha", groups=groups), codec(groups=groups)
    packets = sender.encode_batch(items, 0, to="bravo")
    assert all(len(p) <= MAX_PACKET for p in packets)
    assert 8 <= len(packets) <= 10  # as few as fit: ~25 bytes an item, ~1300 bytes a packet
    got = [decoded(receiver.decode(p)) for p in packets]
    assert [d.sequence for d in got] == list(range(1, len(packets) + 1))
    assert tuple(i for d in got for i in d.items) == tuple(items)
    assert sender.sequence == len(packets)


def test_an_item_that_cannot_fit_alone_is_refused_and_nothing_is_used_up() -> None:
    names = tuple(f"{i:02d}" + "n" * 62 for i in range(20))
    big = Heartbeat(1, 1, tuple(PeerSummary(n, True, True, True) for n in names))
    sender = codec("alpha", senders=(*NODES, *names))
    with pytest.raises(EncodeError, match="over the 1400-byte limit"):
        sender.encode_batch([("web", TimeoutNow(1)), ("web", big)], 0, to="bravo")
    assert sender.sequence == 0


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Heartbeat(1, 1, tuple(PeerSummary("n", True, True, True) for _ in range(65))), "65 peers"),
        (
            Heartbeat(1, 1, tuple(PeerSummary(f"n{i}", True, True, True) for i in range(65))),
            "65 distinct peer names",
        ),
        (TimeoutNow(2**64), "term 18446744073709551616 does not fit in a u64"),
        (TimeoutNow(-1), "term -1 does not fit"),
        (TransferRequest(1, "x" * 65), "target 'xxx"),
        (TransferRequest(1, "x", -1), "request_id -1"),
        (VoteResponse(1, False, False, True, False, -0.5), "retry_after must be a finite"),
        (VoteResponse(1, False, False, True, False, float("nan")), "retry_after must be"),
        (VoteResponse(1, False, False, True, False, 4294967.296), "retry_after in ms 4294967296"),
    ],
)
def test_encode_rejects_fields_that_do_not_fit(message: Message, error: str) -> None:
    with pytest.raises(EncodeError, match=error):
        codec("alpha").encode(message, 0, to="bravo")


def test_encode_refuses_a_group_this_node_does_not_have() -> None:
    with pytest.raises(EncodeError, match="group 'mail' is not one of this node's groups"):
        codec("alpha").encode(TimeoutNow(1), 0, to="bravo", group="mail")


@pytest.mark.parametrize(
    ("fingerprint", "error"),
    [
        ({f"s{i}": b"d" for i in range(17)}, "17 fingerprint sections"),
        ({"": b"d"}, "needs a name"),
        ({"nodes": b""}, "1 to 32 bytes"),
        ({"nodes": b"d" * 33}, "1 to 32 bytes"),
        ({"s" * 33: b"d"}, "over 32 bytes"),
    ],
)
def test_fingerprint_limits(fingerprint: dict[str, bytes], error: str) -> None:
    with pytest.raises(EncodeError, match=error):
        codec("alpha", fingerprint=fingerprint)


def test_constructor_validates_key_and_names() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        codec(key=b"k" * 15)
    with pytest.raises(ValueError, match="self_name"):
        codec("x" * 65)
    with pytest.raises(ValueError, match="known sender ''"):
        codec(senders=("alpha", ""))
    with pytest.raises(ValueError, match="group ''"):
        codec(groups=("web", ""))


# --- round trips -------------------------------------------------------------------------------

names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64)
u64 = st.integers(0, 2**64 - 1)
flags = st.booleans()
retry_ms = st.integers(0, 2**32 - 1)
peers = st.builds(PeerSummary, name=names, healthy=flags, maintenance=flags, reachable=flags)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Heartbeat, term=u64, round=u64, peers=st.lists(peers, max_size=20).map(tuple)),
    st.builds(HeartbeatAck, term=u64, round=u64, success=flags, healthy=flags, maintenance=flags),
    st.builds(VoteRequest, u64, flags, flags, flags, names),  # term, pre, healthy, maint., from
    st.builds(VoteResponse, u64, flags, flags, flags, flags, retry_ms.map(lambda ms: ms / 1000)),
    st.builds(TimeoutNow, term=u64),
    st.builds(TransferRequest, term=u64, target=names, request_id=u64),
    st.builds(MaintenanceRequest, term=u64, on=flags, request_id=u64),
    st.builds(CommandReply, u64, u64, flags, st.sampled_from(list(Reason)), st.text(max_size=60)),
)
batches = st.lists(st.tuples(st.sampled_from(GROUPS), messages), min_size=1, max_size=12)


@given(batches, st.integers(0, 2**32 - 1), u64)
def test_round_trip_of_any_batch(items: list[Item], ts: int, incarnation: int) -> None:
    sender, receiver = codec("alpha", incarnation=incarnation), codec()
    try:
        packets = sender.encode_batch(items, ts, to="bravo")
    except EncodeError as e:  # only possible for a heartbeat whose peer list alone is too big
        assert "distinct peer names" in str(e) or "over the 1400-byte limit" in str(e)
        return
    got = [decoded(receiver.decode(p)) for p in packets]
    assert all(len(p) <= MAX_PACKET for p in packets)
    assert all((d.sender, d.incarnation, d.timestamp_ms) == ("alpha", incarnation, ts) for d in got)
    assert tuple(i for d in got for i in d.items) == tuple(items)


# --- groups this node does not have ------------------------------------------------------------


def test_items_of_unknown_groups_are_counted_and_the_rest_delivered() -> None:
    sender = codec("alpha", groups=("web", "db", "mail"), fingerprint={"groups": b"\x07"})
    receiver = codec(groups=("web",))
    packet = sender.encode_batch(
        [("mail", TimeoutNow(1)), ("web", TimeoutNow(2)), ("db", Heartbeat(3, 4, PEERS3))],
        0,
        to="bravo",
    )[0]
    got = decoded(receiver.decode(packet))
    assert got.items == (("web", TimeoutNow(2)),)
    assert got.unknown_groups == ("mail", "db")
    assert receiver.drops[DropReason.UNKNOWN_GROUP] == 2
    assert sum(receiver.drops.values()) == 2


def test_a_batch_of_only_unknown_groups_still_brings_the_fingerprint() -> None:
    packet = codec("alpha", groups=("mail",), fingerprint={"groups": b"\x07"}).encode(
        TimeoutNow(1), 0, to="bravo", group="mail"
    )
    got = decoded(codec(groups=("web",)).decode(packet))
    assert got.items == () and got.fingerprint == (("groups", b"\x07"),)
    with pytest.raises(LookupError):
        _ = got.message


def test_set_groups_takes_effect_for_both_directions() -> None:
    sender, receiver = codec("alpha", groups=("web",)), codec(groups=("web",))
    sender.set_groups(("web", "db"))
    packet = sender.encode(TimeoutNow(1), 0, to="bravo", group="db")
    assert decoded(receiver.decode(packet)).unknown_groups == ("db",)
    receiver.set_groups(("db",))
    packet = sender.encode(TimeoutNow(1), 1, to="bravo", group="db")
    assert decoded(receiver.decode(packet)).items == (("db", TimeoutNow(1)),)


# --- drops -------------------------------------------------------------------------------------


def test_drop_reason_values_are_stable() -> None:
    assert [r.value for r in DropReason] == [
        "too-short", "bad-magic", "bad-version", "other-cluster", "bad-mac", "unknown-sender",
        "from-self", "malformed", "replay", "stale", "oversize", "unknown-group",
    ]  # fmt: skip


def assert_dropped(receiver: Codec, data: bytes, expected: DropReason) -> None:
    before = dict(receiver.drops)
    assert receiver.decode(data) == Dropped(expected)
    assert receiver.drops == {**before, expected: before[expected] + 1}


def test_header_drops() -> None:
    good = forge(item("web", 5, b"\x01"))
    receiver = codec()
    assert_dropped(receiver, b"", DropReason.TOO_SHORT)
    assert_dropped(receiver, good[:62], DropReason.TOO_SHORT)
    assert_dropped(receiver, good + bytes(MAX_PACKET + 1 - len(good)), DropReason.OVERSIZE)
    assert_dropped(receiver, b"XF" + good[2:], DropReason.BAD_MAGIC)
    assert_dropped(receiver, good[:2] + b"\x01" + good[3:], DropReason.BAD_VERSION)
    assert_dropped(receiver, good[:8] + b"\x41" + good[9:], DropReason.MALFORMED)  # name len 65
    assert_dropped(receiver, good[:8] + b"\x40" + good[9:], DropReason.TOO_SHORT)  # 64 > space
    assert isinstance(receiver.decode(good), Decoded)


def test_a_version_1_packet_is_bad_version() -> None:
    v1 = forge(struct.pack("!Q", 1), version=1, kind=MessageType.TIMEOUT_NOW, fingerprint=b"",
               names=b"")  # fmt: skip
    assert_dropped(codec(), v1, DropReason.BAD_VERSION)


def test_wrong_key_other_cluster_unknown_sender_and_self() -> None:
    packet = codec("alpha").encode(TimeoutNow(1), 0, to="bravo")
    assert_dropped(codec(key=b"\x01" * 32), packet, DropReason.BAD_MAC)
    assert_dropped(codec(cluster="staging"), packet, DropReason.OTHER_CLUSTER)
    assert_dropped(codec(senders=("bravo", "charlie")), packet, DropReason.UNKNOWN_SENDER)
    assert_dropped(codec("alpha"), packet, DropReason.FROM_SELF)
    stranger = Codec(KEY, CLUSTER, "mallory", NODES, INC).encode(TimeoutNow(1), 0, to="bravo")
    assert_dropped(codec(), stranger, DropReason.UNKNOWN_SENDER)


def test_every_single_bit_flip_is_dropped_for_the_right_reason() -> None:
    packet = codec("alpha").encode(TransferRequest(3, "bravo", 7), 77, to="bravo", group="web")
    header_end = 9 + len("alpha")
    for offset in range(len(packet)):
        for bit in range(8):
            flipped = bytearray(packet)
            flipped[offset] ^= 1 << bit
            got = reason(codec().decode(bytes(flipped)))
            if offset < 2:
                assert got is DropReason.BAD_MAGIC
            elif offset == 2:
                assert got is DropReason.BAD_VERSION
            elif 4 <= offset < 8:
                assert got is DropReason.OTHER_CLUSTER
            elif offset == 3:  # the kind byte is only checked once authenticated
                assert got is DropReason.BAD_MAC
            elif offset == 8:
                assert got in {
                    DropReason.UNKNOWN_SENDER,
                    DropReason.TOO_SHORT,
                    DropReason.MALFORMED,
                }
            elif offset < header_end:
                assert got is DropReason.UNKNOWN_SENDER
            else:  # counters, body and the MAC itself
                assert got is DropReason.BAD_MAC, (offset, bit)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (item("web", 5, b"\x01\x00"), b"\x00"),  # trailing byte in a payload
        (item("web", 5, b""), b"\x00"),  # truncated payload
        (item("web", 5, b"\x81\x00"), b"\x00"),  # varint not in shortest form
        (item("web", 5, b"\xff" * 10 + b"\x01"), b"\x00"),  # varint over 64 bits
        (item("web", 5, b"\xff" * 9 + b"\x02"), b"\x00"),  # varint of 2**64
        (item("web", 7, b"\x01\x01\x02"), b"\x00"),  # an undefined flag bit
        (item("web", 2, b"\x01\x01\x08"), b"\x00"),  # an undefined flag bit
        (item("web", 6, b"\x01\x00\x02\xc3\x28"), b"\x00"),  # bad UTF-8
        (item("web", 6, b"\x01\x00\x41" + b"x" * 65), b"\x00"),  # string over 64 bytes
        (item("web", 1, b"\x01\x01\x01\x01\x00"), b"\x01\x01a"),  # name index outside the table
        (item("web", 1, b"\x01\x01\x41" + b"\x00\x00" * 65), b"\x01\x01a"),  # 65 peers
        (item("web", 4, b"\x01\x00\x80\x80\x80\x80\x10"), b"\x00"),  # retry_after 2**32 ms
        (item("web", 8, b"\x01\x01\x01\x04nope\x00\x00"), b"\x00"),  # unknown reason
        (item("web", 8, b"\x01\x01\x01\x08accepted\x01\x01" + b"x" * 257), b"\x00"),  # > 256
        (item("web", 99, b"\x01"), b"\x00"),  # unknown message type
        (item("", 5, b"\x01"), b"\x00"),  # empty group name
        (item("web", 5, b"\x01")[:-1], b"\x00"),  # item length past the body
        (b"\x03web\x05", b"\x00"),  # item cut in its header
        (b"", b"\x02\x01a\x01a"),  # duplicate name in the table
        (b"", b"\x41" + b"\x01a" * 65),  # 65 names
        (b"", b"\x01"),  # the name table cut short
    ],
)
def test_authenticated_but_malformed_body(body: bytes, names: bytes) -> None:
    assert_dropped(codec(), forge(body, names=names), DropReason.MALFORMED)


@pytest.mark.parametrize(
    "fingerprint",
    [
        b"\x11" + b"\x01s\x01d" * 17,  # 17 sections
        b"\x01\x00\x01d",  # empty section name
        b"\x01\x01s\x00",  # empty digest
        b"\x01\x01s\x21" + b"d" * 33,  # digest over 32 bytes
        b"\x02\x01s\x01d\x01s\x01e",  # duplicate section
    ],
)
def test_malformed_fingerprint(fingerprint: bytes) -> None:
    assert_dropped(codec(), forge(fingerprint=fingerprint), DropReason.MALFORMED)


def test_an_unknown_packet_kind_is_malformed() -> None:
    assert_dropped(codec(), forge(kind=2), DropReason.MALFORMED)


@given(st.binary(max_size=MAX_PACKET + 100))
def test_garbage_never_raises_and_is_counted(data: bytes) -> None:
    receiver = codec()
    result = receiver.decode(data)
    assert isinstance(result, Dropped)
    assert receiver.drops[result.reason] == 1
    assert sum(receiver.drops.values()) == 1


@given(st.binary(max_size=200))
def test_random_body_behind_a_valid_header_is_bad_mac(rest: bytes) -> None:
    body = forge()[:-32] + rest
    assert reason(codec().decode(body)) in {DropReason.BAD_MAC, DropReason.TOO_SHORT}


@given(st.one_of(st.binary(min_size=2, max_size=300), st.binary(max_size=300).map(b"\0\0".__add__)))
def test_authenticated_random_body_parses_to_what_re_encodes_or_is_malformed(
    body: bytes,
) -> None:
    receiver = codec()
    result = receiver.decode(forge(body, fingerprint=b"", names=b""))
    if isinstance(result, Dropped):
        assert result.reason is DropReason.MALFORMED
        return
    # Accepted: what came out is a batch our encoder can send, and it decodes the same again.
    sender = codec("alpha", incarnation=INC + 1)
    try:
        packets = sender.encode_batch(list(result.items), 0, to="bravo")
    except EncodeError:
        return
    again = [decoded(codec().decode(p)) for p in packets]
    assert tuple(i for d in again for i in d.items) == result.items


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    items = draw(batches)
    try:
        packets = codec("alpha").encode_batch(items, 5, to="bravo")
    except EncodeError:
        assume(False)
        raise
    assume(len(packets) == 1)
    packet = packets[0]
    data = bytearray(packet)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["xor", "truncate", "extend", "delete"]))
        if op == "xor" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=40))
        elif op == "delete" and data:
            del data[draw(st.integers(0, len(data) - 1))]
    return packet, bytes(data)


@given(mutations())
def test_mutated_valid_packets_never_raise_and_are_dropped(case: tuple[bytes, bytes]) -> None:
    original, mutated = case
    assume(mutated != original)
    receiver = codec()
    assert isinstance(receiver.decode(mutated), Dropped)
    assert sum(receiver.drops.values()) == 1
    assert isinstance(receiver.decode(original), Decoded)  # the mutation left no trace


# --- replay protection through the codec -------------------------------------------------------


def test_replayed_identical_packet() -> None:
    packet = codec("alpha").encode(TimeoutNow(1), 0, to="bravo")
    receiver = codec()
    assert isinstance(receiver.decode(packet), Decoded)
    assert_dropped(receiver, packet, DropReason.REPLAY)
    assert_dropped(receiver, packet, DropReason.REPLAY)


def test_a_replayed_batch_with_unknown_groups_counts_only_the_replay() -> None:
    packet = codec("alpha", groups=("mail",)).encode(TimeoutNow(1), 0, to="bravo", group="mail")
    receiver = codec()
    assert isinstance(receiver.decode(packet), Decoded)
    assert_dropped(receiver, packet, DropReason.REPLAY)
    assert receiver.drops[DropReason.UNKNOWN_GROUP] == 1


def test_old_incarnation_is_replay_and_new_one_resets() -> None:
    old, new = codec("alpha", incarnation=INC), codec("alpha", incarnation=INC + 1)
    receiver = codec()
    old_packets = [old.encode(TimeoutNow(1), 10 * i, to="bravo") for i in range(3)]
    assert isinstance(receiver.decode(old_packets[0]), Decoded)
    restarted = decoded(receiver.decode(new.encode(TimeoutNow(1), 0, to="bravo")))
    assert restarted.sequence == 1
    assert_dropped(receiver, old_packets[1], DropReason.REPLAY)


def test_out_of_window_is_replay_and_window_edge_is_accepted() -> None:
    sender, receiver = codec("alpha"), codec()
    packets = [sender.encode(TimeoutNow(1), 0, to="bravo") for _ in range(66)]  # sequences 1..66
    assert isinstance(receiver.decode(packets[65]), Decoded)
    assert_dropped(receiver, packets[0], DropReason.REPLAY)  # 65 behind
    assert_dropped(receiver, packets[1], DropReason.REPLAY)  # 64 behind: just outside
    assert isinstance(receiver.decode(packets[2]), Decoded)  # 63 behind: last slot


def test_stale_timestamp() -> None:
    sender, receiver = codec("alpha"), codec()
    first, late, edge, newest = (
        sender.encode(TimeoutNow(1), ts, to="bravo") for ts in (0, 100, 101, 2101)
    )
    assert isinstance(receiver.decode(first), Decoded)
    assert isinstance(receiver.decode(newest), Decoded)
    assert_dropped(receiver, late, DropReason.STALE)  # 2001 ms older than the newest
    assert isinstance(receiver.decode(edge), Decoded)  # exactly 2000 ms older: still fresh


@given(st.permutations(range(64)))
def test_reordering_within_the_window_is_accepted(order: list[int]) -> None:
    sender, receiver = codec("alpha"), codec()
    packets = [sender.encode(TimeoutNow(1), 5 * i, to="bravo") for i in range(64)]
    for i in order:
        assert isinstance(receiver.decode(packets[i]), Decoded)
    for i in order[:3]:
        assert_dropped(receiver, packets[i], DropReason.REPLAY)


def test_a_packet_for_one_node_fails_authentication_at_another() -> None:
    """The recipient is covered by the HMAC: no replaying a captured packet to another node."""
    packet = codec("alpha").encode(MaintenanceRequest(3, True, 1), 0, to="bravo")
    assert isinstance(codec("bravo").decode(packet), Decoded)
    assert_dropped(codec("charlie"), packet, DropReason.BAD_MAC)


def test_the_config_fingerprint_travels_and_compares() -> None:
    """The configuration's fingerprint (8-byte digests per section) as the daemon sends it."""
    from hafailover.config.groups import Fingerprint

    mine = Fingerprint({"cluster": "01" * 8, "nodes": "02" * 8, "groups": "03" * 8})
    theirs = Fingerprint({"cluster": "01" * 8, "nodes": "02" * 8, "groups": "04" * 8})
    packet = codec("alpha", fingerprint=theirs.as_bytes()).encode(TimeoutNow(1), 0, to="bravo")
    got = decoded(codec().decode(packet))
    assert mine.differing(Fingerprint.from_bytes(dict(got.fingerprint))) == ["groups"]
