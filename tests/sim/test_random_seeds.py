"""Random fault schedules over many seeds, invariants checked at every step.

CI runs HAFAILOVER_SEEDS seeds (default 500); `./dev soak` runs 20,000.
Replay one seed with its full trace: .venv/bin/python -m tests.sim.replay 1234
"""

from __future__ import annotations

import os

import pytest

from tests.sim.harness import SimulationError
from tests.sim.scenarios import run_random_seed

SEEDS = int(os.environ.get("HAFAILOVER_SEEDS", "500"))
FIRST = int(os.environ.get("HAFAILOVER_FIRST_SEED", "0"))


def test_random_seeds_hold_every_invariant() -> None:
    failures: list[str] = []
    for seed in range(FIRST, FIRST + SEEDS):
        try:
            run_random_seed(seed)
        except SimulationError as exc:
            failures.append(str(exc))
            if len(failures) >= 3:
                break
    assert not failures, f"{len(failures)} seed(s) failed; first:\n{failures[0]}"


def test_simulator_catches_a_core_that_ignores_promises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariants have teeth: a core whose voters ignore their promises is caught."""
    from hafailover.core.node import Node

    monkeypatch.setattr(Node, "_refusal_wait", lambda self, sender, req, now: None)
    monkeypatch.setattr(
        "hafailover.core.spec.Timings.lease_duration",
        property(lambda self: self.failover_timeout * 1.3),
    )
    caught = 0
    for seed in range(60):
        try:
            run_random_seed(seed)
        except SimulationError:
            caught += 1
    assert caught > 0
