"""The control-socket handler: status, events, switchover and maintenance (docs/cli.md).

Status is this node's view of the whole cluster, built from the core's snapshot plus the
runtime's own facts (checks, VIPs on the interface, drop counters, effects failing now).
A switchover or maintenance request is answered only once it has been carried out or refused:
by this node's core, or by the peer it was forwarded to (`Engine.command` waits for that, with a
bound), so `accepted` means done, not sent.
"""

from __future__ import annotations

import itertools
import os
import random
from datetime import UTC, datetime
from typing import Any

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
from hafailover.core.events import SetMaintenance, Switchover
from hafailover.core.reasons import Role
from hafailover.runtime.checks import HealthPort
from hafailover.runtime.engine import Engine


class StatusHandler:
    def __init__(self, engine: Engine, cluster: str, checks: HealthPort) -> None:
        self.engine = engine
        self.cluster = cluster
        self.checks = checks
        # Request ids travel to peers and come back in their replies: start each process at a
        # random point, so a late reply to a request of a previous run matches nothing here.
        self._request_ids = itertools.count(random.SystemRandom().randrange(1, 2**31))

    async def handle(self, request: Request) -> dict[str, object]:
        match request:
            case StatusRequest():
                return await self.status()
            case PingRequest():
                return {"pong": True, "node": self.engine.node.name, "pid": os.getpid()}
            case EventsRequest(limit=limit, after=after):
                events = self.engine.ports.events.read(max(limit, 1) if after is None else 10_000)
                if after is not None:
                    events = [e for e in events if int(e.get("seq", 0)) > after][:limit]
                return {"events": events[-limit:] if after is None else events}
            case SwitchoverRequest(to=to):
                result = await self.engine.command(Switchover(next(self._request_ids), to or ""))
                return {
                    "accepted": result.accepted,
                    "reason": result.reason.value,
                    "detail": result.detail,
                    "leader": self.engine.node.leader or None,
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
        holder: str | None = None
        if view.holds_vip:
            holder = view.name
        elif view.role is not Role.LEADER and view.leader and view.quorum:
            holder = view.leader
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
        return {
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
        }


async def _present(engine: Engine) -> list[Any]:
    try:
        return list(await engine.ports.vips.present(engine.vips))
    except Exception:  # status must answer even if netlink does not
        return []
