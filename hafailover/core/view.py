"""Read-only snapshots of a node for status output (kept out of the state machine's file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hafailover.core.peers import NEVER
from hafailover.core.reasons import Role

if TYPE_CHECKING:
    from hafailover.core.node import Node


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


def node_view(node: Node, now: float) -> NodeView:
    """A read-only snapshot of `node` at `now`, for status output."""
    ft = node.spec.timings.failover_timeout
    leading = node.role is Role.LEADER
    quorum = now < node.lease_until if leading else now - node.leader_contact <= ft
    peers = []
    for p in node.peers.peers.values():
        if leading:
            reachable = p.reachable(now, ft)
        elif p.spec.name == node.leader:
            reachable = now - node.leader_contact <= ft
        else:
            reachable = bool(p.reported_reachable) and quorum
        heard = p.last_heard if p.last_heard != NEVER else None
        if p.spec.name == node.leader and node.leader_contact != NEVER:
            heard = node.leader_contact
        role = Role.LEADER.value if p.spec.name == node.leader else Role.FOLLOWER.value
        peers.append(
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
    remaining = node.lease_until - now if leading and node.lease_until > now else None
    return NodeView(
        name=node.name,
        role=node.role,
        term=node.term,
        leader=node.leader,
        holds_vip=node.holds_vip,
        healthy=node.healthy,
        maintenance=node.maintenance,
        quorum=quorum,
        lease_remaining=remaining,
        peers=tuple(peers),
    )
