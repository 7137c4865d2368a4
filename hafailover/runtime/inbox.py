"""The engine's inbox: every input in arrival order, taken out by the engine's one task.

An item is `(payload, waiter)`: the payload is a list of core inputs to handle as one step, or a
marker the engine handles itself (a VIP lifetime renewal, a re-add); the waiter, if any, gets the
step's outcome. `next()` returns the next item; inputs without a waiter that queued up behind it
(datagrams, the timer, health verdicts) are merged into it, in order and up to `max_merge` more,
so the engine takes one step for all of them: one state write and one datagram per peer. A node
that fell behind (an election of many groups, each vote on disk before it is sent) catches up in
a few steps instead of one fsync per datagram; merging only delays sends to the end of the step,
which the core allows. An item with a waiter, or a marker, is never merged: it is its own step.

A deque and one future rather than `asyncio.Queue`: the engine is the only consumer and the
inbox is unbounded, so the queue's task accounting and getter/putter bookkeeping would be work
done for every datagram for nothing, and peeking at the next item (to stop a merge before an
item that must be handled alone) needs no side buffer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

I = TypeVar("I")  # noqa: E741 - an input
M = TypeVar("M")  # a marker the engine handles itself
R = TypeVar("R")  # what a waiter gets


class Inbox(Generic[I, M, R]):
    """Unbounded FIFO of `(list[I] | M, Future[R] | None)` for a single consumer task."""

    def __init__(self, max_merge: int) -> None:
        self.max_merge = max_merge
        self._items: deque[tuple[list[I] | M, asyncio.Future[R] | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """The consumer waits in `next()` on an empty inbox (nothing queued, nothing taken out
        and still being handled)."""
        w = self._waiter
        return w is not None and not w.done() and not self._items

    def put(self, payload: list[I] | M, waiter: asyncio.Future[R] | None = None) -> None:
        """Queue an item; wakes the consumer if it waits."""
        self._items.append((payload, waiter))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next(self) -> tuple[list[I] | M, asyncio.Future[R] | None]:
        """The next item, with the waiter-less inputs queued behind it merged in (see above)."""
        items = self._items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        payload, fut = items.popleft()
        if fut is not None or not isinstance(payload, list) or not items:
            return payload, fut
        merged = list(payload)
        for _ in range(self.max_merge):
            if not items:
                break
            nxt, nxt_fut = items[0]
            if nxt_fut is not None or not isinstance(nxt, list):
                break  # handled alone, next
            items.popleft()
            merged += nxt
        return merged, None

    def drain(self) -> list[tuple[list[I] | M, asyncio.Future[R] | None]]:
        """Take out everything still queued (at close, to answer whoever waits)."""
        out = list(self._items)
        self._items.clear()
        return out
