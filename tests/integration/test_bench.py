"""Smoke test of the benchmark (`python -m lab.bench`): one short run end to end.

`--quick` means one repeat and a short loss window; `--only` picks one fault per system (the
host death, the quickest, for keepalived advert_int 0.1 and hafailover's defaults) plus the
loss phase, which runs the systems' labs one after the other. The report goes to a temporary
file, so docs/benchmarks.md is never touched. Bounded: the whole run must finish within 105 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUDGET_S = 105.0


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.netns
def test_bench_quick_runs_one_fault_per_system(tmp_path: Path) -> None:
    if shutil.which("keepalived") is None and not Path("/usr/sbin/keepalived").exists():
        pytest.skip("keepalived is not installed (./dev bench installs it)")
    raw, out = tmp_path / "raw.jsonl", tmp_path / "bench.md"
    before = netns_names()
    t0 = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-m", "lab.bench", "--quick",
         "--only", "ka01/death,hf/death,ka01/loss,hf/loss", "--loss-minutes", "0.2",
         "--raw", str(raw), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=BUDGET_S + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    r = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    # The bench names its labs hfb<its pid>_...: only those are this run's (another bench may
    # be running on the same machine).
    mine = re.compile(rf"^hfb{proc.pid}(_\d+)?-")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert elapsed < BUDGET_S, f"took {elapsed:.0f} s"

    runs = [d for d in map(json.loads, raw.read_text().splitlines()) if d["type"] == "run"]
    assert sorted((d["config"], d["fault"]) for d in runs) == [
        ("hf", "death"), ("hf", "loss"), ("ka01", "death"), ("ka01", "loss")]
    assert not [d["error"] for d in runs if d["error"]]
    by = {(d["config"], d["fault"]): d for d in runs}
    for key in (("ka01", "death"), ("hf", "death")):
        d = by[key]
        # The holder died: someone else took over, the client saw a real but bounded outage,
        # and the dead host's leftover address (its link is down) is not counted as dual.
        assert d["moves"] == 1 and d["takeover_ms"] is not None, d
        assert 100 < d["outage_ms"] < 3000, d
        assert d["dual_ms"] == 0, d
    for key in (("ka01", "loss"), ("hf", "loss")):
        assert by[key]["moves"] is not None and by[key]["sent"] > 500, by[key]

    report = out.read_text()
    assert report.strip() in r.stdout  # printed and written
    for heading in ("## Targets", "### Host death", "% loss on every node", "## Method"):
        assert heading in report
    assert re.search(r"\| keepalived advert_int 0\.1 \(VRRPv3\) \| \d+", report)
    assert re.search(r"\| hafailover defaults \(100 ms / 600 ms\) \| \d+", report)
    assert "Keepalived v" in report
    # Every lab was torn down.
    assert not [n for n in netns_names() - before if mine.match(n)]
