"""The engine's inbox: arrival order, merging of waiter-less inputs, items handled alone."""

from __future__ import annotations

import asyncio

from hafailover.runtime.inbox import Inbox


class Marker:
    def __init__(self, name: str) -> None:
        self.name = name


Box = Inbox[str, Marker, int]


def test_waiterless_inputs_queued_behind_one_are_merged_in_order() -> None:
    async def body() -> None:
        box: Box = Inbox(max_merge=64)
        box.put(["a"])
        box.put(["b", "c"])
        box.put(["d"])
        assert await box.next() == (["a", "b", "c", "d"], None)
        assert len(box) == 0

    asyncio.run(body())


def test_an_item_with_a_waiter_or_a_marker_is_its_own_step_and_keeps_its_place() -> None:
    async def body() -> None:
        box: Box = Inbox(max_merge=64)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        renew = Marker("renew")
        box.put(["a"])
        box.put(["b"])
        box.put(["c"], fut)
        box.put(["d"])
        box.put(renew)
        box.put(["e"])
        box.put(["f"])
        assert await box.next() == (["a", "b"], None)  # stops before the item with a waiter
        assert await box.next() == (["c"], fut)  # never merged with what follows either
        assert await box.next() == (["d"], None)
        assert await box.next() == (renew, None)
        assert await box.next() == (["e", "f"], None)

    asyncio.run(body())


def test_a_merge_takes_at_most_max_merge_more_inputs() -> None:
    async def body() -> None:
        box: Box = Inbox(max_merge=2)
        for name in "abcde":
            box.put([name])
        assert await box.next() == (["a", "b", "c"], None)
        assert await box.next() == (["d", "e"], None)

    asyncio.run(body())


def test_next_waits_for_an_item_and_drain_takes_the_rest() -> None:
    async def body() -> None:
        box: Box = Inbox(max_merge=64)
        task = asyncio.create_task(box.next())
        await asyncio.sleep(0)
        assert not task.done()
        box.put(["late"])
        assert await asyncio.wait_for(task, 1.0) == (["late"], None)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        box.put(["x"], fut)
        box.put(["y"])
        assert box.drain() == [(["x"], fut), (["y"], None)]
        assert len(box) == 0

    asyncio.run(body())


def test_idle_only_while_the_consumer_waits_on_an_empty_inbox() -> None:
    async def body() -> None:
        box: Box = Inbox(max_merge=64)
        assert not box.idle  # nobody waits yet
        consumer = asyncio.create_task(box.next())
        await asyncio.sleep(0)
        assert box.idle
        box.put(["a"])
        assert not box.idle  # woken, not yet run: the item is still queued for it
        assert await consumer == (["a"], None)
        assert not box.idle  # taken out, being handled

    asyncio.run(body())
