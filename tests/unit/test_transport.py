"""The UDP transport on loopback: datagrams both ways, read at once or deferred to `drain()`."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hafailover.core.messages import HeartbeatAck, TimeoutNow
from hafailover.runtime import transport as transport_module
from hafailover.runtime.transport import UdpTransport
from hafailover.wire import Codec, Decoded

DRAIN_MAX = 8
KEY = bytes(range(32))
NODES = ("alpha", "bravo")
Got = list[tuple[Decoded, float | None]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[dict[str, UdpTransport], dict[str, Got]]]:
    ports = {n: _free_port() for n in NODES}
    got: dict[str, Got] = {n: [] for n in NODES}

    def keep(into: Got) -> Callable[[Decoded, float | None], None]:
        return lambda decoded, stamp: into.append((decoded, stamp))

    ends = {
        n: await UdpTransport.bind(
            Codec(KEY, "lab", n, NODES, 7 + i),
            ("127.0.0.1", ports[n]),
            {p: ("127.0.0.1", ports[p]) for p in NODES if p != n},
            keep(got[n]),
        )
        for i, n in enumerate(NODES)
    }
    try:
        yield ends, got
    finally:
        for end in ends.values():
            end.close()


async def _until(done: Callable[[], bool], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        await asyncio.sleep(0.005)


def test_a_batch_arrives_as_one_datagram_handled_at_once_without_a_stamp() -> None:
    async def body() -> None:
        async with _pair() as (ends, got):
            ends["alpha"].send_batch("bravo", [("default", TimeoutNow(3)),
                                               ("default", HeartbeatAck(3, 1, True, True, False))])
            ends["bravo"].send("alpha", TimeoutNow(4))
            await _until(lambda: bool(got["alpha"] and got["bravo"]))
            ((batch, stamp),) = got["bravo"]
            assert batch.sender == "alpha" and stamp is None
            assert [m for _, m in batch.items] == [TimeoutNow(3),
                                                   HeartbeatAck(3, 1, True, True, False)]
            assert [m for _, m in got["alpha"][0][0].items] == [TimeoutNow(4)]

    asyncio.run(body())


def test_deferred_reading_delivers_only_at_drain_with_the_kernels_receive_time() -> None:
    async def body() -> None:
        async with _pair() as (ends, got):
            bravo = ends["bravo"]
            bravo.defer(True)
            assert bravo.deferred
            sent_at = time.time()
            ends["alpha"].send("bravo", TimeoutNow(1))
            ends["alpha"].send("bravo", TimeoutNow(2))
            # Garbage in between is dropped and counted, and does not stop the drain.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                raw.sendto(b"\x00not a datagram of ours", bravo.local_address)
            ends["alpha"].send("bravo", TimeoutNow(3))
            await asyncio.sleep(0.15)
            assert got["bravo"] == []  # nothing woke the loop for them
            assert bravo.drain() is True
            assert [m for d, _ in got["bravo"] for _, m in d.items] == [
                TimeoutNow(1), TimeoutNow(2), TimeoutNow(3)]
            read_at = time.time()
            for _, stamp in got["bravo"]:
                assert stamp is not None
                # Stamped on arrival, ~150 ms before the drain read it.
                assert sent_at - 0.01 <= stamp <= sent_at + 0.1 < read_at
            assert sum(bravo.drops.values()) == 1
            assert bravo.drain() is True and len(got["bravo"]) == 3

            # Back to reading at once: the loop delivers again, unstamped.
            bravo.defer(False)
            ends["alpha"].send("bravo", TimeoutNow(4))
            await _until(lambda: len(got["bravo"]) == 4)
            assert got["bravo"][-1][1] is None

    asyncio.run(body())


def test_a_drain_reads_a_bounded_number_and_says_more_are_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small enough that the datagrams fit the socket's default receive buffer.
    monkeypatch.setattr(transport_module, "DRAIN_MAX", 8)

    async def body() -> None:
        async with _pair() as (ends, got):
            bravo = ends["bravo"]
            bravo.defer(True)
            for i in range(DRAIN_MAX + 5):
                ends["alpha"].send("bravo", TimeoutNow(i + 1))
            await asyncio.sleep(0.1)
            assert bravo.drain() is False
            assert len(got["bravo"]) == DRAIN_MAX
            assert bravo.drain() is True
            assert len(got["bravo"]) == DRAIN_MAX + 5

    asyncio.run(body())


def test_close_stops_reading_and_sending() -> None:
    async def body() -> None:
        async with _pair() as (ends, got):
            ends["bravo"].close()
            ends["bravo"].close()  # twice is harmless
            assert ends["bravo"].drain() is True
            ends["bravo"].send("alpha", TimeoutNow(1))  # dropped quietly: closed
            await asyncio.sleep(0.05)
            assert got["alpha"] == []

    asyncio.run(body())
