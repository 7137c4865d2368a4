"""The wire codec: byte layout, round trips, and every drop reason.

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

from hafailover.core.messages import (
    MESSAGE_TYPES,
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
from hafailover.wire import (
    MAX_PACKET,
    Codec,
    Decoded,
    Dropped,
    DropReason,
    EncodeError,
)

KEY = bytes(range(32))
CLUSTER = "prod"
NODES = ("alpha", "bravo", "charlie")
INC = 1_700_000_000_000_000_000


def codec(
    name: str = "bravo",
    *,
    key: bytes = KEY,
    cluster: str = CLUSTER,
    senders: tuple[str, ...] = NODES,
    incarnation: int = INC,
    max_age: float = 2.0,
) -> Codec:
    return Codec(key, cluster, name, senders, incarnation, max_age)


def forge(
    payload: bytes,
    *,
    kind: int = MessageType.TIMEOUT_NOW,
    sender: str = "alpha",
    incarnation: int = INC,
    sequence: int = 1,
    ts: int = 0,
    key: bytes = KEY,
    cluster: str = CLUSTER,
    to: str = "bravo",
) -> bytes:
    name = sender.encode()
    body = (
        b"HF"
        + bytes([1, kind])
        + hashlib.sha256(cluster.encode()).digest()[:4]
        + bytes([len(name)])
        + name
        + struct.pack("!QQI", incarnation, sequence, ts)
        + payload
    )
    recipient = bytes([len(to.encode())]) + to.encode()
    return body + hmac.new(key, recipient + body, hashlib.sha256).digest()


def reason(result: Decoded | Dropped) -> DropReason | None:
    return result.reason if isinstance(result, Dropped) else None


# --- the byte layout, pinned -------------------------------------------------------------------

TWO_PEERS = (PeerSummary("bravo", True, False, True), PeerSummary("c", False, True, False))
GOLDEN: list[tuple[Message, bytes]] = [
    (Heartbeat(7, 9, TWO_PEERS), struct.pack("!QQB", 7, 9, 2) + b"\x05bravo\1\0\1" + b"\1c\0\1\0"),
    (Heartbeat(1, 2), struct.pack("!QQB", 1, 2, 0)),
    (HeartbeatAck(3, 4, True, False, True), struct.pack("!QQ", 3, 4) + b"\x01\x00\x01"),
    (VoteRequest(5, True, True, False, "alpha"), struct.pack("!Q", 5) + b"\x01\x01\x00\x05alpha"),
    (VoteRequest(5, False, False, True), struct.pack("!Q", 5) + b"\x00\x00\x01\x00"),
    (
        VoteResponse(6, False, True, True, False, 0.25),
        struct.pack("!Q", 6) + b"\x00\x01\x01\x00" + struct.pack("!I", 250),
    ),
    (TimeoutNow(2**64 - 1), b"\xff" * 8),
    (TransferRequest(8, "bravo"), struct.pack("!Q", 8) + b"\x05bravo"),
    (TransferRequest(8), struct.pack("!Q", 8) + b"\x00"),
    (MaintenanceRequest(9, True), struct.pack("!Q", 9) + b"\x01"),
]


def test_golden_examples_cover_every_message_type() -> None:
    assert {MESSAGE_TYPES[type(m)] for m, _ in GOLDEN} == set(MessageType)


@pytest.mark.parametrize(("message", "payload"), GOLDEN)
def test_encode_matches_documented_layout(message: Message, payload: bytes) -> None:
    sender = codec("alpha")
    expected = forge(payload, kind=MESSAGE_TYPES[type(message)], sequence=1, ts=1234)
    assert sender.encode(message, 1234, to="bravo") == expected
    assert codec().decode(expected) == Decoded("alpha", INC, 1, 1234, message)


def test_sequence_increases_and_timestamp_wraps_mod_2_32() -> None:
    sender, receiver = codec("alpha"), codec()
    first = receiver.decode(sender.encode(TimeoutNow(1), 2**32 + 5, to="bravo"))
    second = receiver.decode(sender.encode(TimeoutNow(1), 2**32 + 6, to="bravo"))
    assert isinstance(first, Decoded) and isinstance(second, Decoded)
    assert (first.sequence, first.timestamp_ms) == (1, 5)
    assert (second.sequence, second.timestamp_ms) == (2, 6)
    assert sender.sequence == 2


@pytest.mark.parametrize(
    ("seconds", "ms"), [(0.0, 0), (0.0004, 1), (0.6, 600), (1.0005, 1001), (4294967.295, 2**32 - 1)]
)
def test_retry_after_is_sent_as_ms_rounded_up(seconds: float, ms: int) -> None:
    packet = codec("alpha").encode(
        VoteResponse(1, False, False, True, False, seconds), 0, to="bravo"
    )
    assert packet[-36:-32] == struct.pack("!I", ms)


# --- round trips -------------------------------------------------------------------------------

names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64)
u64 = st.integers(0, 2**64 - 1)
flags = st.booleans()
retry_ms = st.integers(0, 2**32 - 1)
peers = st.builds(PeerSummary, name=names, healthy=flags, maintenance=flags, reachable=flags)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Heartbeat, term=u64, round=u64, peers=st.lists(peers, max_size=64).map(tuple)),
    st.builds(HeartbeatAck, term=u64, round=u64, success=flags, healthy=flags, maintenance=flags),
    st.builds(VoteRequest, u64, flags, flags, flags, names),  # term, pre, healthy, maint., from
    st.builds(VoteResponse, u64, flags, flags, flags, flags, retry_ms.map(lambda ms: ms / 1000)),
    st.builds(TimeoutNow, term=u64),
    st.builds(TransferRequest, term=u64, target=names),
    st.builds(MaintenanceRequest, term=u64, on=flags),
)


def utf8_len(s: str) -> int:
    return len(s.encode())


def expected_size(m: Message, sender: str) -> int:
    """Packet size computed from the documented layout."""
    if isinstance(m, Heartbeat):
        payload = 17 + sum(1 + utf8_len(p.name) + 3 for p in m.peers)
    elif isinstance(m, HeartbeatAck):
        payload = 19
    elif isinstance(m, VoteRequest):
        payload = 12 + utf8_len(m.transfer_from)
    elif isinstance(m, VoteResponse):
        payload = 16
    elif isinstance(m, TimeoutNow):
        payload = 8
    elif isinstance(m, TransferRequest):
        payload = 9 + utf8_len(m.target)
    else:
        payload = 9
    return 29 + utf8_len(sender) + payload + 32


@given(messages, st.integers(0, 2**32 - 1), u64)
def test_round_trip_every_message_type(message: Message, ts: int, incarnation: int) -> None:
    sender = codec("alpha", incarnation=incarnation)
    size = expected_size(message, "alpha")
    if size > MAX_PACKET:
        with pytest.raises(EncodeError, match="over the 1400-byte limit"):
            sender.encode(message, ts, to="bravo")
        return
    packet = sender.encode(message, ts, to="bravo")
    assert len(packet) == size
    assert codec().decode(packet) == Decoded("alpha", incarnation, 1, ts, message)


def test_encode_refuses_oversize_and_keeps_the_sequence() -> None:
    sender = codec("alpha")
    big = Heartbeat(1, 1, tuple(PeerSummary("n" * 64, True, True, True) for _ in range(64)))
    with pytest.raises(EncodeError, match="4435 bytes, over the 1400-byte limit"):
        sender.encode(big, 0, to="bravo")
    assert sender.sequence == 0
    # The documented fit: 64 peers with 16-byte names from a 5-byte sender; 17 bytes do not.
    fits = Heartbeat(
        1, 1, tuple(PeerSummary(f"node-{i:011d}", True, True, True) for i in range(64))
    )
    assert len(sender.encode(fits, 0, to="bravo")) == 1363
    assert sender.sequence == 1
    too_big = Heartbeat(
        1, 1, tuple(PeerSummary(f"node-{i:012d}", True, True, True) for i in range(64))
    )
    with pytest.raises(EncodeError, match="1427 bytes"):
        sender.encode(too_big, 0, to="bravo")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Heartbeat(1, 1, tuple(PeerSummary("n", True, True, True) for _ in range(65))), "65 peers"),
        (TimeoutNow(2**64), "term 18446744073709551616 does not fit in a u64"),
        (TimeoutNow(-1), "term -1 does not fit"),
        (TransferRequest(1, "x" * 65), "target 'xxx"),
        (VoteResponse(1, False, False, True, False, -0.5), "retry_after must be a finite"),
        (VoteResponse(1, False, False, True, False, float("nan")), "retry_after must be"),
        (VoteResponse(1, False, False, True, False, 4294967.296), "retry_after in ms 4294967296"),
    ],
)
def test_encode_rejects_fields_that_do_not_fit(message: Message, error: str) -> None:
    with pytest.raises(EncodeError, match=error):
        codec("alpha").encode(message, 0, to="bravo")


def test_constructor_validates_key_and_names() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        codec(key=b"k" * 15)
    with pytest.raises(ValueError, match="self_name"):
        codec("x" * 65)
    with pytest.raises(ValueError, match="known sender ''"):
        codec(senders=("alpha", ""))


# --- drops -------------------------------------------------------------------------------------


def test_drop_reason_values_are_stable() -> None:
    assert [r.value for r in DropReason] == [
        "too-short", "bad-magic", "bad-version", "other-cluster", "bad-mac", "unknown-sender",
        "from-self", "malformed", "replay", "stale", "oversize",
    ]  # fmt: skip


def assert_dropped(receiver: Codec, data: bytes, expected: DropReason) -> None:
    before = dict(receiver.drops)
    assert receiver.decode(data) == Dropped(expected)
    assert receiver.drops == {**before, expected: before[expected] + 1}


def test_header_drops() -> None:
    good = forge(struct.pack("!Q", 1))
    receiver = codec()
    assert_dropped(receiver, b"", DropReason.TOO_SHORT)
    assert_dropped(receiver, good[:60], DropReason.TOO_SHORT)
    assert_dropped(receiver, good + bytes(MAX_PACKET + 1 - len(good)), DropReason.OVERSIZE)
    assert_dropped(receiver, b"XF" + good[2:], DropReason.BAD_MAGIC)
    assert_dropped(receiver, good[:2] + b"\x02" + good[3:], DropReason.BAD_VERSION)
    assert_dropped(receiver, good[:8] + b"\x41" + good[9:], DropReason.MALFORMED)  # name len 65
    assert_dropped(receiver, good[:8] + b"\x40" + good[9:], DropReason.TOO_SHORT)  # 64 > space
    assert isinstance(receiver.decode(good), Decoded)


def test_wrong_key_other_cluster_unknown_sender_and_self() -> None:
    packet = codec("alpha").encode(TimeoutNow(1), 0, to="bravo")
    assert_dropped(codec(key=b"\x01" * 32), packet, DropReason.BAD_MAC)
    assert_dropped(codec(cluster="staging"), packet, DropReason.OTHER_CLUSTER)
    assert_dropped(codec(senders=("bravo", "charlie")), packet, DropReason.UNKNOWN_SENDER)
    assert_dropped(codec("alpha"), packet, DropReason.FROM_SELF)
    stranger = Codec(KEY, CLUSTER, "mallory", NODES, INC).encode(TimeoutNow(1), 0, to="bravo")
    assert_dropped(codec(), stranger, DropReason.UNKNOWN_SENDER)


def test_every_single_bit_flip_is_dropped_for_the_right_reason() -> None:
    packet = codec("alpha").encode(TransferRequest(3, "bravo"), 77, to="bravo")
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
            elif offset == 3:  # the type byte is only checked once authenticated
                assert got is DropReason.BAD_MAC
            elif offset == 8:
                assert got in {
                    DropReason.UNKNOWN_SENDER,
                    DropReason.TOO_SHORT,
                    DropReason.MALFORMED,
                }
            elif offset < header_end:
                assert got is DropReason.UNKNOWN_SENDER
            else:  # counters, payload and the MAC itself
                assert got is DropReason.BAD_MAC, (offset, bit)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (MessageType.TIMEOUT_NOW, struct.pack("!Q", 1) + b"\x00"),  # trailing byte
        (MessageType.TIMEOUT_NOW, b"\x00" * 7),  # truncated
        (MessageType.MAINTENANCE_REQUEST, struct.pack("!Q", 1) + b"\x02"),  # bool 2
        (MessageType.TRANSFER_REQUEST, struct.pack("!Q", 1) + b"\x02\xc3\x28"),  # bad UTF-8
        (MessageType.TRANSFER_REQUEST, struct.pack("!Q", 1) + b"\x41" + b"x" * 65),  # > 64
        (MessageType.HEARTBEAT, struct.pack("!QQB", 1, 1, 65) + b"\x01x\x00\x00\x00" * 65),
        (99, struct.pack("!Q", 1)),  # unknown message type
    ],
)
def test_authenticated_but_malformed_payload(kind: int, payload: bytes) -> None:
    assert_dropped(codec(), forge(payload, kind=kind), DropReason.MALFORMED)


@given(st.binary(max_size=MAX_PACKET + 100))
def test_garbage_never_raises_and_is_counted(data: bytes) -> None:
    receiver = codec()
    result = receiver.decode(data)
    assert isinstance(result, Dropped)
    assert receiver.drops[result.reason] == 1
    assert sum(receiver.drops.values()) == 1


@given(st.sampled_from(list(MessageType)), st.binary(max_size=200))
def test_random_payload_behind_a_valid_header_is_bad_mac(kind: MessageType, rest: bytes) -> None:
    body = forge(b"", kind=kind)[:-32] + rest
    assert reason(codec().decode(body)) in {DropReason.BAD_MAC, DropReason.TOO_SHORT}


@given(st.integers(0, 255), st.binary(max_size=300))
def test_authenticated_random_payload_parses_canonically_or_is_malformed(
    kind: int, payload: bytes
) -> None:
    result = codec().decode(forge(payload, kind=kind))
    if isinstance(result, Dropped):
        assert result.reason is DropReason.MALFORMED
    else:  # accepted only if it is exactly what our encoder would have produced
        assert codec("alpha").encode(result.message, 0, to="bravo") == forge(payload, kind=kind)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    message = draw(messages)
    assume(expected_size(message, "alpha") <= MAX_PACKET)
    packet = codec("alpha").encode(message, 5, to="bravo")
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


def test_old_incarnation_is_replay_and_new_one_resets() -> None:
    old, new = codec("alpha", incarnation=INC), codec("alpha", incarnation=INC + 1)
    receiver = codec()
    old_packets = [old.encode(TimeoutNow(1), 10 * i, to="bravo") for i in range(3)]
    assert isinstance(receiver.decode(old_packets[0]), Decoded)
    restarted = receiver.decode(new.encode(TimeoutNow(1), 0, to="bravo"))
    assert isinstance(restarted, Decoded) and restarted.sequence == 1
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
    packet = codec("alpha").encode(MaintenanceRequest(3, True), 0, to="bravo")
    assert isinstance(codec("bravo").decode(packet), Decoded)
    assert_dropped(codec("charlie"), packet, DropReason.BAD_MAC)
