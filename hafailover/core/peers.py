"""What a node knows about the other nodes, and the leader's lease arithmetic.

Kept apart from `node.py` so the state machine reads as transitions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hafailover.core.liveness import Bucket
from hafailover.core.messages import PeerSummary
from hafailover.core.spec import ClusterSpec, NodeSpec

NEVER = float("-inf")  # a time before every other
INF = float("inf")  # a time after every other


@dataclass
class PeerInfo:
    """Last known facts about one peer. Health is `None` until the peer has told us."""

    spec: NodeSpec
    # The last message of this group's election from the peer (see `last_heard`).
    heard_at: float = NEVER
    healthy: bool | None = None
    maintenance: bool | None = None
    # Leader only: the send time of the newest heartbeat round this peer acknowledged in the
    # current term. Acknowledgements from earlier terms never count towards a lease.
    acked_sent_at: float = NEVER
    # Leader only: since when the peer has been continuously eligible and reachable (preemption).
    eligible_since: float | None = None
    # Follower only: the leader's view of this peer, from the last heartbeat.
    reported_reachable: bool | None = None
    # Leader only, with node liveness: the first node-level round that carries this group's key
    # for the peer (it acknowledged a heartbeat of this term); None: not fortified, so it gets
    # this group's own heartbeats.
    fortified_seq: int | None = None
    # Leader only, with node liveness: this group's key for the peer is in the node-level
    # digest. Set with `fortified_seq`; kept when a mismatch makes the group fall back to its own
    # heartbeats (the peer still holds its key: dropping ours would make the next round
    # mismatch too); cleared by a failed acknowledgement and a new term.
    keyed: bool = False
    live: Bucket | None = field(default=None, repr=False, compare=False)

    @property
    def last_heard(self) -> float:
        """The last message from the peer: of this election, or any node-level one."""
        if self.live is None:
            return self.heard_at
        return max(self.heard_at, self.live.contact(self.spec.name))

    @last_heard.setter
    def last_heard(self, value: float) -> None:
        self.heard_at = value

    def acked_at(self) -> float:
        """Leader: the send time of the newest round the peer acknowledged in this term, with
        node-level support counted once the peer fortified this group
        (`hafailover.core.liveness`)."""
        if self.live is None or self.fortified_seq is None:
            return self.acked_sent_at
        return max(self.acked_sent_at, self.live.support(self.spec.name, self.fortified_seq))

    def reachable(self, now: float, window: float) -> bool:
        return now - self.last_heard <= window

    def eligible(self) -> bool:
        """Could stand for election, as far as we know (unknown health counts as eligible)."""
        return (
            not self.spec.witness and self.healthy is not False and self.maintenance is not True
        )


class PeerTable:
    def __init__(self, spec: ClusterSpec, me: str, live: Bucket | None = None) -> None:
        self._spec = spec
        self.me = me
        self.peers: dict[str, PeerInfo] = {
            n.name: PeerInfo(n, live=live) for n in spec.nodes if n.name != me
        }

    def get(self, name: str) -> PeerInfo | None:
        return self.peers.get(name)

    def heard(self, name: str, now: float, healthy: bool, maintenance: bool) -> PeerInfo | None:
        info = self.peers.get(name)
        if info is None:
            return None
        info.last_heard = now
        info.healthy = healthy
        info.maintenance = maintenance
        return info

    def acked(
        self, name: str, now: float, healthy: bool, maintenance: bool
    ) -> PeerInfo | None:
        """Leader: `name` acknowledged a heartbeat; tracks since when it could take over."""
        info = self.heard(name, now, healthy, maintenance)
        if info is not None:
            if not info.eligible():
                info.eligible_since = None
            elif info.eligible_since is None:
                info.eligible_since = now
        return info

    def forget_unreachable(self, now: float, window: float) -> None:
        """Leader: a peer not heard within `window` starts its preemption wait again."""
        for p in self.peers.values():
            if not p.reachable(now, window):
                p.eligible_since = None

    def preempt_deadline(self, me: NodeSpec, delay: float) -> float:
        """Leader: when the first higher-priority peer, eligible and reachable for `delay`,
        may preempt it (inf if none is waiting)."""
        return min(
            (
                p.eligible_since + delay
                for p in self.peers.values()
                if p.eligible_since is not None and p.spec.priority > me.priority
            ),
            default=INF,
        )

    def preempt_due(self, me: NodeSpec, delay: float, now: float) -> str:
        """Leader: the highest-priority peer whose preemption is due at `now` ('' if none)."""
        due = [
            p
            for p in self.peers.values()
            if p.eligible_since is not None
            and p.spec.priority > me.priority
            # Same expression as in `preempt_deadline`, so the timer that fires for it also passes.
            and now >= p.eligible_since + delay
        ]
        return max(due, key=lambda p: (p.spec.priority, p.spec.name)).spec.name if due else ""

    def reset_acks(self) -> None:
        for info in self.peers.values():
            info.acked_sent_at = NEVER
            info.eligible_since = None
            info.fortified_seq = None
            info.keyed = False

    def lease_base(self, own_sent_at: float) -> float:
        """The send time that a majority (counting this node at `own_sent_at`) has acknowledged.

        The lease runs from the quorum-th newest acknowledged send time: every node in that
        majority received a heartbeat sent at or after it, so each promised at least that long.
        """
        times = sorted([own_sent_at, *(p.acked_at() for p in self.peers.values())], reverse=True)
        return times[self._spec.quorum - 1]

    def best_target(self, now: float, window: float, exclude: str = "") -> str:
        """The highest-priority peer that is eligible and reachable; '' if none."""
        ranked = sorted(
            (
                p
                for p in self.peers.values()
                if p.spec.name != exclude
                and p.eligible()
                and p.healthy is True
                and p.reachable(now, window)
            ),
            key=lambda p: _rank_key(p.spec),
        )
        return ranked[0].spec.name if ranked else ""

    def better_ranked(self, me: NodeSpec, exclude: str) -> int:
        """How many peers that may be eligible outrank `me` (priority, then name)."""
        return sum(
            1
            for p in self.peers.values()
            if p.spec.name != exclude
            and p.eligible()
            and _rank_key(p.spec) < _rank_key(me)
        )

    def summaries(
        self, now: float, window: float, own: PeerSummary
    ) -> tuple[PeerSummary, ...]:
        out = [own]
        for p in self.peers.values():
            out.append(
                PeerSummary(
                    name=p.spec.name,
                    healthy=p.healthy is True,
                    maintenance=p.maintenance is True,
                    reachable=p.reachable(now, window),
                )
            )
        return tuple(out)

    def apply_summaries(self, summaries: tuple[PeerSummary, ...]) -> None:
        """A follower learns the cluster from its leader's heartbeat."""
        for s in summaries:
            info = self.peers.get(s.name)
            if info is None:
                continue
            info.healthy = s.healthy
            info.maintenance = s.maintenance
            info.reported_reachable = s.reachable


def _rank_key(n: NodeSpec) -> tuple[int, str]:
    # Higher priority first; ties go to the alphabetically first name, the same on every node.
    return (-n.priority, n.name)
