"""Simulated failover times with DEFAULT timings on 3 nodes and a realistic LAN.

    .venv/bin/python -m tests.sim.figures --seeds 1000

For each fault, every seed builds a fresh cluster (one-way delay 0.2-1 ms), lets it settle,
injects the fault on the VIP holder at a random time in [5, 5.1) s so that the heartbeat phase
varies, and measures the time from the fault to the first VIP acquisition by another node:

* crash        the leader's process dies (from the crash)
* unhealthy    the leader's health check fails (from the verdict)
* frozen       the leader stops (SIGSTOP, a VM pause) and stays stopped (from the freeze)
* partitioned  the leader is cut off from both peers (from the partition)
* switchover   the operator asks the leader to hand over (from the command)

Invariants are checked at every step of every run. Also prints how many random-seed scenarios
(`run_random_seed`) the simulator runs per minute.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hafailover.core.events import Switchover
from tests.sim.harness import NetworkModel, Simulator
from tests.sim.invariants import Invariants
from tests.sim.scenarios import DEFAULT, run_random_seed, three_nodes

SETTLE_FROM = 5.0
PHASE = 0.1  # the fault lands uniformly in [SETTLE_FROM, SETTLE_FROM + PHASE)
OBSERVE = 3.0  # how long after the fault a new holder may take


def realistic_network() -> NetworkModel:
    """A LAN: one-way delay uniform in 0.2-1 ms (0.2 ms base plus up to 0.8 ms jitter)."""
    return NetworkModel(delay=0.0002, jitter=0.0008)


def _crash(sim: Simulator, leader: str) -> None:
    sim.crash(leader)


def _unhealthy(sim: Simulator, leader: str) -> None:
    sim.set_health(leader, False)


def _freeze(sim: Simulator, leader: str) -> None:
    sim.freeze(leader)


def _partition(sim: Simulator, leader: str) -> None:
    for other in sim.nodes:
        if other != leader:
            sim.block(leader, other)


def _switchover(sim: Simulator, leader: str) -> None:
    sim.inject(leader, Switchover(1))


FAULTS: dict[str, Callable[[Simulator, str], None]] = {
    "crash": _crash,
    "unhealthy": _unhealthy,
    "frozen": _freeze,
    "partitioned": _partition,
    "switchover": _switchover,
}


@dataclass(frozen=True)
class Run:
    fault: str
    seed: int
    at: float
    old: str
    new: str
    failover: float | None  # seconds from the fault to the new holder; None if none came


def measure(fault: str, seed: int) -> Run:
    """One run of `fault` with `seed`; raises SimulationError if an invariant breaks."""
    inject = FAULTS[fault]
    phase = random.Random(f"{fault}/{seed}").uniform(0.0, PHASE)
    sim = Simulator(three_nodes(DEFAULT), seed, realistic_network())
    sim.description = f"figures: {fault} at {SETTLE_FROM + phase:.4f}s"
    Invariants(sim)
    at = SETTLE_FROM + phase
    sim.run_until(at)
    holders = sim.holders()
    if len(holders) != 1:
        return Run(fault, seed, at, "", "", None)
    old = holders[0]
    inject(sim, old)
    step = DEFAULT.heartbeat_interval
    until = at
    while until < at + OBSERVE:
        until = min(until + step, at + OBSERVE)
        sim.run_until(until)
        for t, name, held in sim.vip_log:
            if held and t >= at and name != old:
                return Run(fault, seed, at, old, name, t - at)
    return Run(fault, seed, at, old, "", None)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    fault: str
    runs: int
    failures: int
    median: float
    p90: float
    p99: float
    max: float


def summarise(fault: str, runs: Sequence[Run]) -> Summary:
    times = [r.failover for r in runs if r.failover is not None]
    if not times:
        nan = float("nan")
        return Summary(fault, len(runs), len(runs), nan, nan, nan, nan)
    return Summary(
        fault,
        len(runs),
        len(runs) - len(times),
        percentile(times, 50),
        percentile(times, 90),
        percentile(times, 99),
        max(times),
    )


def run_fault(fault: str, seeds: int, first: int = 0) -> list[Run]:
    return [measure(fault, seed) for seed in range(first, first + seeds)]


def seeds_per_minute(seeds: int = 200) -> tuple[float, float]:
    """Random-seed scenarios per minute of wall time and of this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in range(seeds):
        run_random_seed(seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return seeds / wall * 60, seeds / cpu * 60


def table(summaries: Sequence[Summary]) -> str:
    lines = [
        "| fault | runs | no new holder | median | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.fault} | {s.runs} | {s.failures} | {_ms(s.median)} | {_ms(s.p90)} "
            f"| {_ms(s.p99)} | {_ms(s.max)} |"
        )
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1000, help="seeds per fault (default 1000)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--speed-seeds", type=int, default=200,
                        help="random-seed scenarios timed for the seeds/minute figure")
    args = parser.parse_args(argv)
    t = DEFAULT
    print(
        f"3 nodes, DEFAULT timings (heartbeat {t.heartbeat_interval * 1000:.0f} ms, "
        f"failover_timeout {t.failover_timeout * 1000:.0f} ms, lease "
        f"{t.lease_duration * 1000:.0f} ms), one-way delay 0.2-1 ms, clock drift up to "
        f"{t.clock_drift:.0%}; fault at uniform [{SETTLE_FROM:g}, {SETTLE_FROM + PHASE:g}) s; "
        f"{args.seeds} seeds per fault\n"
    )
    started = time.perf_counter()
    summaries = [summarise(f, run_fault(f, args.seeds, args.first_seed)) for f in FAULTS]
    elapsed = time.perf_counter() - started
    print(table(summaries))
    print(f"\n({len(FAULTS) * args.seeds} runs in {elapsed:.1f} s wall)")
    wall_rate, cpu_rate = seeds_per_minute(args.speed_seeds)
    print(f"random-seed test (run_random_seed, 20 s simulated each): {wall_rate:.0f} seeds per "
          f"wall minute, {cpu_rate:.0f} per CPU minute (timed over {args.speed_seeds} seeds)")
    return 0 if all(s.failures == 0 for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
