"""Replay one simulator seed and print its scenario and full trace.

    .venv/bin/python -m tests.sim.replay SEED
"""

from __future__ import annotations

import sys

from tests.sim.harness import SimulationError
from tests.sim.scenarios import run_random_seed


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m tests.sim.replay SEED", file=sys.stderr)
        return 2
    try:
        sim = run_random_seed(int(argv[0]), trace_len=1_000_000)
    except SimulationError as exc:
        print(exc)
        return 1
    print(sim.description)
    print("\n".join(sim.trace))
    print(f"seed {argv[0]}: all invariants held")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
