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
* Every round A sends B `NodeHeartbeat(seq, digest)`, the XOR of A's keys for B (a set hash;
  only when it is not empty). B compares it with the XOR of its own keys for A. If they are
  equal, the sets are equal (up to a 2**-64 collision), so B does exactly what it would do on
  receiving, at this moment, one heartbeat of each of those groups from A: it renews each
  promise to A for `failover_timeout` from receipt (lazily: `heard(A)`). It answers
  `NodeAck(seq, match)`.
* A, on a matching ack of round `seq` sent at time s, counts s as B's acknowledged send time in
  every group whose key for B was in that round's digest: a group g whose fortification A
  recorded before round `seq` was sent (`since_seq <= seq`, see `next_seq`). That is exactly
  the send time an acknowledgement of g's own heartbeat sent at s would have given, so
  `Timings.lease_duration`'s argument holds unchanged: g's lease ends before the promises that
  back it.
* Anything else (a mismatch, a lost message) renews nothing; A then falls back to g's own
  heartbeats for B (`Groups` un-fortifies B in every group A leads, which makes those groups
  send per-group heartbeats to B until B's acknowledgements fortify them again).

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


def key(group: str, leader: str, term: int, healthy: bool, maintenance: bool, summary: str) -> int:
    """One group's fortification key, as a 64-bit integer (equal on both nodes when they agree).

    Computed with a keyed-by-nothing BLAKE2b so that every node gets the same value (Python's
    `hash` is salted per process)."""
    text = f"{group}\0{leader}\0{term}\0{int(healthy)}{int(maintenance)}\0{summary}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Liveness:
    """This node's side of every node-to-node support relation (both directions).

    Owned by `Groups`, shared (read-mostly) by each group's `Node`.
    """

    def __init__(self, me: str, peers: tuple[str, ...], interval: float) -> None:
        self.me = me
        self.peers = peers
        self.interval = interval
        # Rounds this node sent: seq -> send time (the newest few).
        self.seq = 0
        self._sent: dict[int, float] = {}
        self.last_sent = NEVER
        self.round_at = NEVER  # when the next round is due (on a grid of `interval`)
        # Leader side, per peer: the newest round it acknowledged with a match, and its send time.
        self._support_seq = dict.fromkeys(peers, 0)
        self._support_at = dict.fromkeys(peers, NEVER)
        # Leader side, per peer: XOR of this node's keys for it, and the first round sent since
        # it last changed (a mismatch answering an older round says nothing new).
        self.expected = dict.fromkeys(peers, 0)
        self._expected_since = dict.fromkeys(peers, 0)
        # Follower side, per leader: XOR of this node's keys for it; when a matching heartbeat
        # of it last came in.
        self.fortified = dict.fromkeys(peers, 0)
        self._heard = dict.fromkeys(peers, NEVER)
        # Any node-level message from the peer (reachability).
        self._contact = dict.fromkeys(peers, NEVER)
        self.mismatches = 0
        # Bumped whenever what a lease is computed from changes (a round sent, support
        # received), so that leases can cache their value between changes.
        self.version = 0

    # ------------------------------------------------------------------ read by `Node`

    def next_seq(self) -> int:
        """The round a fortification recorded now is first part of."""
        return self.seq + 1

    def support(self, peer: str, since_seq: int) -> float:
        """The send time of `peer`'s newest matched round at or after `since_seq` (else -inf)."""
        if self._support_seq.get(peer, 0) >= since_seq:
            return self._support_at[peer]
        return NEVER

    def heard(self, leader: str) -> float:
        """When a heartbeat from `leader` matching this node's keys for it last came in."""
        return self._heard.get(leader, NEVER)

    def contact(self, peer: str) -> float:
        """When any node-level message from `peer` last came in."""
        return self._contact.get(peer, NEVER)

    # ------------------------------------------------------------------ kept by `Groups`

    def change_expected(self, peer: str, old: int, new: int) -> None:
        if old != new:
            self.expected[peer] ^= old ^ new
            self._expected_since[peer] = self.seq + 1

    def change_fortified(self, leader: str, old: int, new: int) -> None:
        if old != new and leader in self.fortified:
            self.fortified[leader] ^= old ^ new

    def due(self, now: float, slack: float) -> bool:
        return now >= self.round_at - slack

    def next_deadline(self) -> float:
        """When the next round is due; never while this node leads nothing any peer backs."""
        return self.round_at if any(self.expected.values()) else INF

    def send_round(self, now: float) -> list[tuple[str, NodeHeartbeat]]:
        """A round sent at `now`: a heartbeat for every peer this node expects support from."""
        self.round_at = (int((now + self.interval / 10) / self.interval) + 1) * self.interval
        out = [(p, d) for p, d in self.expected.items() if d]
        if not out:
            return []
        self.seq += 1
        self._sent[self.seq] = now
        self._sent.pop(self.seq - _KEEP_ROUNDS, None)
        self.last_sent = now
        self.version += 1
        return [(p, NodeHeartbeat(self.seq, d)) for p, d in out]

    def on_heartbeat(self, sender: str, hb: NodeHeartbeat, now: float) -> NodeAck | None:
        """Follower side: renew (lazily) every promise to `sender` if the sets agree."""
        if sender not in self._contact:
            return None
        self._contact[sender] = now
        match = hb.digest != 0 and hb.digest == self.fortified[sender]
        if match:
            self._heard[sender] = now
        return NodeAck(hb.seq, match)

    def on_ack(self, sender: str, ack: NodeAck, now: float) -> bool:
        """Leader side. True when the peer disagreed about a round sent with this node's current
        keys for it: the caller must fall back to per-group heartbeats for that peer."""
        if sender not in self._contact:
            return False
        self._contact[sender] = now
        sent = self._sent.get(ack.seq)
        if sent is None:
            return False
        if ack.match:
            if ack.seq > self._support_seq[sender]:
                self._support_seq[sender] = ack.seq
                self._support_at[sender] = sent
                self.version += 1
            return False
        if ack.seq < self._expected_since[sender]:
            return False
        self.mismatches += 1
        return True
