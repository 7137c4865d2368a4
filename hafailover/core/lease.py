"""Both sides of a lease: the follower's promise and the leader's lease arithmetic.

A follower that acknowledges a heartbeat promises, for `failover_timeout` on its own clock from
receipt, to vote for nobody but that leader (`Promise`). The leader counts the send times of the
heartbeat rounds a majority acknowledged and may hold the VIP until the quorum-th newest of them
plus `Timings.lease_duration` (`LeaderLease`); see `Timings.lease_duration` for why that ends
before every promise that backs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hafailover.core.liveness import Bucket
from hafailover.core.peers import INF, NEVER, PeerInfo, PeerTable
from hafailover.core.spec import Timings


@dataclass
class Promise:
    """Not to vote for anyone but `to` (the leader of `term`) before `until` ('' : anyone)."""

    to: str = ""
    term: int = -1
    until: float = NEVER

    def wait(
        self, candidate: str, term: int, pre: bool, transfer_from: str, now: float
    ) -> float | None:
        """How long this promise still forbids a vote for `candidate`; None if it does not.

        The leader it was given to may release it for exactly the next term by handing over:
        a real vote request naming it in `transfer_from` is not held back.
        """
        if now >= self.until or (self.to and self.to == candidate):
            return None
        transfer = (
            transfer_from != "" and transfer_from == self.to and term == self.term + 1 and not pre
        )
        return None if transfer else self.until - now


class LeaderLease:
    """A leader's heartbeat rounds, their send times, and the lease a majority backs."""

    def __init__(self, timings: Timings, peers: PeerTable, live: Bucket | None = None) -> None:
        self._t = timings
        self._peers = peers
        self._live = live
        self._active = False
        # (liveness version, computed lease): `current()` is asked often (every datagram, for
        # every group held), what it depends on changes once a round.
        self._cached: tuple[int, float] | None = None
        self.round = 0
        self._sent: dict[int, float] = {}
        self.heartbeat_at = INF
        self.until = NEVER
        self.stepdown_at = INF

    def begin(self, now: float) -> None:
        """A new term's leadership: no lease yet, and none unless a majority acks in time."""
        self._sent = {}
        self.until = NEVER
        self.stepdown_at = now + self._t.lease_duration
        self._peers.reset_acks()
        self._active = True
        self._cached = None

    def end(self) -> None:
        self._active = False
        self._cached = None
        self.heartbeat_at = INF
        self.stepdown_at = INF
        self.until = NEVER

    def heartbeat_due(self, now: float) -> bool:
        return now >= self.heartbeat_at - self._t.heartbeat_slack

    def next_round(self, now: float) -> int:
        """A heartbeat round sent at `now`; returns its number."""
        self.round += 1
        self._cached = None
        self._sent[self.round] = now
        self._sent.pop(self.round - 64, None)
        # The next round falls on a grid of the interval on this node's clock, not `interval`
        # after this one: every group this node leads then sends in the same round (and, per
        # peer, in one datagram) whenever it was elected. The gap is at most interval + slack.
        interval = self._t.heartbeat_interval
        self.heartbeat_at = (math.floor((now + self._t.heartbeat_slack) / interval) + 1) * interval
        self._renew()
        return self.round

    def acked(self, info: PeerInfo, rnd: int) -> None:
        """`info`'s peer acknowledged round `rnd` (of this term) with success."""
        sent = self._sent.get(rnd)
        if sent is not None and sent > info.acked_sent_at:
            info.acked_sent_at = sent
            self._cached = None
            self._renew()

    def invalidate(self) -> None:
        """A peer's fortification changed: compute the lease afresh next time."""
        self._cached = None

    def current(self) -> float:
        """The lease now, counting node-level support that came in since the last step."""
        if self._live is None or not self._active:
            return self.until
        return max(self.until, self._computed())

    def refresh(self) -> None:
        """Make node-level support that came in since the last step part of `until`."""
        if self._live is not None and self._active:
            self._renew()

    def _computed(self) -> float:
        live = self._live
        own = self._sent.get(self.round, NEVER)
        if live is None:
            return self._peers.lease_base(own) + self._t.lease_duration
        cached = self._cached
        if cached is not None and cached[0] == live.version:
            return cached[1]
        value = self._peers.lease_base(max(own, live.last_sent)) + self._t.lease_duration
        self._cached = (live.version, value)
        return value

    def _renew(self) -> None:
        lease = self._computed()
        if lease > self.until:
            # Once a lease exists the leader steps down exactly when it ends.
            self.until = lease
            self.stepdown_at = lease
