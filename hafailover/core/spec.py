"""The static description of a cluster as the protocol core sees it.

These are plain frozen dataclasses so that the core never depends on the configuration loader
(pydantic, YAML): the loader builds a `ClusterSpec`, the core only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hafailover.errors import LocalError


class SpecError(LocalError, ValueError):
    """A cluster description the core cannot run (the operator's configuration is wrong).

    Also a `ValueError`, so configuration validators report it like any other bad value.
    """


class TimingError(SpecError):
    """Timings that cannot work together; the message says which and how to fix it."""


@dataclass(frozen=True)
class Timings:
    """Protocol timings in seconds.

    `failover_timeout` is the lease: how long a follower keeps its promise to a leader after the
    last heartbeat it received. The leader's own usable lease is shorter (see `lease_duration`).
    """

    heartbeat_interval: float = 0.1
    failover_timeout: float = 0.6
    # Largest relative rate difference between any node's monotonic clock and real time.
    # CLOCK_MONOTONIC is slewed by at most 500 ppm by NTP; 1% leaves room for bad hardware.
    clock_drift: float = 0.01
    # Time kept back from the leader's lease so that a late timer or a slow netlink call still
    # removes the VIP before any follower's promise can run out.
    lease_guard: float = 0.05
    preempt_delay: float = 30.0
    # Cold start: a node that has not seen a leader since it started waits this long per
    # better-ranked node that may be eligible before it stands, so priority decides the first
    # leader among nodes started within this time of each other (see docs/architecture.md).
    startup_settle: float = 1.0

    def validate(self) -> None:
        if self.heartbeat_interval <= 0:
            raise TimingError("heartbeat_interval must be positive")
        # The tolerance lets "100ms" and "300ms" (0.1 * 3 > 0.3 in floating point) pass.
        if self.failover_timeout < 3 * self.heartbeat_interval - 1e-9:
            raise TimingError(
                f"failover_timeout ({self.failover_timeout:g}s) must be at least 3x "
                f"heartbeat_interval ({self.heartbeat_interval:g}s): raise failover_timeout or "
                "lower heartbeat_interval"
            )
        if not 0 <= self.clock_drift < 0.1:
            raise TimingError("clock_drift must be in [0, 0.1)")
        if self.lease_guard < 0 or self.lease_guard > self.heartbeat_interval:
            raise TimingError(
                "lease_guard must be between 0 and heartbeat_interval "
                f"({self.heartbeat_interval:g}s)"
            )
        if self.lease_duration <= 2 * self.heartbeat_interval:
            raise TimingError(
                "the leader's lease (failover_timeout shortened by clock_drift and lease_guard) "
                "must cover at least two heartbeats: raise failover_timeout"
            )
        if self.preempt_delay < 0:
            raise TimingError("preempt_delay must not be negative")
        if not 0 <= self.startup_settle <= 60:
            raise TimingError("startup_settle must be between 0 and 60 seconds")

    @property
    def lease_duration(self) -> float:
        """How long after *sending* an acknowledged heartbeat the leader may hold the VIP.

        A follower promises `failover_timeout` on its own clock from *receipt*; receipt is after
        sending, and with rates within 1 +/- clock_drift the follower's promise lasts at least
        failover_timeout / (1 + drift) real seconds while the leader's d local seconds last at
        most d / (1 - drift). So d = failover_timeout * (1 - drift) / (1 + drift) - lease_guard
        ends strictly before any promise that backed it.
        """
        ft, rho = self.failover_timeout, self.clock_drift
        return ft * (1 - rho) / (1 + rho) - self.lease_guard

    @property
    def election_step(self) -> float:
        """Extra election delay per better-ranked eligible node: lets priority decide."""
        return self.heartbeat_interval / 2

    @property
    def election_round_timeout(self) -> float:
        """How long a (pre-)candidate waits for a majority before it tries again.

        Two heartbeat intervals: a round that gets its answers ends at once, so this only
        matters when one does not; then, with hundreds of groups electing at the same time, a
        voter can take longer than one interval to answer them all, and a round given up too
        early is an election lost and started again (a storm that did not settle at 420 groups
        with one interval)."""
        return 2 * self.heartbeat_interval

    @property
    def heartbeat_slack(self) -> float:
        """A leader woken this close before its heartbeat is due sends it then, so that the
        nodes of several groups woken by one timer send in the same round (leases are measured
        from the actual send time, so an early heartbeat is never unsafe)."""
        return self.heartbeat_interval / 10

    @property
    def command_timeout(self) -> float:
        """How long a forwarded operator request waits for the `CommandReply`."""
        return 2 * self.failover_timeout

    @property
    def acquire_backoff(self) -> float:
        """After a failed VIP acquire, how long the node stays ineligible before it retries."""
        return 5 * self.failover_timeout


@dataclass(frozen=True)
class NodeSpec:
    name: str
    priority: int = 100
    witness: bool = False


@dataclass(frozen=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    timings: Timings = field(default_factory=Timings)
    preempt: bool = False

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if not names:
            raise SpecError("a cluster needs at least one node")
        if len(set(names)) != len(names):
            raise SpecError("node names must be unique")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def quorum(self) -> int:
        """Votes (or acknowledgements, counting one's own) that make a majority."""
        return len(self.nodes) // 2 + 1

    def node(self, name: str) -> NodeSpec | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None
