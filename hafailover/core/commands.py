"""Operator commands: switchover, maintenance and graceful stop.

Functions of a `Node`, kept apart so node.py reads as the election protocol. Role changes
still happen only in Node's `_become_*` methods (reached here through `_hand_over`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hafailover.core.actions import Notify, NotifyKind
from hafailover.core.messages import MaintenanceRequest, TransferRequest
from hafailover.core.reasons import Reason, Role

if TYPE_CHECKING:
    from hafailover.core.node import Node


def check_target(node: Node, target: str, now: float) -> Reason | None:
    if target == node.name and node.role is Role.LEADER:
        return Reason.TARGET_IS_LEADER
    info = node.peers.get(target)
    if info is None:
        return None if target == node.name else Reason.TARGET_UNKNOWN
    if info.spec.witness:
        return Reason.TARGET_IS_WITNESS
    if node.role is not Role.LEADER:
        return None  # only the leader has fresh facts; it checks again
    if info.healthy is not True:
        return Reason.TARGET_UNHEALTHY
    if info.maintenance:
        return Reason.TARGET_IN_MAINTENANCE
    if not info.reachable(now, node._t.failover_timeout):
        return Reason.TARGET_UNREACHABLE
    return None


def on_switchover(node: Node, rid: int, target: str, now: float) -> None:
    if node.role is Role.LEADER:
        switchover_as_leader(node, rid, target, now)
        return
    problem = check_target(node, target, now) if target else None
    if problem is None and target == node.name and node.me.witness:
        problem = Reason.TARGET_IS_WITNESS
    if problem is not None:
        node._result(rid, False, problem, target)
    elif not node.leader or now - node._leader_contact > node._t.failover_timeout:
        node._result(rid, False, Reason.NO_LEADER, "no leader is reachable from this node")
    else:
        node._send(node.leader, TransferRequest(node.term, target))
        node._result(rid, True, Reason.FORWARDED, node.leader)


def switchover_as_leader(node: Node, rid: int | None, target: str, now: float) -> None:
    problem = check_target(node, target, now) if target else None
    if problem is None and not target:
        target = node.peers.best_target(now, node._t.failover_timeout)
        if not target:
            problem = Reason.NO_ELIGIBLE_TARGET
    if problem is not None:
        node._decide(problem, target=target, refused="switchover")
        if rid is not None:
            node._result(rid, False, problem, target)
        return
    node._hand_over(Reason.SWITCHOVER, target, now)
    if rid is not None:
        node._result(rid, True, Reason.ACCEPTED, target)


def on_set_maintenance(node: Node, rid: int, on: bool, target: str, now: float) -> None:
    if target in ("", node.name):
        set_own_maintenance(node, rid, on, now)
    elif node.peers.get(target) is None:
        node._result(rid, False, Reason.TARGET_UNKNOWN, target)
    else:
        node._send(target, MaintenanceRequest(node.term, on))
        node._result(rid, True, Reason.FORWARDED, target)


def set_own_maintenance(node: Node, rid: int | None, on: bool, now: float) -> None:
    if on == node.maintenance:
        if rid is not None:
            node._result(rid, True, Reason.UNCHANGED, node.name)
        return
    node.maintenance = on
    node._persist()
    reason = Reason.MAINTENANCE_ON if on else Reason.MAINTENANCE_OFF
    node._decide(reason)
    if on:
        node._out.append(Notify(NotifyKind.MAINTENANCE, node.role, node.term, node.leader))
        if node.role is Role.LEADER:
            node._hand_over(reason, "", now)
        elif node.role is not Role.FOLLOWER:
            node._become_follower(node.term, "", reason, now)
    if rid is not None:
        node._result(rid, True, reason, node.name)


def on_stop(node: Node, now: float) -> None:
    if node.role is Role.LEADER:
        node._hand_over(Reason.STOPPING, "", now)
    else:
        node._decide(Reason.STOPPING)
    node._out.append(Notify(NotifyKind.STOP, node.role, node.term, node.leader))
