"""Read-only snapshots of a node for status output, built from public facts only.

`Node.view(now)` calls `build_view` with its public fields; this module never imports the
state machine, so the snapshot cannot reach into it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hafailover.core.peers import NEVER, PeerTable
from hafailover.core.reasons import Role
from hafailover.core.spec import Timings


@dataclass(frozen=True)
class PeerView:
    name: str
    role: str
    healthy: bool | None
    maintenance: bool | None
    priority: int
    witness: bool
    reachable: bool
    last_heard: float | None


@dataclass(frozen=True)
class NodeView:
    """A read-only snapshot for status output."""

    name: str
    role: Role
    term: int
    leader: str
    holds_vip: bool
    healthy: bool
    maintenance: bool
    quorum: bool
    lease_remaining: float | None
    peers: tuple[PeerView, ...]
    # Stopped (final): never stands or takes the VIP again.
    stopped: bool = False
    # Could stand for election now (healthy, not in maintenance, no witness, not stopped, no
    # effect fault that forbids it).
    eligible: bool = True
    # One sentence naming the failing effect(s) and why ("" when nothing fails).
    fault: str = ""


@dataclass(frozen=True)
class NodeFacts:
    """The public facts of a node that a snapshot is built from."""

    name: str
    role: Role
    term: int
    leader: str
    holds_vip: bool
    healthy: bool
    maintenance: bool
    stopped: bool
    eligible: bool
    fault: str
    lease_until: float
    leader_contact: float


def build_view(facts: NodeFacts, peers: PeerTable, timings: Timings, now: float) -> NodeView:
    """A read-only snapshot at `now`, for status output."""
    ft = timings.failover_timeout
    leading = facts.role is Role.LEADER
    contact = facts.leader_contact
    quorum = now < facts.lease_until if leading else now - contact <= ft
    views = []
    for p in peers.peers.values():
        if leading:
            reachable = p.reachable(now, ft)
        elif p.spec.name == facts.leader:
            reachable = now - contact <= ft
        else:
            reachable = bool(p.reported_reachable) and quorum
        heard = p.last_heard if p.last_heard != NEVER else None
        if p.spec.name == facts.leader and contact != NEVER:
            heard = contact
        role = Role.LEADER.value if p.spec.name == facts.leader else Role.FOLLOWER.value
        views.append(
            PeerView(
                name=p.spec.name,
                role=role if reachable else "unreachable",
                healthy=p.healthy,
                maintenance=p.maintenance,
                priority=p.spec.priority,
                witness=p.spec.witness,
                reachable=reachable,
                last_heard=heard,
            )
        )
    remaining = facts.lease_until - now if leading and facts.lease_until > now else None
    return NodeView(
        name=facts.name,
        role=facts.role,
        term=facts.term,
        leader=facts.leader,
        holds_vip=facts.holds_vip,
        healthy=facts.healthy,
        maintenance=facts.maintenance,
        quorum=quorum,
        lease_remaining=remaining,
        peers=tuple(views),
        stopped=facts.stopped,
        eligible=facts.eligible,
        fault=facts.fault,
    )
