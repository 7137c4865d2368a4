"""The loop-lag probe: a timer every `interval` that measures how late the event loop ran it.

`engine.tick(expected)` gets each tick with the instant it was due; the engine turns lateness
beyond `max_loop_lag` into an unhealthy node and pings the systemd watchdog only while on time
(`Engine.tick`). The probe is the one thing that wakes an otherwise idle follower's loop between
two heartbeats, so it is kept cheap:

* Each tick is a plain timer callback, not a sleeping task: a task's sleep costs a future and a
  second pass of the loop to resume the task.
* Ticks fall on a grid of `interval` on the engine's clock (multiples of it), the grid the core
  puts its heartbeat rounds on (`core/liveness.py`). With the default timings (tick = heartbeat
  interval) a leader's round timer and its tick come due at the same instant and are run in one
  wake-up of the loop instead of two. Each tick still measures the lateness of its own timer
  against its own due time, exactly as a free-running ticker would.

After a stall longer than an interval, the ticks missed meanwhile are not fired in a burst: the
next one is the next grid point after the late tick.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

__all__ = ["Ticked", "lag_ticker", "next_on_grid"]


class Ticked(Protocol):
    """What the probe needs of the engine."""

    clock: Callable[[], float]
    stopping: bool

    def tick(self, expected: float) -> None: ...


def next_on_grid(now: float, interval: float) -> int:
    """The index k of the first grid point k x interval strictly after `now`."""
    return math.floor(now / interval) + 1


async def lag_ticker(engine: Ticked, interval: float) -> None:
    """Tick every `interval` (on its grid) until cancelled or `engine.stopping`.

    An exception in a tick ends the probe with that exception (no more watchdog pings: systemd
    then restarts the daemon)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    k = next_on_grid(engine.clock(), interval)
    handle: asyncio.TimerHandle | None = None

    def arm() -> None:
        nonlocal handle
        # On the engine's own clock, as the core's deadlines are (`Engine._arm` does the same).
        handle = loop.call_later(max(0.0, k * interval - engine.clock()), fire)

    def fire() -> None:
        nonlocal k, handle
        handle = None
        if done.done():  # cancelled meanwhile
            return
        if engine.stopping:
            done.set_result(None)
            return
        try:
            engine.tick(k * interval)
        except Exception as e:
            done.set_exception(e)
            return
        # The next grid point; after a long stall, the next one still ahead (no catch-up burst).
        k = max(k + 1, next_on_grid(engine.clock(), interval))
        arm()

    arm()
    try:
        await done
    finally:
        if handle is not None:
            handle.cancel()
