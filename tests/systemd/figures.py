"""The systemd figures of docs/operations.md, repeated: medians over N runs on one lab.

    flock /tmp/hafailover-lab.lock python -m tests.systemd.figures --repeats 5

(as root, from the checkout; `./dev venv` first). Builds the package from the checkout
(HAFAILOVER_DEB=path or --deb uses a built one), boots the systemd lab's three containers
(tests/systemd/syslab.py, lab/nspawn.py), installs it with apt and starts the cluster, then
repeats, N times each:

- readiness: `systemctl stop` then `systemctl start` on a follower (Type=notify: start returns
  at READY=1, once the control socket answers);
- release-vips: ExecStopPost's command alone, removing one recorded spare address;
- watchdog: SIGSTOP the leader's daemon; systemd's watchdog kill (journal), the VIP gone from
  the frozen node (the lab's address monitor), the exit-to-removal time (ExecStopPost), the
  client outage, and the restarted daemon following again.

Prints every run and the medians ("FIGURE name = median unit  [runs]"); --json writes them.
The lab is removed afterwards, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lab.nspawn import SystemdLab
from tests.systemd.syslab import (
    Cluster,
    build_deb,
    measure_freeze,
    measure_readiness,
    measure_release_vips,
)

# name -> unit, in the order printed
UNITS = {
    "first_start": "s",
    "readiness": "s",
    "release_vips": "s",
    "watchdog_kill": "ms",
    "stale_address": "ms",
    "exit_to_vip_removed": "ms",
    "client_outage": "ms",
    "back_as_follower": "s",
}


def measure(deb: Path, repeats: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in UNITS}
    with SystemdLab(3) as lab:
        cluster = Cluster(lab, deb)
        cluster.setup()
        runs["first_start"] = list(cluster.ready_seconds.values())
        for i in range(repeats):
            leader = cluster.wait_settled()
            follower = next(n for n in cluster.nodes if n != leader)
            runs["readiness"].append(measure_readiness(cluster, follower))
            cluster.wait_settled()
            runs["release_vips"].append(measure_release_vips(cluster, follower))
            for name, value in measure_freeze(cluster, signal.SIGSTOP).items():
                runs[name].append(value)
            print(f"run {i + 1}/{repeats}: " + ", ".join(
                f"{k} {v[-1]:.3g}" for k, v in runs.items() if v and k != "first_start"),
                flush=True)
            time.sleep(1.0)  # the restarted node settles before the next round
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--deb", type=Path, help="a built package (default: build one)")
    ap.add_argument("--json", type=Path, help="write every run and the medians here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="hafailover-figures-") as tmp:
        deb = args.deb or build_deb(Path(tmp))
        load_before = os.getloadavg()[0]
        runs = measure(deb, args.repeats)
        load_after = os.getloadavg()[0]
    # The figures are timings on a shared machine: what else ran shows in the load.
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after, "
          f"{os.cpu_count()} CPUs")
    medians = {k: statistics.median(v) for k, v in runs.items() if v}
    for name, unit in UNITS.items():
        if name in medians:
            shown = ", ".join(f"{v:.3g}" for v in runs[name])
            print(f"FIGURE {name} = {medians[name]:.3g} {unit}  [{shown}]")
    if args.json:
        args.json.write_text(json.dumps({"deb": str(deb), "runs": runs, "medians": medians,
                                         "load": [load_before, load_after]},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
