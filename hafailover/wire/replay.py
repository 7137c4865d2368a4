"""Replay protection for authenticated packets from one sender.

Pure code: it never reads a clock. Its only notion of time is the sender's own `timestamp_ms`
(milliseconds on the sender's monotonic clock since its incarnation started), compared with
other timestamps from the same sender and incarnation, so clock offsets between nodes never
matter.

The guard is fed only packets whose HMAC has already been verified: an attacker cannot forge
a higher incarnation or sequence to wipe the window, only resend what a node really sent.

Rules, in order:

1. Incarnation. A packet from a lower incarnation than the highest seen is a replay (the sender
   has restarted since). A higher incarnation means the sender restarted: forget the old
   window and start a new one with this packet.
2. Sequence, in a sliding window of the last `WINDOW` sequence numbers below the highest seen
   (as in IPsec, RFC 4303 section 3.4.3). A duplicate, or a sequence too far below the highest
   to be tracked, is a replay. Reordering inside the window is accepted.
3. Age. A packet that arrives after one with a higher sequence (i.e. late) is stale when its
   timestamp is more than `max_age` seconds older than the newest timestamp seen from that
   sender in this incarnation. A late heartbeat or vote carries old state that the core must
   not act on, even if its sequence number is still inside the window.

Why the age bound is only applied to late packets: the sender's clock is monotonic, so the
packet with the highest sequence always carries the newest timestamp. Treating the highest
sequence as authoritative keeps the guard correct across the u32 millisecond wrap (every 49.7
days) and after a sender was silent (e.g. partitioned) for longer than half the wrap period,
where comparing two u32 timestamps alone could not tell "older" from "much newer".

Known limit: after the *receiver* restarts it has no state, so the first packet it sees from a
sender (and, after it, any not-yet-seen sequence inside the window that passes the age bound)
is accepted. Only packets the sender actually sent recently can be replayed that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

WINDOW = 64
_WINDOW_MASK = (1 << WINDOW) - 1
_TS_MODULUS = 1 << 32  # timestamp_ms is a u32 on the wire and wraps


class Verdict(Enum):
    ACCEPT = "accept"
    REPLAY = "replay"
    STALE = "stale"


@dataclass
class _State:
    incarnation: int
    highest: int  # highest sequence accepted in this incarnation
    # Bit i set: sequence `highest - i` was accepted. Bit 0 is `highest` itself.
    seen: int
    newest_ts: int  # timestamp_ms of the packet with sequence `highest`


class ReplayGuard:
    """Replay and staleness check for the packets of one sender. Not thread-safe."""

    def __init__(self, max_age: float = 2.0) -> None:
        if not max_age >= 0:  # also rejects NaN
            raise ValueError("max_age must be a non-negative number of seconds")
        self._max_age_ms = max_age * 1000.0
        self._state: _State | None = None

    @property
    def incarnation(self) -> int | None:
        """Highest incarnation seen from this sender, None before the first accepted packet."""
        return None if self._state is None else self._state.incarnation

    def admit(self, incarnation: int, sequence: int, timestamp_ms: int) -> Verdict:
        """Decide on one authenticated packet; only an accepted packet changes the state.

        A rejected packet must leave no trace: it must never mark a sequence as seen or move
        the newest timestamp, or a replayed packet could make genuine ones look old.
        """
        st = self._state
        if st is None or incarnation > st.incarnation:
            self._state = _State(incarnation, sequence, 1, timestamp_ms)
            return Verdict.ACCEPT
        if incarnation < st.incarnation:
            return Verdict.REPLAY

        if sequence > st.highest:
            shift = sequence - st.highest
            # A jump of WINDOW or more leaves nothing of the old window to remember.
            st.seen = ((st.seen << shift) | 1) & _WINDOW_MASK if shift < WINDOW else 1
            st.highest = sequence
            st.newest_ts = timestamp_ms
            return Verdict.ACCEPT

        offset = st.highest - sequence
        if offset >= WINDOW or (st.seen >> offset) & 1:
            return Verdict.REPLAY
        # Late packet: the difference modulo 2**32 is its true age unless the sender was
        # silent for more than 49.7 days between the two, and then it is stale anyway.
        age_ms = (st.newest_ts - timestamp_ms) % _TS_MODULUS
        if age_ms > self._max_age_ms:
            return Verdict.STALE
        st.seen |= 1 << offset
        return Verdict.ACCEPT
