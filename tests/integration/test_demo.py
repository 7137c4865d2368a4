"""`./dev demo` end to end: the real walkthrough as a subprocess, as a newcomer would run it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cleanup_stale
from lab.demo import PREFIX

ROOT = Path(__file__).resolve().parents[2]


def demo_namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if re.match(rf"^{PREFIX}{pid}(_\d+)?-", n)]


@pytest.mark.netns
def test_demo_runs_a_failover_and_cleans_up() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lab.demo"], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo's lab cleans up on SIGTERM
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"demo did not finish in 120 s:\n{out}\n{err}")
    finally:
        left = demo_namespaces(proc.pid)
        with contextlib.suppress(Exception):
            cleanup_stale(PREFIX)  # only if the demo died without cleaning up
    log = f"\n--- stdout\n{out}\n--- stderr\n{err}"
    assert proc.returncode == 0, log
    assert not left, f"namespaces left behind: {left}{log}"

    m = re.search(r"host death of (\S+)\s+(\S+) -> (\S+)\s+(\d+) ms", out)
    assert m, log
    dead, first, new, outage_ms = m.group(1), m.group(2), m.group(3), int(m.group(4))
    assert dead == first and new != first, log
    assert re.search(rf"{first} was elected leader", out), log
    assert re.search(rf"new VIP holder: {new}\b", out), log
    assert 0 < outage_ms < 3000, log
    assert re.search(r"client outage: (\d+) ms", out), log

    # The real CLI output: `hafailover status` and `hafailover events`.
    assert "$ hafailover status" in out and re.search(r"VIP holder \S+\s+quorum", out), log
    assert re.search(r"^\s+NODE\s+ROLE\s+HEALTH", out, re.M), log
    assert "$ hafailover events" in out, log
    assert re.search(rf"#\d+ {new} term \d+ lease-acquired", out), log
    assert re.search(rf"switchover --to {first}\s+{new} -> {first}", out), log
    assert re.search(r"switchover took \d+ ms", out), log
