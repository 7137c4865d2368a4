"""Safety and liveness invariants, checked by the simulator after every step.

1. At most one running node holds the VIP (frozen and crashed nodes are not running). A node
   whose release failed ("stuck": the address is still there) is the one exception the core
   cannot prevent: it grants nothing and must be rid of the address (released, or exited so
   that `release-vips` removes it) within one failover timeout of the first failure.
2. The holder is backed by a majority *in ground truth*: enough nodes (counting itself, crashed
   nodes and nodes still refusing votes after a restart) whose promise to it has not run out in
   real time. This is "no node without a valid majority lease holds the VIP", checked from the
   followers' side rather than trusting the leader's own arithmetic.
3. At most one leader per term, over the whole run.
4. A holder that cannot reach a majority of live nodes (running or frozen; ignoring random
   loss) releases the VIP within the failover timeout.
6. A node never grants two candidates a real vote in one term, over restarts and failed saves
   (checked by the harness on every vote that leaves a node).
7. A stopped node never stands (no vote request) and never acquires the VIP again.
5. Liveness: when the network is clean, nothing is frozen, and an eligible node is running in a
   majority, some node holds the VIP within twice the failover timeout of the last disturbance,
   or of the end of the cold-start settle time of the first eligible node allowed to stand.
"""

from __future__ import annotations

from hafailover.core.actions import AcquireVip, Action, Decision, Send
from hafailover.core.messages import VoteRequest
from hafailover.core.reasons import Reason
from tests.sim.harness import SimNode, Simulator

# Float slack for comparing times computed on different clocks.
EPS = 1e-6


class Invariants:
    def __init__(self, sim: Simulator, liveness: bool = True) -> None:
        self.sim = sim
        self.liveness = liveness
        self.leader_of_term: dict[int, str] = {}
        self.last_majority: dict[str, float] = dict.fromkeys(sim.nodes, 0.0)
        self.holderless_since: float | None = None
        self.checks = 0
        # Per node: (start time, real time its cold-start settle ends), taken at its start.
        self.settle_end: dict[str, tuple[float, float]] = {}
        # (name, eligible, refuses votes) of every running node, and when that last changed.
        self.eligible_set: frozenset[tuple[str, bool, bool]] = frozenset()
        self.eligible_changed = 0.0
        sim.observers.append(self.check)

    def check(self, sim: Simulator, name: str, actions: list[Action]) -> None:
        self.checks += 1
        if name and actions is not None and any(
            isinstance(a, Decision) and a.reason is Reason.ELECTED for a in actions
        ):
            node = sim.nodes[name].node
            term = node.term if node is not None else -1
            other = self.leader_of_term.setdefault(term, name)
            if other != name:
                sim.fail(f"two leaders in term {term}: {other} and {name}")
        if name and sim.nodes[name].stopped and any(
            isinstance(a, AcquireVip)
            or (isinstance(a, Send) and isinstance(a.message, VoteRequest))
            for a in actions
        ):
            sim.fail(f"{name} stands or takes the VIP after Stop")
        holders = sim.holders()
        stuck = [n for n in holders if sim.nodes[n].stuck_since is not None]
        if stuck:
            holders = [n for n in holders if n not in stuck]
        if len(holders) > 1:
            sim.fail(f"two running VIP holders: {holders}")
        self._check_stuck(sim, stuck)
        self._track_majority(sim)
        if holders:
            self._check_backing(sim, holders[0])
            self._check_isolated_holder(sim, holders[0])
        if self.liveness:
            self._check_liveness(sim, holders)

    def before_change(self, sim: Simulator) -> None:
        """Just before a fault or its end changes who reaches whom: record the majorities that
        held up to this instant (the last check may be tens of milliseconds earlier, and
        `_check_isolated_holder` counts from the last time a majority was seen)."""
        self._track_majority(sim)

    def _check_stuck(self, sim: Simulator, stuck: list[str]) -> None:
        t = sim.spec.timings
        bound = t.failover_timeout * (1 + 2 * t.clock_drift) + 0.01
        for name in stuck:
            since = sim.nodes[name].stuck_since
            assert since is not None
            if sim.t - since > bound:
                sim.fail(f"{name} failed to release the VIP {sim.t - since:.3f}s ago, still has it")

    def _track_majority(self, sim: Simulator) -> None:
        # A frozen node is still on the network and still keeps the promise it made, so it
        # counts as reachable here; a crashed one (its promises gone) does not.
        for name, sn in sim.nodes.items():
            if not sn.running:
                continue
            reach = sum(
                1
                for other, on in sim.nodes.items()
                if on.node is not None
                and (
                    other == name
                    or (
                        (name, other) not in sim.net.blocked
                        and (other, name) not in sim.net.blocked
                    )
                )
            )
            if reach >= sim.spec.quorum:
                self.last_majority[name] = sim.t

    def _check_backing(self, sim: Simulator, holder: str) -> None:
        hn = sim.nodes[holder].node
        assert hn is not None
        backing = 0
        for name, sn in sim.nodes.items():
            if name == holder or sn.node is None:
                backing += 1
                continue
            to, term, until = sn.node.promise
            alive = sim.t < sn.real(until) - EPS
            if alive and (to == "" or (to == holder and term == hn.term)):
                backing += 1
        if backing < sim.spec.quorum:
            sim.fail(
                f"{holder} holds the VIP in term {hn.term} without a majority lease "
                f"(backed by {backing}, quorum {sim.spec.quorum})"
            )

    def _check_isolated_holder(self, sim: Simulator, holder: str) -> None:
        ft = sim.spec.timings.failover_timeout
        cut_for = sim.t - self.last_majority[holder]
        if cut_for > ft + EPS:
            sim.fail(f"{holder} still holds the VIP {cut_for:.3f}s after losing its majority")

    def _check_liveness(self, sim: Simulator, holders: list[str]) -> None:
        if holders:
            self.holderless_since = None
            return
        if self.holderless_since is None:
            self.holderless_since = sim.t
        eligible = frozenset(
            (n, _eligible(sim, sn), sn.node.faults.refuses_votes)
            for n, sn in sim.nodes.items()
            if sn.running and sn.node is not None
        )
        if eligible != self.eligible_set:
            # A back-off ending or a fault clearing makes a node eligible: measure from then.
            self.eligible_set, self.eligible_changed = eligible, sim.t
        ft = sim.spec.timings.failover_timeout
        since = max(
            sim.last_disturbance, self.holderless_since, self._first_settled(sim),
            self.eligible_changed,
        )
        if sim.t - since <= 2 * ft or not sim.net.clean():
            return
        nodes = sim.nodes.values()
        if any(sn.frozen for sn in nodes):
            return
        running = [sn for sn in nodes if sn.running]
        if len(running) < sim.spec.quorum or not any(_eligible(sim, sn) for sn in running):
            return
        voters = [sn for sn in running if sn.node is not None and not sn.node.faults.refuses_votes]
        if len(voters) < sim.spec.quorum:
            return  # saves or releases failing on too many nodes: no vote can be cast
        sim.fail(
            f"no VIP holder for {sim.t - since:.3f}s (since the last disturbance or release) "
            "with a clean network and an eligible node in a majority"
        )


    def _first_settled(self, sim: Simulator) -> float:
        """When the first running eligible node may stand after its cold-start settle time."""
        ends = []
        for name, sn in sim.nodes.items():
            if not sn.running or sn.node is None:
                continue
            start, end = self.settle_end.get(name, (None, 0.0))
            if start != sn.started_at:
                start, end = sn.started_at, sn.real(sn.node.settle_until)
                self.settle_end[name] = (start, end)
            if _eligible(sim, sn):
                ends.append(end)
        return min(ends, default=float("-inf"))


def _eligible(sim: Simulator, sn: SimNode) -> bool:
    node = sn.node
    assert node is not None
    return sn.healthy and node.eligible and not node.faults.refuses_votes and not sn.stopped

