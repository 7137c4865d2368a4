"""The UDP transport on loopback: datagrams both ways, and how each one is read."""

from __future__ import annotations

import asyncio
import socket

from hafailover.core.messages import HeartbeatAck, TimeoutNow
from hafailover.runtime.transport import RECV_BUFFER, UdpTransport
from hafailover.wire import Codec, Decoded

KEY = bytes(range(32))
NODES = ("alpha", "bravo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_batch_arrives_as_one_datagram_read_with_a_heap_sized_buffer() -> None:
    async def body() -> None:
        ports = {n: _free_port() for n in NODES}
        got: dict[str, list[Decoded]] = {n: [] for n in NODES}
        ends = {
            n: await UdpTransport.bind(
                Codec(KEY, "lab", n, NODES, 7 + i),
                ("127.0.0.1", ports[n]),
                {p: ("127.0.0.1", ports[p]) for p in NODES if p != n},
                got[n].append,
            )
            for i, n in enumerate(NODES)
        }
        try:
            for end in ends.values():
                # asyncio's 256 KiB default would make malloc map and unmap a buffer for every
                # datagram read.
                assert getattr(end._transport, "max_size", None) == RECV_BUFFER
            ends["alpha"].send_batch("bravo", [("default", TimeoutNow(3)),
                                               ("default", HeartbeatAck(3, 1, True, True, False))])
            ends["bravo"].send("alpha", TimeoutNow(4))
            for _ in range(100):
                if got["alpha"] and got["bravo"]:
                    break
                await asyncio.sleep(0.01)
            (batch,) = got["bravo"]
            assert batch.sender == "alpha"
            assert [m for _, m in batch.items] == [TimeoutNow(3),
                                                   HeartbeatAck(3, 1, True, True, False)]
            assert [m for _, m in got["alpha"][0].items] == [TimeoutNow(4)]
        finally:
            for end in ends.values():
                end.close()

    asyncio.run(body())
