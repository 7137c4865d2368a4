"""The decision history (`hafailover events`, `status`'s last transitions) and the systemd
status line, as the engine records them.

Every core `Decision` becomes one entry in `<state_dir>/events.jsonl` (with its group), next to
the runtime's own events (links, re-added VIPs, recover commands, configuration drift); the
most recent ones are kept in memory for `status`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from hafailover.core.actions import Decision
from hafailover.core.describe import describe
from hafailover.core.events import Effect
from hafailover.core.node import Node
from hafailover.core.reasons import Role
from hafailover.runtime.logs import log_decision
from hafailover.runtime.store import EventLogPort

log = logging.getLogger("hafailover.engine")

RECENT_TRANSITIONS: Final = 50


class _Elections(Protocol):
    @property
    def groups(self) -> tuple[str, ...]: ...

    def node(self, group: str) -> Node: ...


class History:
    """Numbered, timestamped entries appended to the event log; the recent ones in memory."""

    def __init__(self, events: EventLogPort, node: str) -> None:
        self.events = events
        self.node = node
        last = events.read(1)
        self._seq = int(last[-1]["seq"]) if last and isinstance(last[-1].get("seq"), int) else 0
        self.recent: list[dict[str, Any]] = [
            e for e in events.read(RECENT_TRANSITIONS) if isinstance(e, dict)
        ]

    def decision(self, group: str, d: Decision, *, multi: bool) -> None:
        """Log a core decision and append it (the group named in the message when there are
        several)."""
        if multi:
            log_decision(log, {"reason": d.reason.value, "role": d.role.value, "term": d.term,
                               "leader": d.leader, "detail": d.detail, "group": group})
        else:
            log_decision(log, d)
        entry: dict[str, Any] = {
            "reason": d.reason.value,
            "group": group,
            "term": d.term,
            "role": d.role.value,
            "leader": d.leader or None,
            "message": describe(self.node, d) + (f" (group {group})" if multi else ""),
        }
        if isinstance(d.detail.get("detail"), str):
            entry["detail"] = d.detail["detail"]  # e.g. the sentence of a failed effect
        self.append(entry)

    def append(self, fields: Mapping[str, Any]) -> None:
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "node": self.node,
            **fields,
        }
        self.events.append(entry)
        self.recent.append(entry)
        del self.recent[:-RECENT_TRANSITIONS]


def status_line(elections: _Elections, failing: Mapping[Effect, str], now: float) -> str:
    """The systemd status line: one group as before groups, several summarised."""
    effects = "".join(f", {k.value} failing" for k in failing)
    names = elections.groups
    if len(names) == 1:
        view = elections.node(names[0]).view(now)
        return (
            f"{view.role.value}, term {view.term}, leader {view.leader or 'none'}, "
            f"{'healthy' if view.healthy else 'unhealthy'}"
            f"{', holds VIP' if view.holds_vip else ''}{effects}"
        )
    # Plain attributes, not views: this runs after every step that decided something.
    nodes = [(g, elections.node(g)) for g in names]
    leads = [g for g, n in nodes if n.role is Role.LEADER]
    holds = sum(1 for _, n in nodes if n.holds_vip)
    leaderless = [g for g, n in nodes if not n.leader]
    not_eligible = [g for g, n in nodes if not n.eligible]
    text = f"{len(names)} groups: leads {_some(leads) or 'none'}, holds {holds}"
    if leaderless:
        text += f", no leader: {_some(leaderless)}"
    if not_eligible:
        text += f", not eligible for {_some(not_eligible)}"
    return text + effects


def _some(names: list[str], shown: int = 8) -> str:
    """A list of group names for one status line: the first few and how many more."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"
