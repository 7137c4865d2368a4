"""Micro-benchmark: the CPU a node spends per heartbeat round on G VIP groups.

Three nodes, each with a real `Groups` multiplexer and a real wire `Codec`, exchange real
authenticated datagrams in memory (no sockets, no asyncio: this measures the protocol core,
the multiplexer and the batch codec, which is what grows with the number of groups). Virtual
time advances from timer to timer; each node's work (timer steps, decoding, the steps for
received batches, encoding) is timed with `time.thread_time`. After a warm-up in which every
group elects its leader, it reports per node and heartbeat round: CPU time, datagrams sent and
timer wake-ups, and the CPU share that is at the default 100 ms interval. The CPU is split into
`Node` (inside the groups' `Node.handle`), `codec` (encode_batch, decode) and `rest`: the
multiplexer's routing, tagging and deadline bookkeeping (including `Node.next_deadline`), this
script's runtime glue (per-peer outboxes, events from items) and the timing wrapper itself
(~1 us per `Node.handle`). Under cProfile the multiplexer's own code is ~10 % of the total.

    .venv/bin/python -m tests.sim.bench_groups            # 1, 10, 50, 500 groups
    .venv/bin/python -m tests.sim.bench_groups 50 --layout one-leader --rounds 100

Layouts: `spread` (group i prefers node i mod 3: every node leads a third of the groups),
`one-leader` (node1 leads every group: the worst case for one node).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from hafailover.core.actions import Action, Send
from hafailover.core.events import Event, MessageReceived, TimerFired
from hafailover.core.groups import ForGroup, Groups, Tagged
from hafailover.core.node import Node
from hafailover.core.reasons import Role
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings
from hafailover.wire import Codec, Decoded, Item

NODES = ("node1", "node2", "node3")
KEY = bytes(range(32))


@dataclass
class BenchNode:
    name: str
    groups: Groups
    codec: Codec
    cpu: float = 0.0  # everything below, and the runtime's glue (outbox, events)
    codec_cpu: float = 0.0  # encode_batch and decode
    node_cpu: float = 0.0  # inside the groups' Node.start/handle (the rest of the multiplexer's
    # time is its own: routing, tagging, deadlines)
    datagrams: int = 0
    bytes_sent: int = 0
    wakeups: int = 0
    timer_token: int = 0
    outbox: dict[str, list[Item]] = field(default_factory=dict)


def specs_for(count: int, layout: str) -> dict[str, ClusterSpec]:
    timings = Timings()
    specs = {}
    for i in range(count):
        first = 0 if layout == "one-leader" else i % len(NODES)
        priorities = {n: 50 for n in NODES}
        priorities[NODES[first]] = 150
        priorities[NODES[(first + 1) % len(NODES)]] = 100
        nodes = tuple(NodeSpec(n, priorities[n]) for n in NODES)
        specs[f"group-{i:03d}"] = ClusterSpec(nodes, timings, preempt=True)
    return specs


class Bench:
    def __init__(self, count: int, layout: str) -> None:
        specs = specs_for(count, layout)
        self.t = 0.0
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.nodes: dict[str, BenchNode] = {}
        for i, name in enumerate(NODES):
            groups = Groups(specs, name, random.Random(i))
            codec = Codec(KEY, "bench", name, NODES, 1000 + i, groups=specs)
            self.nodes[name] = bn = BenchNode(name, groups, codec)
            for g in groups.groups:
                _time_node(bn, groups.node(g))
        for bn in self.nodes.values():
            self._step(bn, partial(bn.groups.start, self.t))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), fn))

    def run_until(self, t_end: float) -> None:
        while self.queue and self.queue[0][0] <= t_end:
            t, _, fn = heapq.heappop(self.queue)
            self.t = max(self.t, t)
            fn()
        self.t = t_end

    def _step(self, bn: BenchNode, work: Callable[[], list[Tagged]]) -> None:
        """One step of one node: its work, then one batch per peer (timed as its CPU)."""
        start = time.thread_time()
        actions = work()
        for tagged in actions:
            a = tagged.action
            if isinstance(a, Send):
                bn.outbox.setdefault(a.to, []).append((tagged.group, a.message))
        packets: list[tuple[str, bytes]] = []
        ms = int(self.t * 1000)
        encode_start = time.thread_time()
        for to, items in bn.outbox.items():
            packets.extend((to, p) for p in bn.codec.encode_batch(items, ms, to=to))
        bn.outbox.clear()
        end = time.thread_time()
        bn.codec_cpu += end - encode_start
        bn.cpu += end - start
        for to, packet in packets:
            bn.datagrams += 1
            bn.bytes_sent += len(packet)
            self.at(self.t + 0.0005, partial(self._receive, to, packet))
        self._schedule(bn)

    def _receive(self, name: str, packet: bytes) -> None:
        bn = self.nodes[name]
        start = time.thread_time()
        decoded = bn.codec.decode(packet)
        decoded_at = time.thread_time()
        assert isinstance(decoded, Decoded), decoded
        sender = decoded.sender
        events = [ForGroup(g, MessageReceived(sender, m)) for g, m in decoded.items]
        bn.codec_cpu += decoded_at - start
        bn.cpu += time.thread_time() - start
        self._step(bn, lambda: bn.groups.handle_many(events, self.t))

    def _schedule(self, bn: BenchNode) -> None:
        deadline = bn.groups.next_deadline()
        if deadline == float("inf"):
            return
        bn.timer_token += 1
        token = bn.timer_token

        def fire() -> None:
            if token != bn.timer_token:
                return
            bn.wakeups += 1
            self._step(bn, lambda: bn.groups.handle(TimerFired(), max(self.t, deadline)))

        self.at(max(self.t, deadline), fire)

    def reset(self) -> None:
        for bn in self.nodes.values():
            bn.cpu = bn.codec_cpu = bn.node_cpu = 0.0
            bn.datagrams = bn.bytes_sent = bn.wakeups = 0

    def leaders(self) -> dict[str, int]:
        return {
            name: sum(1 for g in bn.groups.groups if bn.groups.node(g).role is Role.LEADER)
            for name, bn in self.nodes.items()
        }


def _time_node(bn: BenchNode, node: Node) -> None:
    """Count the time spent inside `node.handle` as the node's protocol work (the two clock
    reads add ~1 us a call to the total, none to the split)."""
    handle = node.handle

    def timed(event: Event, now: float) -> list[Action]:
        start = time.thread_time()
        try:
            return handle(event, now)
        finally:
            bn.node_cpu += time.thread_time() - start

    node.handle = timed  # type: ignore[method-assign]


def measure(count: int, layout: str, rounds: int) -> list[str]:
    bench = Bench(count, layout)
    interval = Timings().heartbeat_interval
    bench.run_until(6.0)  # elections, leases, preemption settled
    bench.reset()
    bench.run_until(6.0 + rounds * interval)
    leaders = bench.leaders()
    lines = []
    for name, bn in bench.nodes.items():
        per_round = bn.cpu / rounds
        lines.append(
            f"{count:5d} {layout:10s} {name}  leads {leaders[name]:4d}  "
            f"cpu/round {per_round * 1e6:7.0f} us = {per_round / interval * 100:5.2f}% of a core "
            f"(Node {bn.node_cpu / rounds * 1e6:6.0f}, codec {bn.codec_cpu / rounds * 1e6:5.0f}, "
            f"rest {(bn.cpu - bn.node_cpu - bn.codec_cpu) / rounds * 1e6:5.0f})  "
            f"datagrams/round {bn.datagrams / rounds:4.2f}  "
            f"bytes/round {bn.bytes_sent / rounds:6.0f}  wake-ups/round {bn.wakeups / rounds:4.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1, 10, 50, 500])
    parser.add_argument("--layout", choices=["spread", "one-leader"], default="")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    layouts = [args.layout] if args.layout else ["spread", "one-leader"]
    print("3 nodes, default timings; per node and 100 ms heartbeat round:")
    for layout in layouts:
        for count in args.counts:
            for line in measure(count, layout, args.rounds):
                print(line)


if __name__ == "__main__":
    main()
