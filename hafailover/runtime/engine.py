"""The engine: an ordered async executor driving the protocol core, one election per VIP group.

Every input (a received datagram, a timer, a health verdict, an operator command) becomes one or
more core events and goes into one inbox; a single task takes them out one at a time, asks the
groups' multiplexer for its actions (`Groups.handle_many(events, clock())`, each action tagged
with its group) and carries them out in list order, awaiting the slow ones (a VIP added or
removed over netlink, the state file written off the loop). The next input waits until the whole
step is done, so the ordering the core documents in `hafailover.core.actions` holds in the
world, not just in the list: nothing is sent before the vote it carries is on disk, nobody is
told to take over before this node's address is gone.

An input that comes while the task waits on an empty inbox is handled at once, in the callback
that brought it (`_step_now`): the same step, without a task wake-up and an extra pass of the
loop per datagram or timer. Whatever it needs to await (`Persist`, `AcquireVip`, `ReleaseVip`)
is handed to the task as the first item of the inbox, so an input that comes meanwhile still
waits for the whole step. Several inputs merged into one step (see `inbox.py`) happen only
while the task is busy: then the inbox is not empty.

While the core says the node is settled (`Groups.settled`), its socket is read when the timer
wakes the engine, before the timer's step, not at every datagram (`runtime/reading.py`); each
datagram read so is handled at its kernel arrival time (`_core_time`: never before the core's
previous step).

Groups (`hafailover.core.groups`): a tagged action acts on that group's VIPs, announcer and
hooks (which get HAFAILOVER_GROUP). Every `Send` of a step is held back and, at the end of the
step, what goes to one peer leaves in ONE datagram (`TransportPort.send_batch`); holding a send
back only delays it, and a send listed after a barrier still leaves after that barrier is done.
The whole `GroupsState` is written at the first `Persist` of a core call and that call's later
`Persist` actions count as done: one fsync per step however many groups persisted.

Barrier actions (`Persist`, `AcquireVip`, `ReleaseVip`), per group: when one of group g's fails,
the engine carries out nothing more of g's actions in that step except `ReleaseVip` (always
attempted: holding an address too many is the dangerous direction), `Decision` (recorded) and
`Exit`; a `CommandResult` of g is answered as refused with the failure's sentence. Other groups
go on. A failed `Persist` is every group's (one file): it stops every group's later actions.
Then the engine feeds `EffectFailed(kind, detail)` (to g, or to every group for persist) and
carries out the actions of that under the same rule. It keeps the kinds failing per group until
one succeeds again, when it feeds `EffectSucceeded(kind)` to that group after the step.

Kernel-backed VIP lifetime: with `vip_lifetime` set, addresses are added with a finite valid
(and preferred) lifetime and renewed every `renewal_interval()`, each group's only while that
group's core holds a valid lease. A frozen, wedged or starved daemon stops renewing, and the
kernel removes its addresses within the lifetime plus the kernel's timer slack
(docs/architecture.md). A renewal that fails is that group's failed acquire.

Health is per group: node-wide components (loop lag; the checks of a single-group daemon) and
the group's own (its checks, its links) must all be fine for the group's core to see the node
healthy (`set_health`, `set_group_health`).

One timer is armed at the earliest deadline of all groups on the engine's own clock. The core
releases an expired lease before it looks at any event, so whatever is handled first after a
stall (a packet or the timer) drops the VIP first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    VipConflict,
)
from hafailover.core.groups import DEFAULT_GROUP, NODE_LEVEL, ForGroup, Groups, Tagged
from hafailover.core.messages import Message, NodeAck, NodeHeartbeat
from hafailover.core.node import Node
from hafailover.core.reasons import Reason
from hafailover.errors import HafailoverError
from hafailover.net.vip import Vip, VipError
from hafailover.runtime.history import History, status_line
from hafailover.runtime.inbox import Inbox
from hafailover.runtime.lagticker import lag_ticker
from hafailover.runtime.notify import hook_env
from hafailover.runtime.ports import Elections, Input, OneGroup, Ports, exit_now
from hafailover.runtime.reading import SocketReading
from hafailover.runtime.store import StateError

__all__ = [
    "Elections", "Engine", "Ports", "exit_now", "lag_ticker", "renewal_delay", "renewal_interval",
]

log = logging.getLogger("hafailover.engine")

# Kept between the lease and the address's expiry: the kernel deletes up to 20 ms early, and a
# renewal waits its turn in the inbox.
RENEW_MARGIN: Final = 0.1
MIN_RENEW_INTERVAL: Final = 0.25
# EffectFailed/EffectSucceeded fed back within one step: a core that keeps answering a failure
# with the same failing action would otherwise spin; the core retries on its timers instead.
MAX_FEEDBACK: Final = 8
# Queued inputs merged into one step at most (bounds the step's length).
MAX_MERGE: Final = 64
# Datagrams of one drain that came in this close together are handled as one step, at the
# latest one's receipt time (`_gather`).
GATHER: Final = 0.002
NODE_WIDE: Final = ""  # the "group" of a node-wide failure (persist) or refusal

_ALWAYS: Final = (ReleaseVip, Decision, Exit)
# The actions `_do` awaits (netlink, the state file); every other one is carried out at once.
_AWAITED: Final = (Persist, AcquireVip, ReleaseVip)
NEVER: Final = float("-inf")
INF: Final = float("inf")
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
    """Inbox marker: renew the VIP lifetimes (ordered with the events, never beside them)."""


@dataclass(frozen=True)
class _Readd:
    """Inbox item: a VIP of `group` vanished behind our back; put it back if still holding."""

    group: str
    vip: Vip


@dataclass(frozen=True)
class _Computed:
    """Inbox item: a core call's actions, computed by an input handled at once
    (`Engine._step_now`), that await a barrier: carried out by the consumer, before anything
    queued after it."""

    tagged: list[Tagged]


@dataclass(frozen=True)
class _Received:
    """Inbox item: a datagram read late (`SocketReading`) that came while the consumer was busy:
    its own step, at its receipt time `at` (never more than an interval behind the step's
    clock), not merged with inputs handled at their own time."""

    events: list[Input]
    at: float


_RENEW: Final = _Renew()


class Engine:
    def __init__(
        self,
        elections: Node | Groups,
        ports: Ports,
        vips: Sequence[Vip] | Mapping[str, Sequence[Vip]],
        max_loop_lag: float,
        clock: Callable[[], float] = time.monotonic,
        watchdog: bool = True,
        vip_lifetime: float | None = None,
        command_timeout: float = 10.0,
    ) -> None:
        """`elections`: the node's `Groups`, or one `Node` (the group `default`). `vips`: each
        group's addresses (a plain sequence: the only group's)."""
        self._single = isinstance(elections, Node)
        self.groups: Elections = OneGroup(elections) if isinstance(elections, Node) else elections
        self.ports = ports
        if isinstance(vips, Mapping):
            self.group_vips = {g: tuple(vips.get(g, ())) for g in self.groups.groups}
        else:
            self.group_vips = {g: tuple(vips) for g in self.groups.groups[:1]}
        self.vips = tuple(v for vs in self.group_vips.values() for v in vs)
        self.vip_names = [str(v) for v in self.vips]
        self.max_loop_lag = max_loop_lag
        self.clock = clock
        self.watchdog = watchdog
        self.vip_lifetime = vip_lifetime
        first = self.groups.node(self.groups.groups[0])
        self.renew_interval = (
            renewal_interval(vip_lifetime, first.spec.timings.lease_duration)
            if vip_lifetime
            else float("inf")
        )
        # The grid the core's heartbeat rounds and the lag ticker fall on (multiples of it).
        self.grid = first.spec.timings.heartbeat_interval
        self.command_timeout = command_timeout
        # Reading the socket at once, or at this node's rounds while it is settled.
        self.reading = SocketReading(ports.transport, clock, self.grid)
        self._draining = False
        # A drain's datagrams not yet stepped: (first receipt, latest receipt, their events).
        self._gathered: tuple[float | None, float | None, list[Input]] | None = None
        self._core_now = NEVER  # the time of the core's latest step (never goes back)
        self.started_at = clock()
        # effect kinds failing now, per group (NODE_WIDE for persist) -> the last sentence
        self.group_failing: dict[str, dict[Effect, str]] = {}
        self._inbox: Inbox[Input, _Renew | _Readd | _Computed | _Received, list[Action]] = (
            Inbox(MAX_MERGE)
        )
        self._stepping = False  # a step is being taken by `_step_now`
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.TimerHandle | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._waiters: dict[int, asyncio.Future[CommandResult]] = {}
        self._added: set[str] = set()  # groups whose VIPs this engine added and kept since
        self._announced: set[str] = set()  # groups announcing their VIPs as this node's
        # No announced group's lease ends before this (see `_silence_if_lease_expired`).
        self._leases_hold_until = NEVER
        self._renew_queued = False
        self._status_due = False
        self._health: dict[str, tuple[bool, str]] = {}
        self._group_health: dict[str, dict[str, tuple[bool, str]]] = {}
        self._reported = {g: self.groups.node(g).healthy for g in self.groups.groups}
        self.history = History(ports.events, self.groups.name)
        self.max_lag_seen = 0.0
        self.stopping = False
        self.on_decision: Callable[[str, Decision], None] | None = None  # metrics
        self.on_lag: Callable[[float], None] | None = None
        self.vetted: Callable[[str, Message], bool] | None = None  # False: drop the message

    @property
    def node(self) -> Node:
        """The first group's election (the only one of a single-group daemon)."""
        return self.groups.node(self.groups.groups[0])

    @property
    def failing(self) -> dict[Effect, str]:
        """Every effect kind failing now in any group (the last sentence of each)."""
        out: dict[Effect, str] = {}
        for kinds in self.group_failing.values():
            out.update(kinds)
        return out

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Run the core's start step, then consume the inbox until `close()`."""
        await self._step(None)
        self._task = asyncio.create_task(self._consume(), name="engine")

    async def close(self, timeout: float = 2.0) -> None:
        """Stop taking events: the one being handled finishes, the rest are dropped."""
        self._closed = True
        self._cancel_timer()
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if self._task is not None:
            self._inbox.put(_RENEW)  # wake the consumer so it sees _closed
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.error("the engine did not finish its step within %gs at close", timeout)
                self._task.cancel()
        for request_id, fut in self._waiters.items():
            if not fut.done():
                fut.set_result(_stopping(request_id))

    # ------------------------------------------------------------------ inputs

    def feed(self, event: Input) -> None:
        """Queue an event; it is handled after every event queued before it."""
        self.feed_many([event])

    def feed_many(self, events: list[Input], at: float | None = None) -> None:
        """Queue several events as one step (e.g. every item of one datagram). `at`: when they
        came in, if earlier than now (a datagram read late, `SocketReading.receipt`): the step
        is taken at that time, never earlier than the core's last step."""
        if not self._closed and events:
            self._silence_if_lease_expired()
            if self._inbox.idle and not self._stepping:
                self._step_now(events, at)
            elif at is not None:
                # Queued behind a busy consumer (a renewal due at the same round, a step awaiting
                # netlink): still handled at arrival. Handled at the time it is taken out, a
                # leader's last heartbeats would renew promises up to an interval too late,
                # and a failover would wait for them.
                self._inbox.put(_Received(events, at))
            else:
                self._inbox.put(events)

    def lease_valid(self, group: str | None = None) -> bool:
        """Whether this node holds `group`'s VIPs (any group's, for None) under a lease still
        running now (asked by the announcer before each burst)."""
        now = self.clock()
        names = self.groups.groups if group is None else (group,)
        for g in names:
            n = self.groups.node(g)
            if n.holds_vip and n.lease_valid(now):
                return True
        return False

    def _silence_if_lease_expired(self) -> None:
        """A lease that ran out while this process could not run (frozen, starved) silences the
        group's announcements at once, synchronously, before any other callback queued on the
        loop (an ARP refresh due since the freeze) can claim the address; the core's release
        follows in order. Stopping announcements never needs the core's consent.

        Called at every input, so amortized O(1): a scan keeps the earliest lease end of the
        announced groups, and until then none can have run out, because between steps a lease
        only grows (node liveness extends it). A step can shorten one only where it takes or
        gives up leadership or the VIP (`begin`/`end` of a lease come with a `Decision`), or
        starts announcing: `_do` then forgets the bound and the next input scans again."""
        if not self._announced:
            return
        now = self.clock()
        if now < self._leases_hold_until:
            return
        silenced = False
        earliest = INF
        for g in list(self._announced):
            n = self.groups.node(g)
            if not n.holds_vip:
                continue  # announces nothing it holds: can only start holding at a step
            if n.lease_valid(now):
                earliest = min(earliest, n.lease_until)
            else:
                self.ports.announcer_for(g).cancel()
                self._announced.discard(g)
                silenced = True
        self._leases_hold_until = earliest
        if silenced:
            self._holding_changed()

    def _holding_changed(self) -> None:
        held = [v for g in self.groups.groups if g in self._announced for v in self.group_vips[g]]
        self.ports.on_holding(bool(self._announced))
        self.ports.on_held(held)

    def conflict(self, address: str) -> None:
        """Another host claims `address` (ARP/NA): for the group announcing it, if any."""
        for g in list(self._announced):  # a step taken at once may change the set
            if any(str(v.ip) == address for v in self.group_vips[g]):
                self.feed(ForGroup(g, VipConflict(address)))

    async def process(self, event: Input) -> list[Action]:
        """Queue an event and wait until its whole step has been carried out."""
        fut: asyncio.Future[list[Action]] = asyncio.get_running_loop().create_future()
        if self._closed:
            return []
        self._inbox.put([event], fut)
        return await fut

    def on_message(self, sender: str, message: Message, group: str = DEFAULT_GROUP) -> None:
        self.on_batch(sender, ((group, message),))

    def on_batch(
        self, sender: str, items: Iterable[tuple[str, Message]], stamp: float | None = None
    ) -> None:
        """Every item of one received datagram, handled as one step (`stamp`: the kernel's
        receive time of a datagram read late, see `SocketReading`)."""
        vetted = self.vetted
        events: list[Input] = [
            ForGroup(g, MessageReceived(sender, m))
            for g, m in items
            if vetted is None or vetted(sender, m)
        ]
        if self._draining:
            self._gather(events, self.reading.receipt(stamp))
        else:
            self.feed_many(events, self.reading.receipt(stamp))

    def _gather(self, events: list[Input], at: float | None) -> None:
        """A datagram read by a drain: stepped together with the ones before it that came in
        within `GATHER` of the first of them, at the latest receipt time of all (later is the
        safe direction, `SocketReading`). A leader's acknowledgements of its own round come in
        together: one step for them all instead of one each. The drain's last gathering is
        stepped by `_on_timer` before the timer's own step. Untrusted stamps (`at` None, now)
        gather likewise, all at once."""
        if not events:
            return
        gathered = self._gathered
        if gathered is not None:
            first, latest, pending = gathered
            if first is None and at is None:
                pending += events
                return
            if first is not None and at is not None and at - first <= GATHER:
                pending += events
                self._gathered = (first, at if latest is None or at > latest else latest, pending)
                return
            self.feed_many(pending, latest)
        self._gathered = (at, at, list(events))

    def _step_gathered(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered is not None:
            self.feed_many(gathered[2], gathered[1])

    async def command(self, event: Input) -> CommandResult:
        """Carry out an operator command (`Switchover`/`SetMaintenance`, maybe `ForGroup`) and
        wait for its answer: the `CommandResult` with its request id, which may come in a later
        step (a forwarded request answered by a peer), or a refusal after `command_timeout`."""
        inner = event.event if isinstance(event, ForGroup) else event
        assert isinstance(inner, Switchover | SetMaintenance)
        if self._closed:
            return _stopping(inner.request_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CommandResult] = loop.create_future()
        self._waiters[inner.request_id] = fut
        try:
            self.feed(event)
            return await asyncio.wait_for(fut, self.command_timeout)
        except TimeoutError:
            return CommandResult(
                inner.request_id, False, Reason.COMMAND_TIMEOUT,
                f"no answer within {self.command_timeout:g}s",
            )
        finally:
            self._waiters.pop(inner.request_id, None)

    def set_health(self, component: str, ok: bool, detail: str) -> None:
        """A node-wide health component (loop lag; a single group's checks)."""
        self._health[component] = (ok, detail)
        self._reevaluate(self.groups.groups, detail)

    def set_group_health(self, group: str, component: str, ok: bool, detail: str) -> None:
        """One group's own component (its checks, a link it needs)."""
        if group not in self._reported:
            return
        self._group_health.setdefault(group, {})[component] = (ok, detail)
        self._reevaluate((group,), detail)

    def _reevaluate(self, groups: Iterable[str], detail: str) -> None:
        events: list[Input] = []
        for g in groups:
            parts = {**self._health, **self._group_health.get(g, {})}
            healthy = all(ok for ok, _ in parts.values())
            if healthy != self._reported[g]:
                self._reported[g] = healthy
                why = "; ".join(f"{c}: {d}" for c, (ok, d) in parts.items() if not ok)
                events.append(ForGroup(g, HealthChanged(healthy, why or detail)))
        self.feed_many(events)

    @property
    def health_detail(self) -> dict[str, tuple[bool, str]]:
        return dict(self._health)

    def group_health(self, group: str) -> dict[str, tuple[bool, str]]:
        """Every component of `group`'s health, node-wide ones included."""
        return {**self._health, **self._group_health.get(group, {})}

    def readd(self, vip: Vip) -> None:
        """A VIP was removed behind our back (netlink): re-add and re-announce it if its group
        still holds under a valid lease."""
        for g, vs in self.group_vips.items():
            if vip in vs and g in self._added and not self._closed:
                self._inbox.put(_Readd(g, vip))

    # ------------------------------------------------------------------ the executor

    async def _consume(self) -> None:
        while not self._closed:
            item, fut = await self._inbox.next()
            if self._closed:
                if fut is not None and not fut.done():
                    fut.set_result([])
                break
            try:
                actions: list[Action] = []
                if isinstance(item, _Renew):
                    self._renew_queued = False
                    await self._renew()
                elif isinstance(item, _Readd):
                    await self._readd(item)
                elif isinstance(item, _Computed):
                    actions = await self._step(None, item.tagged)
                elif isinstance(item, _Received):
                    actions = await self._step(item.events, at=item.at)
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
        for _, fut in self._inbox.drain():
            if fut is not None and not fut.done():
                fut.set_result([])

    def _core_time(self, at: float | None = None) -> float:
        """The time of the next core step: now, or `at`, but never before the last step's."""
        now = self.clock() if at is None else at
        if now < self._core_now:
            now = self._core_now
        self._core_now = now
        return now

    def _step_now(self, events: list[Input], at: float | None = None) -> None:
        """Handle an input at once, in the callback that brought it, while the consumer waits
        on an empty inbox: no task wake-up and no extra pass of the loop per datagram or timer.
        Ordering is unchanged, as nothing is queued or being carried out. A core call whose
        actions include one that awaits (`_AWAITED`) goes to the consumer as `_Computed`,
        ahead of anything queued later; the other actions never wait, so the step is
        complete when this returns."""
        self._stepping = True
        try:
            tagged = self.groups.handle_many(events, self._core_time(at))
            for t in tagged:
                if isinstance(t.action, _AWAITED):
                    self._inbox.put(_Computed(tagged))
                    return
            run = self._run(tagged)
            try:
                run.send(None)
            except StopIteration:
                pass
            else:  # cannot happen: only _AWAITED actions await
                run.close()
                raise RuntimeError("an action that does not await awaited")
            self._step_done()
        except Exception:  # a bug: keep the loop (as the consumer does)
            log.exception("handling %s failed", [type(e).__name__ for e in events])
        finally:
            self._stepping = False

    async def _step(
        self, events: list[Input] | None, computed: list[Tagged] | None = None,
        at: float | None = None,
    ) -> list[Action]:
        """One input and the effect feedback it causes, carried out completely (`computed`: the
        actions the core already gave for the input, see `_step_now`; `at`: the input's receipt
        time, see `_Received`)."""
        pending: deque[list[Input] | None] = deque([events])
        done: list[Action] = []
        rounds = 0
        while pending:
            rounds += 1
            if rounds > MAX_FEEDBACK:
                log.error("effect feedback did not settle after %d rounds; dropped %s",
                          MAX_FEEDBACK, [type(e).__name__ for evs in pending for e in evs or ()])
                break
            evs = pending.popleft()
            if at is not None:
                now, at = self._core_time(max(at, self.clock() - self.grid)), None
            else:
                now = self._core_time()
            if computed is not None:
                tagged, computed = computed, None
            elif evs is None:
                tagged = self.groups.start(now)
            else:
                tagged = self.groups.handle_many(evs, now)
            done += [t.action for t in tagged]
            failed, succeeded = await self._run(tagged)
            if not failed and not succeeded:
                continue  # no barrier in this call: nothing to feed back
            feedback: list[Input] = []
            for group, kind, detail in failed:
                self.group_failing.setdefault(group, {})[kind] = detail
                feedback.append(_for(group, EffectFailed(kind, detail)))
            failed_keys = {(g, k) for g, k, _ in failed}
            for group, kind in succeeded - failed_keys:
                if self.group_failing.get(group, {}).pop(kind, None) is not None:
                    log.info("%s works again%s", kind.value, _in(group))
                    feedback.append(_for(group, EffectSucceeded(kind)))
            if feedback:
                pending.append(feedback)
        self._step_done()
        return done

    def _step_done(self) -> None:
        if self._status_due:
            self._status_due = False
            self.ports.systemd.status(self.status_line())
        if not self._draining:  # a drain is followed by the timer's own step, which arms
            self._arm()
            # Asked once nothing waits behind this step: a datagram step queued ahead of its
            # round's timer step would see that round as overdue, and not settled.
            if not self._closed and not len(self._inbox):
                self.reading.settle(self.groups.settled(self.clock()))

    async def _run(
        self, actions: list[Tagged]
    ) -> tuple[list[tuple[str, Effect, str]], set[tuple[str, Effect]]]:
        """Carry out one core call's actions under the per-group barrier rule; then send what
        the call sent, one datagram per peer. Returns (failures, barrier successes), each
        keyed by group (NODE_WIDE for persist)."""
        failed: list[tuple[str, Effect, str]] = []
        blocked: dict[str, tuple[Effect, str]] = {}  # group -> its first failure
        succeeded: set[tuple[str, Effect]] = set()
        outbox: dict[str, list[tuple[str, Message]]] = {}
        persisted = False
        try:
            for group, action in actions:
                stop = (blocked.get(group) or blocked.get(NODE_WIDE)) if blocked else None
                if stop is not None and isinstance(action, CommandResult):
                    first, detail = stop
                    self._answer(
                        CommandResult(action.request_id, False, FAILED_REASON[first], detail)
                    )
                    continue
                if stop is not None and not isinstance(action, _ALWAYS):
                    log.debug("skipped after a failed %s: %s", stop[0].value, action)
                    continue
                if isinstance(action, Send):
                    message = action.message
                    node_level = isinstance(message, NodeHeartbeat | NodeAck)
                    outbox.setdefault(action.to, []).append(
                        (NODE_LEVEL if node_level else group or DEFAULT_GROUP, message)
                    )
                    continue
                if isinstance(action, Persist) and persisted:
                    continue  # the state written at this call's first Persist is as new
                try:
                    kind = await self._do(group, action)
                except EffectError as e:
                    key = NODE_WIDE if e.effect is Effect.PERSIST else group
                    # Said once per new failure: the core retries on its timers, and a retry
                    # that fails the same way is not news for the log or the event history.
                    if self.group_failing.get(key, {}).get(e.effect) != e.detail:
                        log.error("%s%s", e.detail, _in(key))
                    else:
                        log.debug("still failing: %s", e.detail)
                    failed.append((key, e.effect, e.detail))
                    blocked.setdefault(key, (e.effect, e.detail))
                    continue
                except Exception:  # a non-barrier effect (hook, record) must not stop a step
                    log.exception("action %s failed", action)
                    continue
                if kind is Effect.PERSIST:
                    persisted = True
                    succeeded.add((NODE_WIDE, kind))
                elif kind is not None:
                    succeeded.add((group, kind))
        finally:
            for to, items in outbox.items():
                try:
                    self.ports.transport.send_batch(to, items)
                except Exception:
                    log.exception("sending to %s failed", to)
        return failed, succeeded

    async def _do(self, group: str, action: Action) -> Effect | None:
        """Carry out one action; returns the barrier kind it succeeded at, if it is one."""
        p = self.ports
        match action:
            case ReleaseVip():
                self._leases_hold_until = NEVER
                announcer = p.announcer_for(group)
                announcer.cancel()
                announcer.set_holding(False)
                # No renewal from now on, even if the removal fails: the lifetime then still
                # takes the address away.
                self._added.discard(group)
                self._announced.discard(group)
                self._holding_changed()
                try:
                    await p.vips.remove(self.group_vips.get(group, ()))
                except VipError as e:
                    raise EffectError(Effect.RELEASE, f"removing the VIP failed: {e}") from e
                return Effect.RELEASE
            case AcquireVip():
                self._leases_hold_until = NEVER
                try:
                    await p.vips.add(self.group_vips.get(group, ()), self.vip_lifetime)
                except VipError as e:
                    raise EffectError(Effect.ACQUIRE, f"adding the VIP failed: {e}") from e
                self._added.add(group)
                self._schedule_renewal()  # first renewal within one interval of the add
                return Effect.ACQUIRE
            case Announce():
                self._leases_hold_until = NEVER
                announcer = p.announcer_for(group)
                announcer.announce()
                announcer.set_holding(True)
                self._announced.add(group)
                self._holding_changed()
            case Persist(state=state):
                try:
                    if self._single:
                        await p.store.asave(state)
                    else:
                        await p.store.asave_groups(self.groups.persistent_state())
                except StateError as e:  # names the file, the reason and what to check
                    raise EffectError(Effect.PERSIST, str(e)) from e
                except OSError as e:
                    raise EffectError(Effect.PERSIST, f"cannot save the state: {e}") from e
                return Effect.PERSIST
            case Notify(kind=kind, role=role, term=term, leader=leader):
                env = hook_env(
                    node=self.groups.name, role=role, term=term, leader=leader,
                    vips=[str(v) for v in self.group_vips.get(group, ())],
                    group=group or DEFAULT_GROUP,
                )
                p.notifier_for(group).submit(kind.value, env)
            case Decision():
                self._leases_hold_until = NEVER  # a lease may have begun or ended
                self._record(group, action)
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

    # ------------------------------------------------------------------ VIPs held

    async def _readd(self, item: _Readd) -> None:
        g = item.group
        n = self.groups.node(g)
        if g not in self._added or not (n.holds_vip and n.lease_valid(self.clock())):
            return
        try:
            await self.ports.vips.add([item.vip], self.vip_lifetime)
        except VipError as e:
            detail = f"re-adding {item.vip} (removed behind our back) failed: {e}"
            log.error("%s%s", detail, _in(g))
            self.group_failing.setdefault(g, {})[Effect.ACQUIRE] = detail
            await self._step([_for(g, EffectFailed(Effect.ACQUIRE, detail))])
            return
        self.ports.announcer_for(g).announce()
        log.warning("VIP %s was removed behind our back; re-added and announced%s",
                    item.vip, _in(g))
        self._append({
            "reason": "vip-readded", "group": g, "term": n.term, "role": n.role.value,
            "leader": n.leader or None,
            "message": f"{item.vip} was removed by someone else while {self.groups.name} "
                       "held it; re-added and re-announced",
            "detail": "address removed behind hafailover's back (netlink RTM_DELADDR)",
        })

    def _schedule_renewal(self) -> None:
        """Arm the renewal timer (every `renew_interval` while this engine keeps VIPs it added:
        a node holding nothing is not woken for it).

        It comes due at the last point of the heartbeat grid within `renew_interval`: there the
        loop wakes anyway for the lag ticker and a leader's round, so a renewal costs no
        wake-up of its own. Renewing earlier is always safe (`renewal_interval`)."""
        if self.vip_lifetime and self._renewer is None and not self._closed:
            now = self.clock()
            delay = renewal_delay(now, self.renew_interval, self.grid)
            self._renewer = asyncio.get_running_loop().call_later(delay, self._renewal_due)

    def _renewal_due(self) -> None:
        self._renewer = None
        if self._closed or not self._added:
            return  # armed again by the next acquire
        if not self._renew_queued:
            self._renew_queued = True
            self._inbox.put(_RENEW)
        self._schedule_renewal()

    async def _renew(self) -> None:
        """Extend the addresses' lifetime, each group's only while its core holds a valid
        lease: all in one call, and group by group only to find the one that failed."""
        if not self._added or self.vip_lifetime is None:
            return
        now = self.clock()
        due = [g for g in self.groups.groups if g in self._added
               and self.groups.node(g).holds_vip and self.groups.node(g).lease_valid(now)]
        if not due:
            return  # the core releases at its next event; let the kernel's clock run meanwhile
        try:
            await self.ports.vips.renew([v for g in due for v in self.group_vips[g]],
                                        self.vip_lifetime)
            return
        except VipError as e:
            if len(due) == 1:
                await self._renew_failed(due[0], e)
                return
        for g in due:
            try:
                await self.ports.vips.renew(self.group_vips[g], self.vip_lifetime)
            except VipError as e:
                await self._renew_failed(g, e)

    async def _renew_failed(self, group: str, e: VipError) -> None:
        detail = f"renewing the VIP failed: {e}"
        if self.group_failing.get(group, {}).get(Effect.ACQUIRE) != detail:
            log.error("%s%s", detail, _in(group))
        self.group_failing.setdefault(group, {})[Effect.ACQUIRE] = detail
        await self._step([_for(group, EffectFailed(Effect.ACQUIRE, detail))])

    # ------------------------------------------------------------------ timer and lag

    def _arm(self) -> None:
        if self._closed:
            return
        deadline = self.groups.next_deadline()
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
        if self.reading.deferred:
            # What came in since the last wake-up first, each datagram at its receipt time.
            self._draining = True
            try:
                self.reading.drain()
            finally:
                self._step_gathered()  # what was read is handled even if reading failed
                self._draining = False
        self.feed(TimerFired())

    def tick(self, expected: float) -> None:
        """Called by the lag ticker: measures lateness, drives the watchdog, flags a slow loop."""
        lag = max(0.0, self.clock() - expected)
        self.max_lag_seen = max(self.max_lag_seen, lag)
        if self.on_lag is not None:
            self.on_lag(lag)
        on_time = lag <= self.max_loop_lag
        if on_time and self.watchdog:
            self.ports.systemd.watchdog()
        prev_ok = self._health.get("loop", (True, ""))[0]
        if on_time != prev_ok:
            self.set_health("loop", on_time, f"event loop {lag * 1000:.0f} ms late")

    # ------------------------------------------------------------------ records

    def _record(self, group: str, d: Decision) -> None:
        self.history.decision(group or DEFAULT_GROUP, d, multi=len(self.groups.groups) > 1)
        if self.on_decision is not None:
            self.on_decision(group or DEFAULT_GROUP, d)
        self._status_due = True  # the status line is set once, at the end of the step

    def status_line(self) -> str:
        return status_line(self.groups, self.failing, self.clock())

    def record(self, fields: dict[str, Any]) -> None:
        """An event of the runtime's own (drift, link, recover) in the history."""
        self.history.append(fields)

    def _append(self, fields: dict[str, Any]) -> None:
        self.history.append(fields)

    @property
    def recent(self) -> list[dict[str, Any]]:
        return self.history.recent


def _for(group: str, event: Event) -> Input:
    return event if group == NODE_WIDE else ForGroup(group, event)


def _in(group: str) -> str:
    return f" (group {group})" if group and group != DEFAULT_GROUP else ""


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


def renewal_delay(now: float, interval: float, grid: float) -> float:
    """How long from `now` until the next renewal: to the last multiple of `grid` that is at
    most `interval` ahead (on the engine's clock, as `lagticker.next_on_grid`), and never
    more than `interval`; just `interval` when no grid point lies in (now, now + interval]."""
    # The tolerance keeps a renewal made on a grid point from slipping one point early every
    # time by the rounding of (k * grid + interval) / grid.
    at = math.floor((now + interval) / grid + 1e-9) * grid
    if at <= now or at > now + interval:
        return interval
    return at - now


def _stopping(request_id: int) -> CommandResult:
    return CommandResult(request_id, False, Reason.STOPPING, "the daemon is stopping")
