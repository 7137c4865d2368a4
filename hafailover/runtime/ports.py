"""What the engine drives and acts through: the elections (`Groups`, or one `Node` adapted as
the only group) and the ports of every effect, each with a fake for tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hafailover.core.actions import Exit
from hafailover.core.events import Event
from hafailover.core.groups import DEFAULT_GROUP, ForGroup, GroupsState, GroupVote, Tagged
from hafailover.core.node import Node
from hafailover.net.announce import Announcer
from hafailover.net.vip import Vip, VipPort
from hafailover.runtime.notify import NotifierPort
from hafailover.runtime.sdnotify import SdNotifyPort
from hafailover.runtime.store import EventLogPort, StatePort
from hafailover.runtime.transport import TransportPort

log = logging.getLogger("hafailover.engine")

Input = Event | ForGroup


def exit_now(action: Exit) -> None:
    """What `Exit` does in the daemon: log, flush, and leave with status 1 at once (no cleanup:
    systemd's ExecStopPost=release-vips and Restart= take over)."""
    import os

    log.critical("exiting now (status 1): %s", action.detail)
    logging.shutdown()
    os._exit(1)


class Elections(Protocol):
    """What the engine needs of `Groups` (a single `Node` is adapted by `_OneGroup`)."""

    name: str

    @property
    def groups(self) -> tuple[str, ...]: ...

    @property
    def maintenance(self) -> bool: ...

    def node(self, group: str) -> Node: ...

    def start(self, now: float) -> list[Tagged]: ...

    def handle_many(self, events: Iterable[Input], now: float) -> list[Tagged]: ...

    def next_deadline(self) -> float: ...

    def settled(self, now: float) -> bool: ...

    def persistent_state(self) -> GroupsState: ...


class OneGroup:
    """A single `Node` as the only group `default` (unit tests script a `Node`). Its `Persist`
    is saved as the single-group state, exactly as before groups."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.name = node.name

    @property
    def groups(self) -> tuple[str, ...]:
        return (DEFAULT_GROUP,)

    @property
    def maintenance(self) -> bool:
        return self._node.maintenance

    def node(self, group: str) -> Node:
        return self._node

    def start(self, now: float) -> list[Tagged]:
        return [Tagged(DEFAULT_GROUP, a) for a in self._node.start(now)]

    def handle_many(self, events: Iterable[Input], now: float) -> list[Tagged]:
        out: list[Tagged] = []
        for e in events:
            ev = e.event if isinstance(e, ForGroup) else e
            out += [Tagged(DEFAULT_GROUP, a) for a in self._node.handle(ev, now)]
        return out

    def next_deadline(self) -> float:
        return self._node.next_deadline()

    def settled(self, now: float) -> bool:
        return False  # no node liveness: a lone `Node` reads every datagram as it comes

    def persistent_state(self) -> GroupsState:
        n = self._node
        return GroupsState(n.maintenance, {DEFAULT_GROUP: GroupVote(n.term, n.voted_for)})


@dataclass
class Ports:
    """Every effect the engine uses, each behind a small port with a fake for tests.

    `announcer`/`notifier` serve every group that has no entry in `announcers`/`notifiers`."""

    transport: TransportPort
    vips: VipPort
    announcer: Announcer
    notifier: NotifierPort
    store: StatePort
    events: EventLogPort
    systemd: SdNotifyPort
    on_holding: Callable[[bool], None] = field(default=lambda holding: None)
    # The VIPs this node announces as its own now (every group's; the ARP conflict watcher
    # must only report claims on these, not on a peer's group).
    on_held: Callable[[Sequence[Vip]], None] = field(default=lambda vips: None)
    on_exit: Callable[[Exit], None] = exit_now
    announcers: dict[str, Announcer] = field(default_factory=dict)
    notifiers: dict[str, NotifierPort] = field(default_factory=dict)

    def announcer_for(self, group: str) -> Announcer:
        return self.announcers.get(group, self.announcer)

    def notifier_for(self, group: str) -> NotifierPort:
        return self.notifiers.get(group, self.notifier)
