"""The engine: one asyncio loop driving the protocol core.

Every input (packet, timer, health verdict, operator command) becomes a core event handled at
`time.monotonic()`; the returned actions are carried out in list order (see
`hafailover.core.actions` for the ordering guarantees). One timer is armed at the core's next
deadline. The core releases an expired lease before it looks at any event, so whatever wakes
the loop first after a stall (a packet or the timer) drops the VIP first.

Effects that are fast and must stay ordered run inline: netlink address changes (~0.1 ms),
prebuilt ARP frames (~0.1 ms), the state file (fsync, only on elections: a vote must be on disk
before the message that grants it leaves). Slow ones (checks, hooks) run as tasks and come back
as events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hafailover.core.actions import (
    AcquireVip,
    Action,
    Announce,
    CommandResult,
    Decision,
    Notify,
    Persist,
    ReleaseVip,
    Send,
)
from hafailover.core.describe import describe
from hafailover.core.events import (
    Event,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Switchover,
    TimerFired,
)
from hafailover.core.messages import Message
from hafailover.core.node import Node
from hafailover.net.announce import Announcer
from hafailover.net.vip import VipError, VipManager
from hafailover.runtime.logs import log_decision
from hafailover.runtime.notify import NotifierPort, hook_env
from hafailover.runtime.sdnotify import SdNotifyPort
from hafailover.runtime.store import EventLogPort, StatePort
from hafailover.runtime.transport import TransportPort

log = logging.getLogger("hafailover.engine")

RECENT_TRANSITIONS = 50


@dataclass
class Ports:
    """Every effect the engine uses, each behind a small port with a fake for tests."""

    transport: TransportPort
    vips: VipManager
    announcer: Announcer
    notifier: NotifierPort
    store: StatePort
    events: EventLogPort
    systemd: SdNotifyPort
    on_holding: Callable[[bool], None] = field(default=lambda holding: None)


class Engine:
    def __init__(
        self,
        node: Node,
        ports: Ports,
        vip_names: list[str],
        max_loop_lag: float,
        clock: Callable[[], float] = time.monotonic,
        watchdog: bool = True,
    ) -> None:
        self.node = node
        self.ports = ports
        self.vip_names = vip_names
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.watchdog = watchdog
        self.started_at = clock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._health: dict[str, tuple[bool, str]] = {}
        self._reported_healthy = node.healthy
        self._seq = _last_seq(ports.events)
        self.recent: list[dict[str, Any]] = [
            e for e in ports.events.read(RECENT_TRANSITIONS) if isinstance(e, dict)
        ]
        self.max_lag_seen = 0.0
        self.stopping = False

    # ------------------------------------------------------------------ inputs

    def start(self) -> None:
        self._execute(self.node.start(self.clock()))
        self._arm()

    def feed(self, event: Event) -> list[Action]:
        actions = self.node.handle(event, self.clock())
        self._execute(actions)
        self._arm()
        return actions

    def on_message(self, sender: str, message: Message) -> None:
        self.feed(MessageReceived(sender, message))

    def command(self, event: Switchover | SetMaintenance) -> CommandResult:
        for action in self.feed(event):
            if isinstance(action, CommandResult):
                return action
        raise RuntimeError("the core answered no CommandResult")  # a core bug

    def set_health(self, component: str, ok: bool, detail: str) -> None:
        """The node is healthy when every component is (checks, loop lag, VIP handling)."""
        self._health[component] = (ok, detail)
        healthy = all(ok for ok, _ in self._health.values())
        if healthy != self._reported_healthy:
            self._reported_healthy = healthy
            why = "; ".join(f"{c}: {d}" for c, (ok, d) in self._health.items() if not ok)
            self.feed(HealthChanged(healthy, why or detail))

    @property
    def health_detail(self) -> dict[str, tuple[bool, str]]:
        return dict(self._health)

    # ------------------------------------------------------------------ timer and lag

    def _arm(self) -> None:
        deadline = self.node.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline != float("inf"):
            loop = asyncio.get_running_loop()
            # loop.time() is time.monotonic(), the core's clock.
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.feed(TimerFired())

    def tick(self, expected: float) -> None:
        """Called by the lag ticker: measures lateness, drives the watchdog, flags a slow loop."""
        lag = max(0.0, self.clock() - expected)
        self.max_lag_seen = max(self.max_lag_seen, lag)
        on_time = lag <= self.max_loop_lag
        if on_time and self.watchdog:
            self.ports.systemd.watchdog()
        prev_ok = self._health.get("loop", (True, ""))[0]
        if on_time != prev_ok:
            self.set_health("loop", on_time, f"event loop {lag * 1000:.0f} ms late")

    # ------------------------------------------------------------------ actions

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._do(action)
            except Exception:
                log.exception("action %s failed", action)

    def _do(self, action: Action) -> None:
        p = self.ports
        match action:
            case Send(to=to, message=message):
                p.transport.send(to, message)
            case ReleaseVip():
                p.announcer.cancel()
                p.on_holding(False)
                try:
                    p.vips.release()
                except VipError as e:
                    log.error("releasing the VIP failed: %s", e)
            case AcquireVip():
                try:
                    p.vips.acquire()
                except VipError as e:
                    log.error("adding the VIP failed: %s", e)
                    # A node that cannot hold the address must not keep the lease: unhealthy
                    # makes the core release and hand over. Scheduled, not recursive.
                    asyncio.get_running_loop().call_soon(self.set_health, "vip", False, str(e))
            case Announce():
                p.announcer.announce()
                p.announcer.set_holding(True)
                p.on_holding(True)
            case Persist(state=state):
                p.store.save(state)
            case Notify(kind=kind, role=role, term=term, leader=leader):
                env = hook_env(
                    node=self.node.name, role=role, term=term, leader=leader, vips=self.vip_names
                )
                p.notifier.submit(kind.value, env)
            case Decision():
                self._record(action)
            case CommandResult():
                pass  # returned to the caller by command()

    def _record(self, d: Decision) -> None:
        log_decision(log, d)
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "node": self.node.name,
            "reason": d.reason.value,
            "term": d.term,
            "role": d.role.value,
            "leader": d.leader or None,
            "message": describe(self.node.name, d),
        }
        self.ports.events.append(entry)
        self.recent.append(entry)
        del self.recent[:-RECENT_TRANSITIONS]
        view = self.node.view(self.clock())
        self.ports.systemd.status(
            f"{view.role.value}, term {view.term}, leader {view.leader or 'none'}, "
            f"{'healthy' if view.healthy else 'unhealthy'}"
            f"{', holds VIP' if view.holds_vip else ''}"
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _last_seq(events: EventLogPort) -> int:
    last = events.read(1)
    if last and isinstance(last[-1].get("seq"), int):
        return int(last[-1]["seq"])
    return 0


async def lag_ticker(engine: Engine, interval: float) -> None:
    """Wake every `interval`: measure loop lag, ping the watchdog only while on time."""
    expected = engine.clock() + interval
    while not engine.stopping:
        await asyncio.sleep(max(0.0, expected - engine.clock()))
        engine.tick(expected)
        now = engine.clock()
        expected += interval
        if expected < now:  # after a long stall, do not fire a burst of catch-up ticks
            expected = now + interval
