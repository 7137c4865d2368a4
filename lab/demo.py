"""An active/active walkthrough in network namespaces: `./dev demo` (root, under a minute).

Builds an isolated lab (3 or 5 nodes and a client on one bridge, no route out) and runs the
real `hafailover run` daemons with two VIP groups: web (preferring node1) and db (preferring
node2), and a UDP echo on every node. Two clients ask the web and the db VIP every 10 ms. Then
it kills node1's host: only web moves, and the db client loses nothing. node1 comes back: web
returns to it after preempt_delay, db does not move. Everything shown is measured in this run.

    python -m lab.demo [--nodes 3|5] [--keep] [--quiet]

Exit status: 0 every step worked, 1 a step failed (the message says which), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from lab import echo as echo_mod
from lab import probe as probe_mod
from lab.cluster import ClusterOptions, GroupSpec, HaCluster, web_db_groups
from lab.netns import Lab, LabError, LabProcess, cleanup_stale
from lab.probe import Gap, ProbeRun

PREFIX = "hfdemo"  # namespaces are hfdemo<pid>-node1, ...: the test looks for exactly these
STEPS = 7
KEEP_MAX_S = 600.0
WIDTH = 96
PREEMPT_DELAY = "3s"


class DemoError(Exception):
    """A step did not produce what it should; the message says what was seen instead."""


@dataclass
class Row:
    fault: str
    holder: str
    outage: str


class Out:
    """Step headers, one-line explanations (hidden by --quiet), results and CLI transcripts."""

    def __init__(self, quiet: bool, colour: bool) -> None:
        self.quiet, self.colour = quiet, colour
        self.where = "start-up"

    def paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def step(self, n: int, title: str) -> None:
        self.where = f"step {n}/{STEPS} ({title})"
        print(("\n" if n > 1 else "") + self.paint("1;34", f"[{n}/{STEPS}] {title}"), flush=True)

    def why(self, text: str) -> None:
        if not self.quiet:
            print(textwrap.fill(text, WIDTH, initial_indent=" " * 5, break_on_hyphens=False,
                                subsequent_indent=" " * 5), flush=True)

    def result(self, text: str) -> None:
        lines = textwrap.wrap(text, WIDTH - 5, break_on_hyphens=False)
        print(f"  {self.paint('1;32', '=>')} " + "\n     ".join(lines), flush=True)

    def transcript(self, node: str, args: Sequence[str], r: subprocess.CompletedProcess[str],
                   bold: Callable[[str], bool] = lambda _line: False) -> None:
        if self.quiet:
            return
        print(self.paint("36", f"    $ hafailover {' '.join(args)}") + f"    (on {node})")
        for line in (r.stdout + r.stderr).rstrip().splitlines():
            print("      " + (self.paint("1", line) if bold(line) else line))
        sys.stdout.flush()


def wait_until(what: str, timeout: float, pred: Callable[[], bool], poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise DemoError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)


def stop_probe(lab: Lab, proc: LabProcess) -> ProbeRun:
    lab.stop(proc)
    if proc.data is None or not proc.data.exists():
        raise DemoError(f"the client probe wrote no results: {proc.stderr.read_text()[-500:]}")
    return probe_mod.load(proc.data)


def longest_gap(run: ProbeRun, lo: float, hi: float) -> Gap:
    """The longest time the client went without any reply between lo and hi."""
    gaps = probe_mod.outages(run.records, lo, min(hi, run.end), min_ms=0.0)
    if not gaps:
        raise DemoError("the client probe recorded nothing in the window")
    return max(gaps, key=lambda g: g.ms)


def describe(g: Gap) -> str:
    moved = f"last reply from {g.before}, next from {g.after}" if g.before != g.after else (
        f"replies from {g.after} before and after")
    return f"{g.ms:.0f} ms ({g.lost} probes unanswered; {moved})"


def wall_ms(iso: str, since: float) -> float | None:
    """ISO timestamp (as in the event history) minus a time.time() value, in ms."""
    try:
        return (datetime.fromisoformat(iso).timestamp() - since) * 1000.0
    except ValueError:
        return None


def netns_of(lab_name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"{lab_name}-")]


def hold(lab: Lab, c: HaCluster, out: Out) -> None:
    """--keep: leave everything running for inspection; Enter (or 10 minutes) ends it."""
    py = f"{sys.executable} -m hafailover"
    print("\n" + out.paint("1", "The lab is still running. To look around (as root, in "
                            "another shell):"))
    print(f"    ip netns list | grep {lab.name}")
    for n in lab.nodes:
        print(f"    {py} --socket {c.socket(n)} status      # {n}")
    first = lab.nodes[0]
    print(f"    ip netns exec {lab.ns(first)} ip addr show eth0      # is the VIP on {first}?")
    print(f"    ls {lab.workdir}      # daemon logs (*.err), configs, probe results")
    if sys.stdin is not None and sys.stdin.isatty():
        print(f"Press Enter to clean up (automatic after {KEEP_MAX_S / 60:.0f} minutes).",
              flush=True)
        if select.select([sys.stdin], [], [], KEEP_MAX_S)[0]:
            sys.stdin.readline()
    else:
        print(f"Cleaning up in {KEEP_MAX_S / 60:.0f} minutes (Ctrl-C or SIGTERM: now).",
              flush=True)
        time.sleep(KEEP_MAX_S)


def lost_in(run: ProbeRun, lo: float) -> int:
    """Probes sent from lo on that never got a reply."""
    return sum(1 for r in run.records if r.recv is None and r.send >= lo)


def group_events(c: HaCluster, node: str, group: str, since: float) -> dict[str, float]:
    """reason -> ms after `since` (a time.time()) of node's decisions for group since then."""
    out: dict[str, float] = {}
    for e in c.events(node, limit=50):
        ms = wall_ms(e.get("time", ""), since)
        if ms is not None and ms >= 0 and e.get("group", group) == group:
            out.setdefault(e["reason"], ms)
    return out


def run_demo(lab: Lab, c: HaCluster, out: Out) -> list[Row]:
    rows: list[Row] = []
    n = len(lab.nodes)
    groups: list[GroupSpec] = c.opts.groups or []
    web, db = groups[0], groups[1]
    out.step(1, f"Build a {n}-node lab")
    addrs = ", ".join(f"{x} {lab.address(x)}" for x in lab.nodes)
    out.result(f"namespaces {lab.name}-*: {addrs}; client {lab.address('client')}")
    out.why("Each node and the client get their own network namespace on one bridge: a real "
            "L2 network with real ARP, but nothing connects it to this machine's network.")
    out.why(f"Two VIP groups, each elected on its own: web ({web.vip}) prefers node1, db "
            f"({db.vip}) prefers node2; the other nodes are their backups. Preempt is on with "
            f"a {PREEMPT_DELAY} delay.")

    out.step(2, "Start the hafailover daemons and the echo service")
    t0 = time.monotonic()
    c.start_all()
    echo = echo_mod.start(lab)
    try:
        c.wait_groups(lambda h: h == {"web": ["node1"], "db": ["node2"]}, timeout=15.0)
    except TimeoutError as e:
        raise DemoError(f"the groups did not settle on their preferred nodes: {e}") from e
    out.result(f"active/active: web on node1, db on node2, {time.monotonic() - t0:.1f} s after "
               "the daemons were started")
    out.why("On a cold start each group waits a moment for its best-ranked node, so priority "
            "decides the first holders without a preemption hop.")

    out.step(3, "Start two clients and look at the cluster")
    p_web = probe_mod.start(lab, web.vip, duration=60.0, interval=0.01)
    p_db = probe_mod.start(lab, db.vip, duration=60.0, interval=0.01)
    out.result(f"one client probes {web.vip} (web), another {db.vip} (db), every 10 ms; each "
               "reply names the node that answered")
    args: tuple[str, ...] = ("status",)
    r = c.cli("node1", *args)
    deadline = time.monotonic() + 10.0
    while r.returncode in (1, 2) and time.monotonic() < deadline:  # still settling
        time.sleep(0.2)
        r = c.cli("node1", *args)
    if r.returncode == 3:
        raise DemoError(f"`hafailover status` cannot reach node1's daemon: {r.stderr.strip()}")
    out.transcript("node1", args, r)
    out.why("`hafailover status` shows each group's holder and term, and every node's health.")
    time.sleep(1.0)

    out.step(4, "Kill node1's host (it holds web)")
    t_fault, wall_fault = time.monotonic(), time.time()
    c.kill_host("node1", echo)
    out.result("node1: network link down and every process SIGKILLed, like a power cut")
    out.why(f"The others stop hearing node1; after failover_timeout ({c.opts.failover}) web "
            "elects a new holder. db's holder, node2, is alive: its group has nothing to do.")
    try:
        held, t_new = c.wait_groups(lambda h: len(h["web"]) == 1, timeout=10.0, poll=0.01,
                                    exclude=("node1",))
    except TimeoutError as e:
        raise DemoError(f"no node took over web after node1 died: {e}") from e
    new = held["web"][0]
    time.sleep(1.0)
    run_web, run_db = stop_probe(lab, p_web), stop_probe(lab, p_db)

    out.step(5, "What each client saw")
    g1 = longest_gap(run_web, t_fault - 0.2, run_web.end)
    if g1.after != new:
        raise DemoError(f"the web client never got a reply from {new} after the takeover")
    db_lost = lost_in(run_db, t_fault - 0.2)
    g_db = longest_gap(run_db, t_fault - 0.2, run_db.end)
    holders = c.group_holders()
    if holders["db"] != ["node2"]:
        raise DemoError(f"db moved although its holder lives: {holders['db']}")
    out.result(f"web: now on {new}, {(t_new - t_fault) * 1000:.0f} ms after the kill; web "
               f"client outage {describe(g1)}")
    out.result(f"db: still on node2; the db client lost {db_lost} probes (longest gap "
               f"{g_db.ms:.0f} ms)")
    marks = ", ".join(f"{k} +{v:.0f} ms"
                      for k, v in group_events(c, new, "web", wall_fault).items())
    out.result(f"{new}'s decisions for web since the kill: {marks or 'none recorded'}")
    rows.append(Row("host death of node1", f"web node1 -> {new}", f"{g1.ms:.0f} ms"))
    rows.append(Row("host death of node1", "db node2 (stays)", f"{db_lost} lost"))

    out.step(6, "Bring node1 back")
    p_web = probe_mod.start(lab, web.vip, duration=60.0, interval=0.01)
    p_db = probe_mod.start(lab, db.vip, duration=60.0, interval=0.01)
    t_back = c.revive_host("node1", echo)
    t_ready = time.monotonic()
    out.result(f"node1's links are up and its daemon runs again ({t_ready - t_back:.1f} s to "
               "start)")
    out.why(f"web prefers node1: once node1 has been healthy for preempt_delay "
            f"({PREEMPT_DELAY}), {new} hands web back in a planned handover. db's holder is "
            "already its preferred node: it stays.")
    try:
        _, t_ret = c.wait_groups(lambda h: h["web"] == ["node1"], timeout=20.0, poll=0.02)
    except TimeoutError as e:
        raise DemoError(f"web did not return to node1: {e}") from e
    time.sleep(1.0)
    run_web, run_db = stop_probe(lab, p_web), stop_probe(lab, p_db)
    g2 = longest_gap(run_web, t_ret - 1.0, run_web.end)
    db_lost2 = lost_in(run_db, t_back)
    holders = c.group_holders()
    if holders != {"web": ["node1"], "db": ["node2"]}:
        raise DemoError(f"after node1 came back the holders are {holders}")
    out.result(f"web back on node1 {t_ret - t_ready:.1f} s after node1's daemon was up; web "
               f"client outage {describe(g2)}")
    out.result(f"db stayed on node2; the db client lost {db_lost2} probes")
    rows.append(Row(f"node1 back (preempt_delay {PREEMPT_DELAY})", f"web {new} -> node1",
                    f"{g2.ms:.0f} ms"))
    rows.append(Row(f"node1 back (preempt_delay {PREEMPT_DELAY})", "db node2 (stays)",
                    f"{db_lost2} lost"))

    out.step(7, "Events of web on node1")
    args = ("events", "--group", "web", "-n", "6")
    r = c.cli("node1", *args)
    if r.returncode != 0:
        raise DemoError(f"`hafailover {' '.join(args)}` failed: {(r.stdout + r.stderr).strip()}")
    out.transcript("node1", args, r)
    return rows


def summary(rows: list[Row], out: Out) -> None:
    head = Row("EVENT", "GROUP HOLDER", "ITS CLIENT (longest gap or lost probes)")
    w1 = max(len(r.fault) for r in [head, *rows]) + 3
    w2 = max(len(r.holder) for r in [head, *rows]) + 3
    print("\n" + out.paint("1", "Summary"))
    for r in [head, *rows]:
        print(f"  {r.fault:<{w1}}{r.holder:<{w2}}{r.outage}", flush=True)
    out.why("The clients probe every 10 ms: a moving group's client sees one gap; the other "
            "group's client loses nothing.")


def preflight() -> str:
    if os.geteuid() != 0:
        return "the demo needs root (it creates network namespaces): sudo ./dev demo"
    missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {' '.join(missing)} (Debian: apt-get install iproute2 nftables)"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev demo", description=__doc__.splitlines()[0]
                                 if __doc__ else None)
    ap.add_argument("--nodes", type=int, choices=(3, 5), default=3, help="cluster size")
    ap.add_argument("--keep", action="store_true",
                    help="leave the lab running at the end (until Enter, at most 10 minutes)")
    ap.add_argument("--quiet", action="store_true", help="results only, no explanations")
    a = ap.parse_args(argv)
    out = Out(a.quiet, sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    if problem := preflight():
        print(f"demo: {problem}", file=sys.stderr)
        return 1
    started = time.monotonic()
    name = ""
    try:
        cleanup_stale(PREFIX)  # only namespaces of earlier demos whose process is gone
        with Lab(a.nodes, PREFIX) as lab:
            name = lab.name
            c = HaCluster(lab, ClusterOptions(groups=web_db_groups(PREEMPT_DELAY)))
            summary(run_demo(lab, c, out), out)
            if a.keep:
                hold(lab, c, out)
        if left := netns_of(name):
            raise DemoError(f"namespaces left after clean-up: {' '.join(left)}")
    except KeyboardInterrupt:
        print("\ndemo: interrupted; the lab was removed", file=sys.stderr)
        return 130
    except (DemoError, LabError, RuntimeError, TimeoutError, OSError, KeyError, ValueError,
            subprocess.SubprocessError) as e:
        sys.stdout.flush()
        left = netns_of(name) if name else []
        lines = str(e).splitlines() or [type(e).__name__]
        if len(lines) > 16:  # e.g. a daemon's traceback: its end says what went wrong
            lines = [lines[0], "  ...", *lines[-12:]]
        print(out.paint("1;31", f"\ndemo FAILED at {out.where}: " + "\n".join(lines)),
              file=sys.stderr)
        print("the lab was removed" if not left else f"namespaces left: {' '.join(left)}",
              file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f} s; lab removed, no namespaces left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
