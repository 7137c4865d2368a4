"""`./dev demo` end to end: the real active/active walkthrough as a subprocess, as a newcomer would
run it."""

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

    # Active/active: only web moves when node1's host dies, db's client loses nothing; web
    # comes back to node1 after preempt_delay and db still does not move.
    assert "active/active: web on node1, db on node2" in out, log
    m = re.search(r"host death of node1\s+web node1 -> (node\d)\s+(\d+) ms", out)
    assert m, log
    new, outage_ms = m.group(1), int(m.group(2))
    assert new != "node1" and 0 < outage_ms < 3000, log
    assert re.search(r"host death of node1\s+db node2 \(stays\)\s+0 lost", out), log
    assert re.search(rf"node1 back \(preempt_delay 3s\)\s+web {new} -> node1\s+\d+ ms", out), log
    assert re.search(r"node1 back \(preempt_delay 3s\)\s+db node2 \(stays\)\s+0 lost", out), log
    back = re.search(r"web back on node1 ([\d.]+) s after node1's daemon was up", out)
    assert back and float(back.group(1)) >= 3.0, log

    # The real CLI output: `hafailover status` and `hafailover events --group web`.
    assert "$ hafailover status" in out and re.search(r"\bweb\b.*\bnode1\b", out), log
    assert "$ hafailover events --group web" in out, log
