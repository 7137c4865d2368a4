"""Operator-command helpers with no access to a node's private state.

`check_target` judges a switchover target from the facts in a `PeerTable`; `PendingCommands`
remembers the requests this node forwarded until the `CommandReply` or the timeout. The
commands themselves (what a switchover or maintenance change does to the roles) are `Node`
methods: they are state transitions like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from hafailover.core.peers import INF, PeerTable
from hafailover.core.reasons import Reason

# What carrying out a command came to: (accepted, reason, detail), answered to the operator as a
# `CommandResult` on this node or as a `CommandReply` to the node that forwarded it.
Outcome = tuple[bool, Reason, str]


def check_target(
    peers: PeerTable, me: str, leading: bool, target: str, now: float, window: float
) -> Reason | None:
    """Why `target` cannot take over (None: it can, as far as this node knows).

    Only a leader has fresh facts about health and reachability; a follower checks the names
    only and the leader checks again.
    """
    if target == me and leading:
        return Reason.TARGET_IS_LEADER
    info = peers.get(target)
    if info is None:
        return None if target == me else Reason.TARGET_UNKNOWN
    if info.spec.witness:
        return Reason.TARGET_IS_WITNESS
    if not leading:
        return None
    if info.healthy is not True:
        return Reason.TARGET_UNHEALTHY
    if info.maintenance:
        return Reason.TARGET_IN_MAINTENANCE
    if not info.reachable(now, window):
        return Reason.TARGET_UNREACHABLE
    return None


@dataclass(frozen=True)
class Pending:
    request_id: int
    node: str
    deadline: float


class PendingCommands:
    """Requests this node forwarded and whose `CommandReply` it still waits for."""

    def __init__(self) -> None:
        self._by_id: dict[int, Pending] = {}

    def add(self, request_id: int, node: str, deadline: float) -> None:
        self._by_id[request_id] = Pending(request_id, node, deadline)

    def answer(self, request_id: int, sender: str) -> Pending | None:
        """The request a reply from `sender` answers (removed), or None for a stray reply."""
        pending = self._by_id.get(request_id)
        if pending is None or pending.node != sender:
            return None
        return self._by_id.pop(request_id)

    def expired(self, now: float) -> list[Pending]:
        """Requests whose deadline has passed (removed), oldest first."""
        out = sorted(
            (p for p in self._by_id.values() if now >= p.deadline), key=lambda p: p.deadline
        )
        for p in out:
            del self._by_id[p.request_id]
        return out

    def next_deadline(self) -> float:
        if not self._by_id:
            return INF
        return min((p.deadline for p in self._by_id.values()), default=INF)
