"""hafailover vs keepalived on the same network-namespace lab: `make bench` / `./dev bench`.

    python -m lab.bench [--repeats 5] [--loss-minutes 10] [--only CONFIG/FAULT,...]
                                   [--quick] [--out docs/benchmarks.md] [--raw FILE]
    python -m lab.bench --from-raw FILE    # re-render a report from recorded runs

Configurations: ka1 (keepalived advert_int 1, VRRPv2), ka01 (advert_int 0.1, VRRPv3), hf
(hafailover defaults: 100 ms heartbeat, 600 ms failover timeout), hffast (50 ms / 300 ms).
Faults: death, partition, freeze, hang, sigterm, switchover (hafailover only), loss, plus idle.
`--only` takes shell patterns over CONFIG/FAULT, comma-separated: `hf*/death,*/idle`.

Order: the idle cost of each configuration (quiet machine), then every fault `--repeats` times
with the configurations alternating within a repeat and a fresh lab per run, then the loss runs,
one configuration at a time, each in its own lab. Every run is bounded in time and every
lab is torn down (also on Ctrl-C). Each result is appended to the raw JSON-lines file as soon
as it is known; the markdown report is printed and written at the end.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from lab import keepalived
from lab.bench_faults import (
    CONFIGS,
    FAULTS,
    IdleResult,
    RunResult,
    measure_idle,
    run_fault,
)
from lab.bench_report import render
from lab.netns import Lab, cleanup_stale

PREFIX = "hfb"
REPO = Path(__file__).resolve().parents[1]
HOLD = 10.0
HANG_HOLD_MIN = 9.0  # the verdict alone takes up to ~6 s (interval 1 s, timeout 2 s, fall 2)
IDLE_SECONDS = 30.0
QUICK_LOSS_MINUTES = 0.25
QUICK_IDLE_SECONDS = 5.0


def selected(only: str | None) -> list[tuple[str, str]]:
    pairs = [(c, f) for f in (*FAULTS, "idle") for c in CONFIGS if CONFIGS[c].supports(f)]
    if not only:
        return pairs
    pats = [p.strip() for p in only.split(",") if p.strip()]
    bad = [p for p in pats if "/" not in p]
    if bad:
        raise SystemExit(f"--only wants CONFIG/FAULT patterns, got {bad}")
    chosen = [(c, f) for c, f in pairs if any(fnmatch.fnmatchcase(f"{c}/{f}", p) for p in pats)]
    if not chosen:
        raise SystemExit(f"--only {only!r} matches nothing; configs {list(CONFIGS)}, faults "
                         f"{[*FAULTS, 'idle']}")
    return chosen


def _git(*args: str) -> str:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                       timeout=10)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def versions() -> dict[str, str]:
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "hafailover")
    try:
        ka = keepalived.version()
    except keepalived.KeepalivedError as e:
        ka = f"not available ({e})"
    return {
        "keepalived": ka,
        "hafailover": commit + (" (with uncommitted changes under hafailover/)" if dirty
                                and dirty != "unknown" else ""),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "CPUs": str(os.cpu_count()),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


class Recorder:
    """Appends every result to the raw file (flushed) and keeps them for the report."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = open(path, "w")  # noqa: SIM115 - closed in close()
        self.meta = meta
        self.runs: list[dict[str, Any]] = []
        self.idle: list[dict[str, Any]] = []
        self.write({"type": "meta", **meta})

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def run(self, r: RunResult) -> None:
        d = r.to_json()
        self.runs.append(d)
        self.write({"type": "run", **d})

    def idle_result(self, r: IdleResult) -> None:
        d = r.to_json()
        self.idle.append(d)
        self.write({"type": "idle", **d})

    def close(self, end: dict[str, Any]) -> None:
        self.write({"type": "end", **end})
        self._f.close()


def load_raw(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]],
                                  dict[str, Any] | None]:
    meta: dict[str, Any] = {}
    runs, idle = [], []
    end = None
    for line in path.read_text().splitlines():
        d = json.loads(line)
        kind = d.pop("type")
        if kind == "meta":
            meta = d
        elif kind == "run":
            runs.append(d)
        elif kind == "idle":
            idle.append(d)
        elif kind == "end":
            end = d
    return meta, runs, idle, end


def merge_raw(paths: Sequence[Path]) -> tuple[dict[str, Any], list[dict[str, Any]],
                                              list[dict[str, Any]], dict[str, Any] | None]:
    """The first file is the run; each later one replaces the rows (config/fault) it has, or
    with a leading '+' adds its runs to them (more repeats), and is listed in
    meta["supplements"] with its command and note."""
    meta, runs, idle, end = load_raw(paths[0])
    meta = {**meta, "supplements": []}
    for p in paths[1:]:
        add = str(p).startswith("+")
        m2, runs2, idle2, _ = load_raw(Path(str(p)[1:]) if add else p)
        pairs = {(r["config"], r["fault"]) for r in runs2}
        runs = [r for r in runs if add or (r["config"], r["fault"]) not in pairs] + runs2
        configs2 = {r["config"] for r in idle2}
        idle = [r for r in idle if r["config"] not in configs2] + idle2
        replaced = sorted({f"{c}/{f}" for c, f in pairs} | {f"{c}/idle" for c in configs2})
        meta["supplements"].append({"command": m2.get("command"), "started": m2.get("started"),
                                    "added": add,
                                    "hafailover": m2.get("versions", {}).get("hafailover"),
                                    "note": m2.get("note"), "replaced": replaced})
    return meta, runs, idle, end


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _summary(r: RunResult) -> str:
    if r.error:
        return "ERROR"
    parts = [f"outage {r.outage_ms:.0f}{'+' if r.outage_clipped else ''} ms",
             f"dual {r.dual_ms:.0f} ms", f"moves {r.moves}"]
    if r.after_heal_ms is not None:
        parts.append(f"after-heal {r.after_heal_ms:.0f}{'+' if r.after_heal_clipped else ''}")
    if r.stale_gone_ms is not None:
        parts.append(f"stale gone {r.stale_gone_ms:.0f} ms")
    if r.failover_after_verdict_ms is not None:
        parts.append(f"verdict {r.verdict_after_fault_ms:.0f} ms, failover after "
                     f"{r.failover_after_verdict_ms:.0f} ms")
    if r.fault == "loss":
        parts.append(f"drops {r.drops}")
    return ", ".join(parts) + f" ({r.seconds:.0f} s)"


def run_bench(a: argparse.Namespace, rec: Recorder) -> None:
    pairs = selected(a.only)
    hold = float(a.hold)
    idle_cfgs = [c for c, f in pairs if f == "idle"]
    faults = [f for f in FAULTS if f != "loss" and any(pf == f for _, pf in pairs)]
    loss_cfgs = [c for c, f in pairs if f == "loss"]
    total = len(idle_cfgs) + a.repeats * sum(1 for _, f in pairs if f in faults) + len(
        loss_cfgs) * a.loss_repeats
    done = 0
    for c in idle_cfgs:
        done += 1
        _say(f"[{done}/{total}] {c}/idle ({a.idle_seconds:g} s)")
        with Lab(3, prefix=PREFIX) as lab:
            try:
                for ir in measure_idle(CONFIGS[c], lab, a.idle_seconds):
                    rec.idle_result(ir)
                    _say(f"  {ir.node} {ir.role}: RSS {ir.rss_mb:.1f} MB, CPU {ir.cpu_pct:.2f}% "
                         f"(incl. checks {ir.cpu_with_checks_pct:.2f}%)")
            except Exception as e:
                _say(f"  ERROR {c}/idle: {e}")
                rec.idle_result(IdleResult(c, "-", "-", 0, 0, 0, 0, 0, f"{e}"[:500]))
    for fault in faults:
        cfgs = [c for c, f in pairs if f == fault]
        fhold = max(hold, HANG_HOLD_MIN) if fault == "hang" else hold
        for rep in range(a.repeats):
            for c in cfgs:
                done += 1
                with Lab(3, prefix=PREFIX) as lab:
                    r = run_fault(CONFIGS[c], fault, lab, rep, hold=fhold, loss_seconds=0,
                                  log=_say)
                rec.run(r)
                _say(f"[{done}/{total}] {c}/{fault} #{rep + 1}: {_summary(r)}")
    for rep in range(a.loss_repeats if loss_cfgs else 0):
        # One lab at a time: on two cores, labs in parallel measure the machine, not the daemons.
        for c in loss_cfgs:
            _say(f"{c}/loss #{rep + 1}: {a.loss_minutes:g} min of 10% loss")
            with Lab(3, prefix=PREFIX) as lab:
                r = run_fault(CONFIGS[c], "loss", lab, rep, hold=hold,
                              loss_seconds=60 * a.loss_minutes, log=_say)
            rec.run(r)
            done += 1
            _say(f"[{done}/{total}] {c}/loss #{rep + 1}: {_summary(r)}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m lab.bench",
                                 description="hafailover vs keepalived on a netns lab (root)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per fault and config")
    ap.add_argument("--loss-minutes", type=float, default=10.0)
    ap.add_argument("--loss-repeats", type=int, default=1,
                    help="loss runs per config (one lab at a time)")
    ap.add_argument("--only", help="CONFIG/FAULT shell patterns, comma-separated")
    ap.add_argument("--quick", action="store_true",
                    help=f"1 repeat, {QUICK_LOSS_MINUTES * 60:g} s of loss, "
                         f"{QUICK_IDLE_SECONDS:g} s idle; writes nothing under docs/ unless --out")
    ap.add_argument("--hold", type=float, default=HOLD,
                    help="partition/freeze/hung-check duration in s (hang at least 9)")
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--out", help="markdown report (default docs/benchmarks.md; with --quick "
                                  "only printed)")
    ap.add_argument("--raw", help="raw results, JSON lines (default /tmp/hafailover-bench-*)")
    ap.add_argument("--from-raw", help="only render the report from this raw file; with "
                                       "FILE,FILE2,... FILE2's rows replace FILE's, with "
                                       "FILE,+FILE2 they are added to them")
    ap.add_argument("--note", help="why this run was made (kept in the raw file, shown when "
                                   "its rows are merged into another run's report)")
    a = ap.parse_args(argv)
    if a.quick:
        a.repeats, a.loss_minutes = 1, min(a.loss_minutes, QUICK_LOSS_MINUTES)
    if a.idle_seconds is None:
        a.idle_seconds = QUICK_IDLE_SECONDS if a.quick else IDLE_SECONDS
    if not 1 <= a.repeats <= 50 or not 0 < a.loss_minutes <= 50 or not 1 <= a.loss_repeats <= 10:
        ap.error("need 1 <= repeats <= 50, 0 < loss-minutes <= 50, 1 <= loss-repeats <= 10")
    if not 1 <= a.hold <= 60 or not 1 <= a.idle_seconds <= 600:
        ap.error("need 1 <= hold <= 60 and 1 <= idle-seconds <= 600")
    if a.out is None and not a.quick:
        a.out = str(REPO / "docs" / "benchmarks.md")
    return a


def _command(argv: Sequence[str]) -> str:
    """How to rerun this bench, naming no path of this machine (absolute paths lose their dirs)."""
    args = [Path(a).name if a.startswith("/") else a for a in argv]
    return shlex.join(["./dev", "bench", *args])


KEPT_SECTION = "\n## VIP groups"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = parse(args)
    if a.from_raw:
        meta, runs, idle, end = merge_raw([Path(x) for x in a.from_raw.split(",")])
        report = render(meta, runs, idle, end)
    else:
        if os.geteuid() != 0:
            print("the benchmark needs root (network namespaces)", file=sys.stderr)
            return 2
        keepalived.binary()  # fail early, before an hour of work, if it is missing
        cleanup_stale(PREFIX)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        raw = Path(a.raw or f"/tmp/hafailover-bench-{stamp}.jsonl")
        meta = {"command": _command(args), "started": datetime.now(UTC).isoformat(
                    timespec="seconds"), "versions": versions(), "repeats": a.repeats,
                "loss_minutes": a.loss_minutes, "loss_repeats": a.loss_repeats,
                "loss_sequential": True,
                "hold": a.hold, "idle_seconds": a.idle_seconds, "only": a.only,
                "note": a.note}
        rec = Recorder(raw, meta)
        _say(f"raw results: {raw}")
        t0 = time.monotonic()
        try:
            run_bench(a, rec)
        finally:
            end = {"wall_seconds": time.monotonic() - t0,
                   "finished": datetime.now(UTC).isoformat(timespec="seconds")}
            rec.close(end)
        report = render(meta, rec.runs, rec.idle, end)
    print(report)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # The hand-written sections measured by other commands (lab.bench_groups_daemon) stay.
        kept = out.read_text().partition(KEPT_SECTION)[1:] if out.exists() else ("", "")
        out.write_text(report.rstrip("\n") + "\n" + "".join(kept) if kept[0] else report)
        _say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
