"""The engine's timers: the core's deadline timer, the VIP renewal timer and the lag ticker.

Each is the only thing that wakes an idle daemon's loop between datagrams, so each must wake it
no more often than needed, and never later than needed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from hafailover.core.actions import Action
from hafailover.core.events import Event, HealthChanged, TimerFired
from hafailover.runtime.lagticker import lag_ticker
from tests.unit.test_engine import Rig, Scripted


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


class Deadlines(Scripted):
    """The real core, with its next deadline set by the test (on the rig's clock, 100.0)."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline = float("inf")

    def next_deadline(self) -> float:
        return self.deadline

    def handle(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, TimerFired):
            self.deadline = float("inf")  # its work done, nothing more is due
        return super().handle(event, now)


def _timers(node: Scripted) -> int:
    return sum(isinstance(e, TimerFired) for e in node.seen)


def test_a_deadline_moved_later_is_not_fired_early_and_one_moved_earlier_is_not_late() -> None:
    async def body() -> None:
        node = Deadlines()
        rig = Rig(node)
        node.deadline = 100.05  # 50 ms from the rig's (frozen) clock
        await rig.engine.start()
        # A follower hears a heartbeat: its deadline moves later before the timer fires.
        node.deadline = 100.25
        await rig.feed(HealthChanged(True, "a step that moves the deadline"))
        await asyncio.sleep(0.12)  # past the first deadline: no timer for it
        assert _timers(node) == 0, node.seen
        await asyncio.sleep(0.25)  # past the moved one
        assert _timers(node) == 1, node.seen
        # A deadline moved earlier than the armed timer re-arms at once.
        node.deadline = 101.0
        await rig.feed(HealthChanged(True, "later"))
        node.deadline = 100.02
        await rig.feed(HealthChanged(True, "earlier"))
        await asyncio.sleep(0.1)
        assert _timers(node) == 2, node.seen
        await rig.engine.close()

    run(body)


def test_the_renewal_timer_runs_only_while_this_node_keeps_vips_it_added() -> None:
    async def body() -> None:
        rig = Rig(lifetime=1.0)
        await rig.engine.start()
        assert rig.engine._renewer is None  # a follower: nothing to renew, never woken for it
        await rig.elect()
        assert rig.engine._renewer is not None
        await rig.feed(HealthChanged(False, "check failed"))  # releases
        assert not rig.vips.holds([rig.engine.vips[0]])
        await asyncio.sleep(rig.engine.renew_interval + 0.05)
        assert rig.engine._renewer is None  # came due once, found nothing held, stopped
        await rig.engine.close()

    run(body)


class TickEngine:
    """What `lag_ticker` uses of the engine."""

    def __init__(self, fail_at: int = 0) -> None:
        self.stopping = False
        self.ticks: list[float] = []
        self.expected: list[float] = []
        self.fail_at = fail_at
        self.clock = asyncio.get_running_loop().time

    def tick(self, expected: float) -> None:
        self.ticks.append(self.clock() - expected)
        self.expected.append(expected)
        if len(self.ticks) == self.fail_at:
            raise RuntimeError("tick failed")


def test_the_lag_ticker_ticks_every_interval_until_stopping() -> None:
    async def body() -> None:
        engine = TickEngine()
        task = asyncio.create_task(lag_ticker(engine, 0.02))
        await asyncio.sleep(0.21)
        assert 8 <= len(engine.ticks) <= 11, engine.ticks
        assert all(0 <= lag < 0.05 for lag in engine.ticks), engine.ticks
        # On the grid of the interval (where a leader's heartbeat rounds fall, so both timers
        # run in one wake-up of the loop): consecutive multiples of it.
        steps = [round(e / 0.02, 6) for e in engine.expected]
        assert all(k == int(k) for k in steps), steps
        assert [b - a for a, b in itertools.pairwise(steps)] == [1] * (len(steps) - 1)
        engine.stopping = True
        await asyncio.wait_for(task, 1.0)  # ends by itself at the next tick
        count = len(engine.ticks)
        await asyncio.sleep(0.05)
        assert len(engine.ticks) == count

    run(body)


def test_the_lag_ticker_stops_when_cancelled_and_fails_with_its_tick() -> None:
    async def body() -> None:
        engine = TickEngine()
        task = asyncio.create_task(lag_ticker(engine, 0.01))
        await asyncio.sleep(0.035)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        count = len(engine.ticks)
        await asyncio.sleep(0.03)
        assert len(engine.ticks) == count  # no tick after the cancel
        failing = TickEngine(fail_at=2)
        with pytest.raises(RuntimeError, match="tick failed"):
            await asyncio.wait_for(lag_ticker(failing, 0.01), 1.0)

    run(body)


def test_a_renewal_comes_due_on_the_heartbeat_grid_and_never_later_than_its_interval() -> None:
    from hafailover.runtime.engine import renewal_delay

    # The last multiple of the grid within the interval: where the loop wakes anyway.
    for now in (5.0, 5.0003, 5.0999, 123456.7001, 0.05):
        delay = renewal_delay(now, 1.0, 0.1)
        assert 0.9 < delay <= 1.0, (now, delay)
        assert (now + delay) / 0.1 == pytest.approx(round((now + delay) / 0.1), abs=1e-6)
    # Renewing on a grid point keeps the full interval (no drift one point early per renewal).
    t = 7.0
    for _ in range(50):
        t += renewal_delay(t, 1.0, 0.1)
    assert t == pytest.approx(57.0)
    # No grid point within the interval: the interval itself.
    assert renewal_delay(5.03, 0.05, 0.1) == 0.05


def test_the_engine_arms_its_renewal_on_the_grid() -> None:
    async def body() -> None:
        rig = Rig(lifetime=2.0)
        await rig.elect()
        loop = asyncio.get_running_loop()
        renewer = rig.engine._renewer
        assert renewer is not None
        # On the engine's (the rig's) clock, the renewal is due on a multiple of the heartbeat
        # interval, within one renewal interval.
        due = rig.clock.now + (renewer.when() - loop.time())
        grid = rig.engine.grid
        assert due / grid == pytest.approx(round(due / grid), abs=0.05)  # real time passed
        assert 0 < due - rig.clock.now <= rig.engine.renew_interval
        await rig.engine.close()

    run(body)
