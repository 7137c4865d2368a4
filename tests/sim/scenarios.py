"""Random fault schedules for the simulator, one per seed, and standard cluster shapes.

A seed fixes everything: cluster shape, timings, network model, and the fault schedule
(crashes, freezes, symmetric/asymmetric partitions, splits, loss bursts, health flapping,
maintenance and switchover commands, graceful stops, and failing saves, VIP removals and VIP
additions played through the engine's barrier rule). The last seconds of every run are quiet
and healed, so liveness is checked at the end of every seed too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hafailover.core.events import Effect, SetMaintenance, Switchover
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings
from tests.sim.harness import NetworkModel, Simulator
from tests.sim.invariants import Invariants

DEFAULT = Timings()
FAST = Timings(heartbeat_interval=0.05, failover_timeout=0.3, lease_guard=0.025)


def three_nodes(timings: Timings = DEFAULT, preempt: bool = False) -> ClusterSpec:
    return ClusterSpec(
        (NodeSpec("node1", 150), NodeSpec("node2", 100), NodeSpec("node3", 50)),
        timings,
        preempt,
    )


def random_spec(rng: random.Random) -> ClusterSpec:
    shape = rng.choice(["3", "3", "3", "5", "5", "2+witness", "4", "1"])
    if shape == "2+witness":
        nodes = [NodeSpec("node1", 150), NodeSpec("node2", 100), NodeSpec("witness", 0, True)]
    else:
        count = int(shape)
        priorities = [50, 100, 100, 150, 200]
        nodes = [NodeSpec(f"node{i + 1}", rng.choice(priorities)) for i in range(count)]
    timings = rng.choice([DEFAULT, DEFAULT, FAST])
    preempt = rng.random() < 0.3
    if preempt:
        timings = Timings(
            timings.heartbeat_interval,
            timings.failover_timeout,
            timings.clock_drift,
            timings.lease_guard,
            preempt_delay=rng.uniform(0.5, 3.0),
        )
    return ClusterSpec(tuple(nodes), timings, preempt)


def random_network(rng: random.Random) -> NetworkModel:
    return NetworkModel(
        delay=rng.uniform(0.0002, 0.003),
        jitter=rng.uniform(0.0, 0.01),
        loss=rng.choice([0.0, 0.0, 0.0, 0.02, 0.1]),
        duplicate=rng.choice([0.0, 0.0, 0.02, 0.1]),
    )


def run_random_seed(seed: int, duration: float = 20.0, trace_len: int = 400) -> Simulator:
    """Run one seed to the end; raises SimulationError with a replayable trace on violation."""
    rng = random.Random(seed)
    spec = random_spec(rng)
    sim = Simulator(spec, seed, random_network(rng), trace_len=trace_len)
    Invariants(sim)
    names = list(spec.names)
    t = spec.timings
    log: list[str] = [
        f"{len(names)} nodes {[(n.name, n.priority, n.witness) for n in spec.nodes]}",
        f"timings hb={t.heartbeat_interval} ft={t.failover_timeout}"
        f" preempt={spec.preempt}/{t.preempt_delay:.2f}",
        f"net {sim.net}",
    ]

    def target() -> str:
        leaders = sim.leader_names()
        if leaders and rng.random() < 0.6:
            return leaders[0]
        return rng.choice(names)

    faults: list[tuple[str, Callable[[float], None]]] = [
        ("crash", lambda d: _crash(sim, target(), d)),
        ("freeze", lambda d: _freeze(sim, target(), d)),
        ("partition", lambda d: _partition(sim, target(), names, d, both=True)),
        ("asymmetric", lambda d: _partition(sim, target(), names, d, both=False)),
        ("split", lambda d: _split(sim, rng, names, d)),
        ("loss-burst", lambda d: _loss_burst(sim, rng, names, d)),
        ("unhealthy", lambda d: _unhealthy(sim, target(), d)),
        ("maintenance", lambda d: _maintenance(sim, target(), d)),
        ("switchover", lambda d: _switchover(sim, rng, names)),
        ("stop", lambda d: _stop(sim, target(), d)),
        ("persist-fails", lambda d: sim.fail_effect(target(), Effect.PERSIST, d)),
        ("release-fails", lambda d: sim.fail_effect(target(), Effect.RELEASE, d)),
        ("acquire-fails", lambda d: sim.fail_effect(target(), Effect.ACQUIRE, d)),
    ]
    quiet_from = duration - 4.0
    for _ in range(rng.randint(3, 9)):
        start = rng.uniform(1.0, quiet_from - 0.5)
        length = rng.choice([rng.uniform(0.05, 0.7), rng.uniform(0.5, 3.0)])
        length = min(length, quiet_from - start)
        kind, fn = rng.choice(faults)
        log.append(f"{kind} at {start:.3f} for {length:.3f}")
        sim.at(start, "call", lambda fn=fn, length=length: fn(length))
    sim.at(quiet_from, "call", lambda: _repair_all(sim))
    sim.description = "; ".join(log)
    sim.run_until(duration)
    return sim


def _later(sim: Simulator, delay: float, fn: Callable[[], None]) -> None:
    sim.at(sim.t + delay, "call", fn)


def _crash(sim: Simulator, name: str, d: float) -> None:
    sim.crash(name)
    _later(sim, d, lambda: sim.restart(name))


def _freeze(sim: Simulator, name: str, d: float) -> None:
    sim.freeze(name)
    _later(sim, d, lambda: sim.resume(name))


def _partition(sim: Simulator, name: str, names: list[str], d: float, both: bool) -> None:
    pairs = set()
    for other in names:
        if other != name:
            pairs.add((name, other))
            if both:
                pairs.add((other, name))
    _block_for(sim, pairs, d)


def _block_for(sim: Simulator, pairs: set[tuple[str, str]], d: float) -> None:
    """Block these directed links for `d` seconds; undo only what this fault added."""
    added = pairs - sim.net.blocked
    for src, dst in added:
        sim.block(src, dst, both=False)

    def undo() -> None:
        sim.net.blocked.difference_update(added)
        sim.disturb()

    _later(sim, d, undo)


def _split(sim: Simulator, rng: random.Random, names: list[str], d: float) -> None:
    shuffled = names[:]
    rng.shuffle(shuffled)
    cut = rng.randint(1, max(1, len(names) - 1))
    left, right = shuffled[:cut], shuffled[cut:]
    pairs = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    _block_for(sim, pairs, d)


def _loss_burst(sim: Simulator, rng: random.Random, names: list[str], d: float) -> None:
    if len(names) < 2:
        return
    a, b = rng.sample(names, 2)
    sim.net.link_loss[(a, b)] = rng.choice([0.3, 0.7, 1.0])
    sim.disturb()

    def undo() -> None:
        sim.net.link_loss.pop((a, b), None)
        sim.disturb()

    _later(sim, d, undo)


def _unhealthy(sim: Simulator, name: str, d: float) -> None:
    sim.set_health(name, False)
    _later(sim, d, lambda: sim.set_health(name, True))


def _maintenance(sim: Simulator, name: str, d: float) -> None:
    sim.inject(name, SetMaintenance(1, True))
    _later(sim, d, lambda: _inject(sim, name, SetMaintenance(2, False)))


def _inject(sim: Simulator, name: str, event: SetMaintenance) -> None:
    sim.inject(name, event)


def _switchover(sim: Simulator, rng: random.Random, names: list[str]) -> None:
    origin = rng.choice(names)
    to = rng.choice(["", *names])
    sim.inject(origin, Switchover(3, to))


def _stop(sim: Simulator, name: str, d: float) -> None:
    """A graceful stop: `Stop`, the process exits after its stop grace, systemd starts it later."""
    sim.stop(name)
    _later(sim, min(d, 0.3), lambda: sim.crash(name))
    _later(sim, d, lambda: sim.restart(name))


def _repair_all(sim: Simulator) -> None:
    sim.heal()
    for name, sn in sim.nodes.items():
        sn.fail_until.clear()
        if sn.stopped:
            sim.crash(name)
        if sn.node is None:
            sim.restart(name)
        elif sn.frozen:
            sim.resume(name)
    for name, sn in sim.nodes.items():
        if not sn.healthy:
            sim.set_health(name, True)
        if sn.node is not None and sn.node.maintenance:
            sim.inject(name, SetMaintenance(4, False))
