"""The control-socket handler: status, events, switchover and maintenance (docs/cli.md).

Status is this node's view of the whole cluster, built from the core's snapshot plus the
runtime's own facts (checks, VIPs on the interface, drop counters, effects failing now).
A switchover or maintenance request is answered only once it has been carried out or refused:
by this node's core, or by the peer it was forwarded to (`Engine.command` waits for that, with a
bound), so `accepted` means done, not sent.

Status schema 2 (docs/cli.md): the top-level election fields are the first group's (the only
group's in a configuration without `groups:`), and `groups` lists every group with its holder,
term, preferred node and this node's eligibility with the reasons it is not eligible.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from hafailover.control.protocol import (
    REFUSED,
    EventsRequest,
    MaintenanceRequest,
    PingRequest,
    ProtocolError,
    Request,
    StatusRequest,
    SwitchoverRequest,
)
from hafailover.core.events import Event, SetMaintenance, Switchover
from hafailover.core.groups import ForGroup
from hafailover.core.reasons import Role
from hafailover.core.view import NodeView
from hafailover.runtime.checks import HealthPort
from hafailover.runtime.engine import Engine

STATUS_SCHEMA: Final = 2

# Peer name -> the sections of its configuration fingerprint that differ from ours.
DriftSource = Callable[[], Mapping[str, list[str]]]


class StatusHandler:
    def __init__(
        self,
        engine: Engine,
        cluster: str,
        checks: HealthPort,
        *,
        fingerprint: Mapping[str, str] | None = None,
        peer_fingerprints: Callable[[], Mapping[str, Mapping[str, str]]] | None = None,
        drift: DriftSource | None = None,
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.checks = checks
        self.fingerprint = dict(fingerprint or {})
        self.peer_fingerprints = peer_fingerprints or dict
        self.drift = drift or dict
        # Request ids travel to peers and come back in their replies: start each process at a
        # random point, so a late reply to a request of a previous run matches nothing here.
        self._request_ids = itertools.count(random.SystemRandom().randrange(1, 2**31))

    async def handle(self, request: Request) -> dict[str, object]:
        match request:
            case StatusRequest():
                return await self.status()
            case PingRequest():
                return {"pong": True, "node": self.engine.node.name, "pid": os.getpid()}
            case EventsRequest(limit=limit, after=after, group=group):
                wide = group is not None or after is not None
                events = self.engine.ports.events.read(10_000 if wide else max(limit, 1))
                if group is not None:
                    events = [e for e in events if e.get("group") in (None, group)]
                if after is not None:
                    events = [e for e in events if int(e.get("seq", 0)) > after][:limit]
                return {"events": events[-limit:] if after is None else events}
            case SwitchoverRequest(to=to, group=group):
                switch = Switchover(next(self._request_ids), to or "")
                event: Event | ForGroup = switch if group is None else ForGroup(group, switch)
                result = await self.engine.command(event)
                names = self.engine.groups.groups
                shown = group if group in names else names[0]
                return {
                    "accepted": result.accepted,
                    "reason": result.reason.value,
                    "detail": result.detail,
                    "leader": self.engine.groups.node(shown).leader or None,
                    "group": group,
                }
            case MaintenanceRequest(on=on, node=node):
                result = await self.engine.command(
                    SetMaintenance(next(self._request_ids), on, node or "")
                )
                return {
                    "accepted": result.accepted,
                    "reason": result.reason.value,
                    "detail": result.detail,
                }
        raise ProtocolError(REFUSED, "unsupported request")

    async def status(self) -> dict[str, object]:
        engine = self.engine
        present = {str(v) for v in await _present(engine)}
        now = engine.clock()
        view = engine.node.view(now)
        holder = _holder(view)
        me = engine.node.me
        nodes: list[dict[str, object]] = [
            {
                "name": view.name,
                "role": view.role.value,
                "healthy": view.healthy,
                "priority": me.priority,
                "maintenance": view.maintenance,
                "witness": me.witness,
                "reachable": True,
                "last_heard_ms": None,
            }
        ]
        for p in view.peers:
            nodes.append(
                {
                    "name": p.name,
                    "role": p.role,
                    "healthy": p.healthy,
                    "priority": p.priority,
                    "maintenance": p.maintenance,
                    "witness": p.witness,
                    "reachable": p.reachable,
                    "last_heard_ms": None
                    if p.last_heard is None
                    else round((now - p.last_heard) * 1000),
                }
            )
        order = {n.name: i for i, n in enumerate(engine.node.spec.nodes)}
        nodes.sort(key=lambda n: order.get(str(n["name"]), 0))
        checks: list[dict[str, Any]] = []
        for c in self.checks.statuses():
            checks.append(
                {
                    "name": c.name,
                    "kind": str(c.kind),
                    "ok": c.ok,
                    "critical": c.critical,
                    "last_duration_ms": None
                    if c.last_duration is None
                    else round(c.last_duration * 1000),
                    "output_tail": c.output_tail or c.last_error,
                    "last_change": None
                    if c.last_change_wall is None
                    else datetime.fromtimestamp(c.last_change_wall, UTC).isoformat(
                        timespec="seconds"
                    ),
                }
            )
        for component, (ok, detail) in engine.health_detail.items():
            if not ok:
                checks.append(
                    {
                        "name": f"daemon:{component}",
                        "kind": "internal",
                        "ok": False,
                        "critical": True,
                        "last_duration_ms": None,
                        "output_tail": detail,
                        "last_change": None,
                    }
                )
        for effect, detail in engine.failing.items():
            checks.append(
                {
                    "name": f"effect:{effect.value}",
                    "kind": "internal",
                    "ok": False,
                    "critical": True,
                    "last_duration_ms": None,
                    "output_tail": detail,
                    "last_change": None,
                }
            )
        vips = engine.vip_names
        drift = self.drift()
        return {
            "schema": STATUS_SCHEMA,
            "node": view.name,
            "cluster": self.cluster,
            "role": view.role.value,
            "term": view.term,
            "leader": view.leader or None,
            "vip_holder": holder,
            "holds_vip": view.holds_vip,
            "healthy": view.healthy,
            "maintenance": view.maintenance,
            "quorum": view.quorum,
            "lease_remaining_ms": None
            if view.lease_remaining is None
            else round(view.lease_remaining * 1000),
            "uptime_s": round(now - engine.started_at, 3),
            "vips": [
                {
                    "address": v.split(" dev ")[0],
                    "interface": v.split(" dev ")[1] if " dev " in v else "",
                    "present": v in present,
                }
                for v in vips
            ],
            "checks": checks,
            # Barrier effects failing now (persist, acquire, release), each with its sentence.
            "effects_failing": [
                {"effect": effect.value, "detail": detail}
                for effect, detail in engine.failing.items()
            ],
            "nodes": nodes,
            "last_transitions": engine.recent[-10:],
            "drops": {k: v for k, v in engine.ports.transport.drops.items() if v},
            "groups": [self._group(g, now, present) for g in engine.groups.groups],
            "fingerprint": self.fingerprint,
            "peer_fingerprints": {k: dict(v) for k, v in self.peer_fingerprints().items()},
            "drift": [{"node": n, "sections": list(s)} for n, s in sorted(drift.items())],
        }

    def _group(self, group: str, now: float, present: set[str]) -> dict[str, object]:
        engine = self.engine
        node = engine.groups.node(group)
        view = node.view(now)
        ranked = sorted(
            (n for n in node.spec.nodes if not n.witness), key=lambda n: -n.priority
        )
        vips = [str(v) for v in engine.group_vips.get(group, ())]
        return {
            "name": group,
            "role": view.role.value,
            "term": view.term,
            "leader": view.leader or None,
            "holder": _holder(view),
            "holds_vip": view.holds_vip,
            "preferred": ranked[0].name if ranked else None,
            "priority": node.me.priority,
            "lease_remaining_ms": None
            if view.lease_remaining is None
            else round(view.lease_remaining * 1000),
            "quorum": view.quorum,
            "eligible": view.eligible,
            "not_eligible": [] if view.eligible else self._why_not(group, view),
            "vips": [
                {
                    "address": v.split(" dev ")[0],
                    "interface": v.split(" dev ")[1] if " dev " in v else "",
                    "present": v in present,
                }
                for v in vips
            ],
        }

    def _why_not(self, group: str, view: NodeView) -> list[str]:
        """Each reason this node may not stand for `group`, as a short sentence."""
        why = []
        if self.engine.groups.node(group).me.witness:
            why.append("witness (never holds VIPs)")
        if view.stopped:
            why.append("stopping")
        if view.maintenance:
            why.append("maintenance")
        for component, (ok, detail) in self.engine.group_health(group).items():
            if not ok:
                why.append(f"{component}: {detail}")
        if view.fault:
            why.append(f"effect failing: {view.fault}")
        if not why and not view.healthy:
            why.append("unhealthy")
        return why or ["waiting (back-off after a failure)"]


def _holder(view: NodeView) -> str | None:
    if view.holds_vip:
        return view.name
    if view.role is not Role.LEADER and view.leader and view.quorum:
        return view.leader
    return None


async def _present(engine: Engine) -> list[Any]:
    try:
        return list(await engine.ports.vips.present(engine.vips))
    except Exception:  # status must answer even if netlink does not
        return []
