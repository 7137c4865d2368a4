"""The engine: an ordered async executor driving the protocol core.

Every input (packet, timer, health verdict, operator command) becomes a core event and goes into
one inbox; a single task takes events out one at a time, asks the core for its actions
(`Node.handle(event, clock())`) and carries them out in list order, awaiting the slow ones (a
VIP added or removed over netlink, the state file written off the loop). The next event waits
until the whole step is done, so the ordering the core documents in `hafailover.core.actions`
holds in the world, not just in the list: nothing is sent before the vote it carries is on
disk, nobody is told to take over before this node's address is gone.

Barrier actions (`Persist`, `AcquireVip`, `ReleaseVip`): when one fails, the engine carries out
nothing more of that step except `ReleaseVip` (always attempted: holding an address too many is
the dangerous direction), `Decision` (recorded) and `Exit`; a `CommandResult` of that step is
answered as refused with the failure's sentence. Then it feeds `EffectFailed(kind, detail)` to
the core and carries out the actions of that under the same rule. It keeps the kinds failing
until one of them succeeds again, when it feeds `EffectSucceeded(kind)` after the step.

Kernel-backed VIP lifetime: with `vip_lifetime` set, addresses are added with a finite valid
(and preferred) lifetime and renewed every `renewal_interval()` while the core holds a valid
lease. A frozen, wedged or starved daemon stops renewing, and the kernel removes its address
within the lifetime plus the kernel's timer slack (docs/architecture.md). A renewal that fails
is a failed acquire.

One timer is armed at the core's next deadline on the engine's own clock. The core releases an
expired lease before it looks at any event, so whatever is handled first after a stall (a
packet or the timer) drops the VIP first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from hafailover.core.actions import (
    AcquireVip,
    Action,
    Announce,
    CommandResult,
    Decision,
    Exit,
    Notify,
    Persist,
    ReleaseVip,
    Send,
)
from hafailover.core.describe import describe
from hafailover.core.events import (
    Effect,
    EffectFailed,
    EffectSucceeded,
    Event,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Switchover,
    TimerFired,
)
from hafailover.core.messages import Message
from hafailover.core.node import Node
from hafailover.core.reasons import Reason
from hafailover.errors import HafailoverError
from hafailover.net.announce import Announcer
from hafailover.net.vip import Vip, VipError, VipPort
from hafailover.runtime.logs import log_decision
from hafailover.runtime.notify import NotifierPort, hook_env
from hafailover.runtime.sdnotify import SdNotifyPort
from hafailover.runtime.store import EventLogPort, StateError, StatePort
from hafailover.runtime.transport import TransportPort

log = logging.getLogger("hafailover.engine")

RECENT_TRANSITIONS: Final = 50
# Kept between the lease and the address's expiry: the kernel deletes up to 20 ms early, and a
# renewal waits its turn in the inbox.
RENEW_MARGIN: Final = 0.1
MIN_RENEW_INTERVAL: Final = 0.25
# EffectFailed/EffectSucceeded fed back within one step: a core that keeps answering a failure
# with the same failing action would otherwise spin; the core retries on its timers instead.
MAX_FEEDBACK: Final = 8

_ALWAYS: Final = (ReleaseVip, Decision, Exit)
FAILED_REASON: Final = {
    Effect.PERSIST: Reason.PERSIST_FAILED,
    Effect.ACQUIRE: Reason.ACQUIRE_FAILED,
    Effect.RELEASE: Reason.RELEASE_FAILED,
}


class EffectError(HafailoverError):
    """A barrier action failed; `detail` is the one-sentence reason shown to the operator."""

    def __init__(self, effect: Effect, detail: str) -> None:
        super().__init__(detail)
        self.effect = effect
        self.detail = detail


class _Renew:
    """Inbox marker: renew the VIP lifetime (ordered with the events, never beside them)."""


_RENEW: Final = _Renew()
_Item = tuple[Event | _Renew, "asyncio.Future[list[Action]] | None"]


def exit_now(action: Exit) -> None:
    """What `Exit` does in the daemon: log, flush, and leave with status 1 at once (no cleanup:
    systemd's ExecStopPost=release-vips and Restart= take over)."""
    import os

    log.critical("exiting now (status 1): %s", action.detail)
    logging.shutdown()
    os._exit(1)


@dataclass
class Ports:
    """Every effect the engine uses, each behind a small port with a fake for tests."""

    transport: TransportPort
    vips: VipPort
    announcer: Announcer
    notifier: NotifierPort
    store: StatePort
    events: EventLogPort
    systemd: SdNotifyPort
    on_holding: Callable[[bool], None] = field(default=lambda holding: None)
    on_exit: Callable[[Exit], None] = exit_now


class Engine:
    def __init__(
        self,
        node: Node,
        ports: Ports,
        vips: Sequence[Vip],
        max_loop_lag: float,
        clock: Callable[[], float] = time.monotonic,
        watchdog: bool = True,
        vip_lifetime: float | None = None,
        command_timeout: float = 10.0,
    ) -> None:
        self.node = node
        self.ports = ports
        self.vips = tuple(vips)
        self.vip_names = [str(v) for v in self.vips]
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.watchdog = watchdog
        self.vip_lifetime = vip_lifetime
        self.renew_interval = (
            renewal_interval(vip_lifetime, node.spec.timings.lease_duration)
            if vip_lifetime
            else float("inf")
        )
        self.command_timeout = command_timeout
        self.started_at = clock()
        self.failing: dict[Effect, str] = {}  # effect kinds failing now -> the last sentence
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._waiters: dict[int, asyncio.Future[CommandResult]] = {}
        self._added = False  # this engine added the VIPs and has not removed them since
        self._renew_queued = False
        self._health: dict[str, tuple[bool, str]] = {}
        self._reported_healthy = node.healthy
        self._seq = _last_seq(ports.events)
        self.recent: list[dict[str, Any]] = [
            e for e in ports.events.read(RECENT_TRANSITIONS) if isinstance(e, dict)
        ]
        self.max_lag_seen = 0.0
        self.stopping = False

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Run the core's start step, then consume the inbox until `close()`."""
        await self._step(None)
        self._task = asyncio.create_task(self._consume(), name="engine")
        if self.vip_lifetime:
            self._renewer = asyncio.create_task(self._renew_ticks(), name="vip-renewal")

    async def close(self, timeout: float = 2.0) -> None:
        """Stop taking events: the one being handled finishes, the rest are dropped."""
        self._closed = True
        self._cancel_timer()
        if self._renewer is not None:
            self._renewer.cancel()
        if self._task is not None:
            self._inbox.put_nowait((_RENEW, None))  # wake the consumer so it sees _closed
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("the engine did not finish its step within %gs at close", timeout)
                self._task.cancel()
        for request_id, fut in self._waiters.items():
            if not fut.done():
                fut.set_result(_stopping(request_id))

    # ------------------------------------------------------------------ inputs

    def feed(self, event: Event) -> None:
        """Queue an event; it is handled after every event queued before it."""
        if not self._closed:
            self._silence_if_lease_expired()
            self._inbox.put_nowait((event, None))

    def lease_valid(self) -> bool:
        """Whether this node holds the VIPs under a lease still running now (asked by the
        announcer before each burst)."""
        return self.node.holds_vip and self.clock() < self.node.lease_until

    def _silence_if_lease_expired(self) -> None:
        """A lease that ran out while this process could not run (frozen, starved) silences the
        announcements at once, synchronously, before any other callback queued on the loop
        (an ARP refresh due since the freeze) can claim the address; the core's release
        follows in order. Stopping announcements never needs the core's consent."""
        if self._added and self.node.holds_vip and self.clock() >= self.node.lease_until:
            self.ports.announcer.cancel()
            self.ports.on_holding(False)

    async def process(self, event: Event) -> list[Action]:
        """Queue an event and wait until its whole step has been carried out."""
        fut: asyncio.Future[list[Action]] = asyncio.get_running_loop().create_future()
        if self._closed:
            return []
        self._inbox.put_nowait((event, fut))
        return await fut

    def on_message(self, sender: str, message: Message) -> None:
        self.feed(MessageReceived(sender, message))

    async def command(self, event: Switchover | SetMaintenance) -> CommandResult:
        """Carry out an operator command and wait for its answer: the `CommandResult` with its
        request id, which may come in a later step (a forwarded request answered by a peer),
        or a refusal after `command_timeout`."""
        if self._closed:
            return _stopping(event.request_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CommandResult] = loop.create_future()
        self._waiters[event.request_id] = fut
        try:
            self.feed(event)
            return await asyncio.wait_for(fut, self.command_timeout)
        except TimeoutError:
            return CommandResult(
                event.request_id, False, Reason.COMMAND_TIMEOUT,
                f"no answer within {self.command_timeout:g}s",
            )
        finally:
            self._waiters.pop(event.request_id, None)

    def set_health(self, component: str, ok: bool, detail: str) -> None:
        """The node is healthy when every component is (checks, loop lag)."""
        self._health[component] = (ok, detail)
        healthy = all(ok for ok, _ in self._health.values())
        if healthy != self._reported_healthy:
            self._reported_healthy = healthy
            why = "; ".join(f"{c}: {d}" for c, (ok, d) in self._health.items() if not ok)
            self.feed(HealthChanged(healthy, why or detail))

    @property
    def health_detail(self) -> dict[str, tuple[bool, str]]:
        return dict(self._health)

    # ------------------------------------------------------------------ the executor

    async def _consume(self) -> None:
        while not self._closed:
            item, fut = await self._inbox.get()
            if self._closed:
                if fut is not None and not fut.done():
                    fut.set_result([])
                break
            try:
                if isinstance(item, _Renew):
                    self._renew_queued = False
                    await self._renew()
                    actions: list[Action] = []
                else:
                    actions = await self._step(item)
            except Exception as e:  # a bug: keep the loop, tell whoever waits
                log.exception("handling %s failed", type(item).__name__)
                if fut is not None and not fut.done():
                    fut.set_exception(e)
                continue
            if fut is not None and not fut.done():
                fut.set_result(actions)
        # Whoever still waits gets an empty step rather than hanging.
        while not self._inbox.empty():
            _, fut = self._inbox.get_nowait()
            if fut is not None and not fut.done():
                fut.set_result([])

    async def _step(self, event: Event | None) -> list[Action]:
        """One input and the effect feedback it causes, carried out completely."""
        pending: deque[Event | None] = deque([event])
        done: list[Action] = []
        rounds = 0
        while pending:
            rounds += 1
            if rounds > MAX_FEEDBACK:
                log.error("effect feedback did not settle after %d rounds; dropped %s",
                          MAX_FEEDBACK, [type(e).__name__ for e in pending])
                break
            ev = pending.popleft()
            now = self.clock()
            actions = self.node.start(now) if ev is None else self.node.handle(ev, now)
            done += actions
            failed, succeeded = await self._run(actions)
            for kind, detail in failed:
                self.failing[kind] = detail
                pending.append(EffectFailed(kind, detail))
            failed_kinds = {k for k, _ in failed}
            for kind in succeeded - failed_kinds:
                if self.failing.pop(kind, None) is not None:
                    log.info("%s works again", kind.value)
                    pending.append(EffectSucceeded(kind))
        self._arm()
        return done

    async def _run(self, actions: list[Action]) -> tuple[list[tuple[Effect, str]], set[Effect]]:
        """Carry out one step's actions under the barrier rule: (failures, barrier successes)."""
        failed: list[tuple[Effect, str]] = []
        succeeded: set[Effect] = set()
        for action in actions:
            if failed and isinstance(action, CommandResult):
                first, detail = failed[0]
                self._answer(CommandResult(action.request_id, False, FAILED_REASON[first], detail))
                continue
            if failed and not isinstance(action, _ALWAYS):
                log.debug("skipped after a failed %s: %s", failed[0][0].value, action)
                continue
            try:
                kind = await self._do(action)
            except EffectError as e:
                # Said once per new failure: the core retries on its timers, and a retry that
                # fails the same way is not news for the log or the event history.
                if self.failing.get(e.effect) != e.detail:
                    log.error("%s", e.detail)
                else:
                    log.debug("still failing: %s", e.detail)
                failed.append((e.effect, e.detail))
                continue
            except Exception:  # a non-barrier effect (send, hook, record) must not stop a step
                log.exception("action %s failed", action)
                continue
            if kind is not None:
                succeeded.add(kind)
        return failed, succeeded

    async def _do(self, action: Action) -> Effect | None:
        """Carry out one action; returns the barrier kind it succeeded at, if it is one."""
        p = self.ports
        match action:
            case Send(to=to, message=message):
                p.transport.send(to, message)
            case ReleaseVip():
                p.announcer.cancel()
                p.announcer.set_holding(False)
                p.on_holding(False)
                # No renewal from now on, even if the removal fails: the lifetime then still
                # takes the address away.
                self._added = False
                try:
                    await p.vips.remove(self.vips)
                except VipError as e:
                    raise EffectError(Effect.RELEASE, f"removing the VIP failed: {e}") from e
                return Effect.RELEASE
            case AcquireVip():
                try:
                    await p.vips.add(self.vips, self.vip_lifetime)
                except VipError as e:
                    raise EffectError(Effect.ACQUIRE, f"adding the VIP failed: {e}") from e
                self._added = True
                return Effect.ACQUIRE
            case Announce():
                p.announcer.announce()
                p.announcer.set_holding(True)
                p.on_holding(True)
            case Persist(state=state):
                try:
                    await p.store.asave(state)
                except StateError as e:  # names the file, the reason and what to check
                    raise EffectError(Effect.PERSIST, str(e)) from e
                except OSError as e:
                    raise EffectError(Effect.PERSIST, f"cannot save the state: {e}") from e
                return Effect.PERSIST
            case Notify(kind=kind, role=role, term=term, leader=leader):
                env = hook_env(
                    node=self.node.name, role=role, term=term, leader=leader, vips=self.vip_names
                )
                p.notifier.submit(kind.value, env)
            case Decision():
                self._record(action)
            case Exit():
                log.critical("%s", action.detail)
                p.on_exit(action)
            case CommandResult():
                self._answer(action)
        return None

    def _answer(self, result: CommandResult) -> None:
        fut = self._waiters.get(result.request_id)
        if fut is not None and not fut.done():
            fut.set_result(result)

    # ------------------------------------------------------------------ VIP lifetime

    async def _renew_ticks(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.renew_interval)
            if self._added and not self._renew_queued and not self._closed:
                self._renew_queued = True
                self._inbox.put_nowait((_RENEW, None))

    async def _renew(self) -> None:
        """Extend the addresses' lifetime, only while the core holds a valid lease."""
        if not self._added or self.vip_lifetime is None:
            return
        now = self.clock()
        if not (self.node.holds_vip and now < self.node.lease_until):
            return  # the core releases at its next event; let the kernel's clock run meanwhile
        try:
            await self.ports.vips.renew(self.vips, self.vip_lifetime)
        except VipError as e:
            detail = f"renewing the VIP failed: {e}"
            if self.failing.get(Effect.ACQUIRE) != detail:
                log.error("%s", detail)
            self.failing[Effect.ACQUIRE] = detail
            await self._step(EffectFailed(Effect.ACQUIRE, detail))

    # ------------------------------------------------------------------ timer and lag

    def _arm(self) -> None:
        if self._closed:
            return
        deadline = self.node.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        self._cancel_timer()
        self._timer_at = deadline
        if deadline != float("inf"):
            # On the engine's own clock, the one the core's deadlines are on.
            delay = max(0.0, deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")

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

    # ------------------------------------------------------------------ records

    def _record(self, d: Decision) -> None:
        log_decision(log, d)
        entry: dict[str, Any] = {
            "reason": d.reason.value,
            "term": d.term,
            "role": d.role.value,
            "leader": d.leader or None,
            "message": describe(self.node.name, d),
        }
        if isinstance(d.detail.get("detail"), str):
            entry["detail"] = d.detail["detail"]  # e.g. the sentence of a failed effect
        self._append(entry)
        view = self.node.view(self.clock())
        failing = "".join(f", {k.value} failing" for k in self.failing)
        self.ports.systemd.status(
            f"{view.role.value}, term {view.term}, leader {view.leader or 'none'}, "
            f"{'healthy' if view.healthy else 'unhealthy'}"
            f"{', holds VIP' if view.holds_vip else ''}{failing}"
        )

    def _append(self, fields: dict[str, Any]) -> None:
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "node": self.node.name,
            **fields,
        }
        self.ports.events.append(entry)
        self.recent.append(entry)
        del self.recent[:-RECENT_TRANSITIONS]


def renewal_interval(lifetime: float, lease: float) -> float:
    """How often to renew the VIPs' lifetime: as rarely as is safe, at most every lifetime/2.

    Safe means that no renewal coming late can let the kernel remove the address of a leader
    whose lease still holds. After a renewal at `r` the address lives until `r + lifetime`
    (less the kernel's 20 ms fuzz). The lease can only be extended while the loop runs, and the
    loop renews at least every `interval`, so while no renewal has happened since `r` the lease
    ends before `r + interval + lease`. Hence `interval <= lifetime - lease` (less a margin).
    Raises ValueError, with what to configure, when the lifetime leaves no such interval.
    """
    interval = min(lifetime / 2, lifetime - lease - RENEW_MARGIN)
    if interval < MIN_RENEW_INTERVAL:
        needed = math.ceil(lease + RENEW_MARGIN + MIN_RENEW_INTERVAL)
        raise ValueError(
            f"cluster.vip_lifetime ({lifetime:g}s) is too short for the leader's lease "
            f"({lease:.2f}s, from failover_timeout): a renewal could come too late for a "
            f"leader whose lease still holds. Set vip_lifetime to {needed}s or more (or false)"
        )
    return interval


def _stopping(request_id: int) -> CommandResult:
    return CommandResult(request_id, False, Reason.STOPPING, "the daemon is stopping")


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
