"""Node liveness: one support relation per pair of nodes backs the leases of every VIP group.

Without it, every group a node leads sends every peer a heartbeat each round and every follower
acknowledges each one: the idle cost grows with the number of groups. With it (the idea of
CockroachDB's store liveness and leader "fortification"), a group's election messages flow only
when something changes, and in steady state one `NodeHeartbeat` per peer and round, answered by
one `NodeAck`, renews the promise and the lease of every group at once.

The rule, per pair of nodes A (leading some groups) and B (following A in some of them):

* B has *fortified* A in group g and term t when it acknowledged, with success, a heartbeat of
  g's election from A in term t (round > 0) and still follows A in t. Its *key* for g is a hash
  of (g, A, t, the health and maintenance B reported, the peer summaries A sent it).
* A believes B fortified it in g when it received that acknowledgement in the term it leads;
  A's key for (g, B) hashes the same fields as A knows them. Equal keys: the two agree.
* Every round A sends B `NodeHeartbeat(seq, digests)`, per bucket (below) the XOR of A's keys
  for B (a set hash; non-empty buckets only). B compares each with the XOR of its own. If they are
  equal, the sets are equal (up to a 2**-64 collision), so B does exactly what it would do on
  receiving, at this moment, one heartbeat of each of those groups from A: it renews each
  promise to A for `failover_timeout` from receipt (lazily: `Bucket.heard(A)`). It answers
  `NodeAck(seq, mask)`, a bit per bucket that matched.
* A, on a matching ack of round `seq` sent at time s, counts s as B's acknowledged send time in
  every group whose key for B was in that round's digest: a group g whose fortification A
  recorded before round `seq` was sent (`since_seq <= seq`, see `next_seq`). That is exactly
  the send time an acknowledgement of g's own heartbeat sent at s would have given, so
  `Timings.lease_duration`'s argument holds unchanged: g's lease ends before the promises that
  back it.
* Anything else (a mismatch, a lost message) renews nothing; A then falls back to g's own
  heartbeats for B (`Groups` un-fortifies B in the groups concerned, which makes them send
  per-group heartbeats to B until B's acknowledgements fortify them again).
* Groups fall into `BUCKETS` buckets by a hash of their name, the same on every node; each
  bucket has its own digest, renewal and support (a `NodeHeartbeat` carries the digests of the
  non-empty buckets, a `NodeAck` a bit per bucket that matched). So a change in one group (an
  election, a health change) costs a fallback for the few groups of its bucket, not for all the
  groups a leader has: what keeps hundreds of groups electing at once from feeding on itself.
  `Bucket` is one bucket's view for the groups in it.

Promises renewed lazily are made concrete at the start of every step of the group's `Node`
(`Node._materialize`), so no transition can shorten a promise that a matched `NodeAck` already
backed. A restarted node starts with no keys (its digest is 0): it matches nothing until its
groups' elections fortified again, and its start-up refusal window covers what it promised
before.
"""

from __future__ import annotations

import hashlib

from hafailover.core.messages import NodeAck, NodeHeartbeat

NEVER = float("-inf")
INF = float("inf")
_KEEP_ROUNDS = 64
BUCKETS = 16


def key(group: str, leader: str, term: int, healthy: bool, maintenance: bool, summary: str) -> int:
    """One group's fortification key, as a 64-bit integer (equal on both nodes when they agree).

    Computed with BLAKE2b so that every node gets the same value (Python's `hash` is salted per
    process); never 0, which stands for an empty bucket."""
    text = f"{group}\0{leader}\0{term}\0{int(healthy)}{int(maintenance)}\0{summary}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") or 1


def bucket_of(group: str) -> int:
    """The bucket of a group, the same on every node."""
    return hashlib.blake2b(group.encode(), digest_size=1).digest()[0] % BUCKETS


class Liveness:
    """This node's side of every node-to-node support relation (both directions), per bucket.

    Owned by `Groups`; each group's `Node` reads it through the `Bucket` of its group.
    """

    def __init__(self, me: str, peers: tuple[str, ...], interval: float) -> None:
        self.me = me
        self.peers = peers
        self.interval = interval
        # Rounds this node sent: seq -> send time, and per peer the buckets it carried.
        self.seq = 0
        self._sent: dict[int, tuple[float, dict[str, int]]] = {}
        self.last_sent = NEVER
        self.round_at = NEVER  # when the next round is due (on a grid of `interval`)
        # Leader side, per peer and bucket: the newest round it matched, and its send time.
        self._support_seq = {p: [0] * BUCKETS for p in peers}
        self._support_at = {p: [NEVER] * BUCKETS for p in peers}
        # Leader side, per peer and bucket: XOR of this node's keys for it.
        self.expected = {p: [0] * BUCKETS for p in peers}
        # Follower side, per leader and bucket: XOR of this node's keys for it; when a matching
        # digest of it last came in.
        self.fortified = {p: [0] * BUCKETS for p in peers}
        self._heard = {p: [NEVER] * BUCKETS for p in peers}
        # Any node-level message from the peer (reachability).
        self._contact = dict.fromkeys(peers, NEVER)
        self.mismatches = 0
        # Acknowledgements held back to travel with this node's next round (`hold_ack`).
        self._held: dict[str, NodeAck] = {}
        # Bumped whenever what a lease is computed from changes (a round sent, support
        # received), so that leases can cache their value between changes.
        self.version = 0

    def bucket(self, index: int) -> Bucket:
        return Bucket(self, index)

    def contact(self, peer: str) -> float:
        """When any node-level message from `peer` last came in."""
        return self._contact.get(peer, NEVER)

    # ------------------------------------------------------------------ kept by `Groups`

    def change_expected(self, peer: str, bucket: int, old: int, new: int) -> None:
        if old != new and peer in self.expected:
            self.expected[peer][bucket] ^= old ^ new

    def change_fortified(self, leader: str, bucket: int, old: int, new: int) -> None:
        if old != new and leader in self.fortified:
            self.fortified[leader][bucket] ^= old ^ new

    def next_deadline(self) -> float:
        """When the next round is due; never while this node leads nothing any peer backs
        and holds back no acknowledgement."""
        if self._held or any(any(d) for d in self.expected.values()):
            return self.round_at
        return INF

    def hold_ack(self, peer: str, ack: NodeAck, now: float) -> bool:
        """Keep `ack` for `peer` to send with this node's next round, if one is due to `peer`
        within an interval: the two then travel in one datagram instead of two. True if held
        (a newer acknowledgement replaces an older one held for the same peer).

        Safe because an acknowledgement's meaning is fixed when the heartbeat came in: the
        promises it stands for were renewed then (`on_heartbeat`), and the leader counts its
        round's *send* time, so a later arrival only makes the leader learn of its lease later,
        by at most one interval (`Groups` holds back only when the lease leaves room for it)."""
        if not any(self.expected.get(peer, ())) or not now < self.round_at <= now + self.interval:
            return False
        self._held[peer] = ack
        return True

    def send_round(self, now: float) -> list[tuple[str, NodeHeartbeat | NodeAck]]:
        """A round sent at `now`: a heartbeat for every peer this node expects support from,
        and every acknowledgement held back for it (`hold_ack`)."""
        self.round_at = (int((now + self.interval / 10) / self.interval) + 1) * self.interval
        held: list[tuple[str, NodeHeartbeat | NodeAck]] = list(self._held.items())
        self._held.clear()
        digests = {
            p: tuple((b, d) for b, d in enumerate(ds) if d) for p, ds in self.expected.items()
        }
        digests = {p: ds for p, ds in digests.items() if ds}
        if not digests:
            return held
        self.seq += 1
        masks = {p: sum(1 << b for b, _ in ds) for p, ds in digests.items()}
        self._sent[self.seq] = (now, masks)
        self._sent.pop(self.seq - _KEEP_ROUNDS, None)
        self.last_sent = now
        self.version += 1
        return [*((p, NodeHeartbeat(self.seq, ds)) for p, ds in digests.items()), *held]

    def on_heartbeat(self, sender: str, hb: NodeHeartbeat, now: float) -> NodeAck | None:
        """Follower side: renew (lazily) the promises to `sender` of every bucket that agrees."""
        if sender not in self._contact:
            return None
        self._contact[sender] = now
        fortified, heard = self.fortified[sender], self._heard[sender]
        mask = 0
        for b, digest in hb.digests:
            if digest == fortified[b]:
                heard[b] = now
                mask |= 1 << b
        return NodeAck(hb.seq, mask)

    def on_ack(self, sender: str, ack: NodeAck, now: float) -> list[int]:
        """Leader side. The buckets in which the peer disagreed about a round sent with this
        node's current keys for it: the caller falls back to per-group heartbeats there."""
        if sender not in self._contact:
            return []
        self._contact[sender] = now
        sent = self._sent.get(ack.seq)
        if sent is None:
            return []
        at, masks = sent
        carried = masks.get(sender, 0)
        seq_, at_ = self._support_seq[sender], self._support_at[sender]
        stale: list[int] = []
        for b in range(BUCKETS):
            if not carried >> b & 1:
                continue
            if ack.mask >> b & 1:
                if ack.seq > seq_[b]:
                    seq_[b] = ack.seq
                    at_[b] = at
                    self.version += 1
            else:
                # Even when the keys changed since that round: the groups of this bucket that
                # are fortified now get no renewal until a round matches, and in a bucket that
                # keeps changing (hundreds of groups electing at once) none might; their own
                # heartbeats renew them meanwhile.
                stale.append(b)
        self.mismatches += len(stale)
        return stale


class Bucket:
    """What the groups of one bucket read of `Liveness` (their `Node` and peer table)."""

    __slots__ = ("_live", "index")

    def __init__(self, live: Liveness, index: int) -> None:
        self._live = live
        self.index = index

    @property
    def version(self) -> int:
        return self._live.version

    @property
    def last_sent(self) -> float:
        return self._live.last_sent

    def next_seq(self) -> int:
        """The round a fortification recorded now is first part of."""
        return self._live.seq + 1

    def support(self, peer: str, since_seq: int) -> float:
        """The send time of `peer`'s newest round matched in this bucket at or after
        `since_seq` (else -inf)."""
        seqs = self._live._support_seq.get(peer)
        if seqs is not None and seqs[self.index] >= since_seq:
            return self._live._support_at[peer][self.index]
        return NEVER

    def heard(self, leader: str) -> float:
        """When a digest of this bucket from `leader` matching this node's last came in."""
        heard = self._live._heard.get(leader)
        return NEVER if heard is None else heard[self.index]

    def contact(self, peer: str) -> float:
        return self._live.contact(peer)
