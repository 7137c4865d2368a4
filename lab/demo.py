"""A failover walkthrough in network namespaces: `./dev demo` (root, under a minute).

Builds an isolated lab (3 or 5 nodes and a client on one bridge, no route out), runs the real
`hafailover run` daemons and a UDP echo on every node, and a client that asks the VIP every
10 ms. Then it kills the leader's host, shows who took over and how long the client went
unanswered, explains it with `hafailover events`, brings the host back and moves the VIP back
with `hafailover switchover`. Everything shown is measured in this run.

    python -m lab.demo [--nodes 3|5] [--keep] [--quiet]

Exit status: 0 every step worked, 1 a step failed (the message says which), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lab.cluster import VIP, VIP_CIDR, ClusterOptions, HaCluster
from lab.netns import Lab, LabError, LabProcess, cleanup_stale

if TYPE_CHECKING:
    from lab.probe import Gap, ProbeRun

PREFIX = "hfdemo"  # namespaces are hfdemo<pid>-node1, ...: the test looks for exactly these
STEPS = 8
KEEP_MAX_S = 600.0
WIDTH = 96


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
    from lab import probe

    lab.stop(proc)
    if proc.data is None or not proc.data.exists():
        raise DemoError(f"the client probe wrote no results: {proc.stderr.read_text()[-500:]}")
    return probe.load(proc.data)


def longest_gap(run: ProbeRun, lo: float, hi: float) -> Gap:
    """The longest time the client went without any reply between lo and hi."""
    from lab import probe

    gaps = probe.outages(run.records, lo, min(hi, run.end), min_ms=0.0)
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


def run_demo(lab: Lab, c: HaCluster, out: Out) -> list[Row]:
    rows: list[Row] = []
    n = len(lab.nodes)
    out.step(1, f"Build a {n}-node lab")
    opts = c.opts
    addrs = ", ".join(f"{x} {lab.address(x)}" for x in lab.nodes)
    out.result(f"namespaces {lab.name}-*: {addrs}; client {lab.address('client')}")
    out.why("Each node and the client get their own network namespace on one bridge: a real "
            "L2 network with real ARP, but nothing connects it to this machine's network.")

    out.step(2, "Start the hafailover daemons and the echo service")
    t0 = time.monotonic()
    c.start_all()
    echo = lab.start_echo()
    first, _ = c.wait_for_holder(15.0)
    st = c.status(first)
    out.result(f"{first} was elected leader (term {st['term']}) and holds the VIP {VIP}, "
               f"{time.monotonic() - t0:.1f} s after the daemons were started")
    out.why(f"The nodes elect one leader by majority vote ({n // 2 + 1} of {n}); only the "
            "leader holds the VIP.")
    out.why(f"Settings: heartbeat {opts.heartbeat}, failover_timeout {opts.failover}, "
            f"preempt {'on' if opts.preempt else 'off'}. Every node runs a UDP echo that "
            "answers with its name.")

    out.step(3, "Start the client and look at the cluster")
    probe1 = lab.start_probe(VIP, duration=60.0, interval=0.01)
    out.result(f"the client sends a UDP probe to {VIP} every 10 ms; each reply names the node "
               "that answered")
    args: tuple[str, ...] = ("status",)
    r = c.cli(first, *args)
    deadline = time.monotonic() + 10.0
    while r.returncode in (1, 2) and time.monotonic() < deadline:  # still settling
        time.sleep(0.2)
        r = c.cli(first, *args)
    if r.returncode == 3:
        raise DemoError(f"`hafailover status` cannot reach {first}'s daemon: {r.stderr.strip()}")
    out.transcript(first, args, r)
    out.why("`hafailover status` is what an operator runs on any node: leader, VIP holder, "
            "quorum, each node's health.")
    time.sleep(1.0)

    out.step(4, f"Kill the leader's host ({first})")
    t_fault, wall_fault = time.monotonic(), time.time()
    lab.link_down(first)
    lab.kill(c.procs[first])
    lab.kill(echo[first])  # the service dies with its host
    out.result(f"{first}: network link down and every process SIGKILLed, like a power cut")
    out.why(f"The others stop hearing {first}'s heartbeats; after failover_timeout "
            f"({opts.failover}) they elect a new leader, which brings the VIP up and announces "
            "it with gratuitous ARP.")
    try:
        new, t_new = c.wait_for_holder(10.0, exclude=(first,))
    except TimeoutError as e:
        raise DemoError(f"no node took over the VIP after {first} died: {e}") from e
    time.sleep(1.0)
    run1 = stop_probe(lab, probe1)

    out.step(5, "Who took over, and what the client saw")
    out.result(f"new VIP holder: {new}, {(t_new - t_fault) * 1000:.0f} ms after the kill "
               "(seen in its interface addresses)")
    g1 = longest_gap(run1, t_fault - 0.2, run1.end)
    if g1.after != new:
        raise DemoError(f"the client never got a reply from {new} after the takeover "
                        f"(longest gap {g1.ms:.0f} ms, then {g1.after})")
    out.result(f"client outage: {describe(g1)}")
    out.why("The outage is the longest time the client went without any answer, measured "
            "from its own records.")
    rows.append(Row(f"host death of {first}", f"{first} -> {new}", f"{g1.ms:.0f} ms"))

    out.step(6, f"Why: the event history on {new}")
    args = ("events",)
    r = c.cli(new, *args)
    if r.returncode != 0:
        raise DemoError(f"`hafailover events` on {new} failed: {(r.stdout + r.stderr).strip()}")
    out.transcript(new, args, r, bold=lambda line: (wall_ms(line.split(" ", 1)[0], wall_fault)
                                                    or -1.0) >= 0)
    after = {e["reason"]: wall_ms(e["time"], wall_fault) for e in c.events(new)
             if (wall_ms(e["time"], wall_fault) or -1.0) >= 0}
    if "lease-acquired" not in after:
        raise DemoError(f"{new}'s events show no lease-acquired after the fault: {r.stdout}")
    marks = ", ".join(f"{k} +{v:.0f} ms" for k, v in after.items() if v is not None)
    out.result(f"since the kill: {marks}")
    out.why(f"leader-lost: {new} had heard no heartbeat for failover_timeout (counted from the "
            "last one, which came shortly before the kill); prevote-won and elected: a majority "
            "agreed; lease-acquired: the majority's lease lets it hold the VIP.")

    out.step(7, f"Bring {first} back")
    probe2 = lab.start_probe(VIP, duration=60.0, interval=0.01)
    t_back = time.monotonic()
    # A rebooted host comes up without its old addresses; the namespace kept the VIP.
    lab.ip(first, "addr", "del", VIP_CIDR, "dev", "eth0", check=False)
    lab.link_up(first)
    lab.start_echo(nodes=[first])
    c.start(first)
    c.wait_ready(first, 15.0)

    def rejoined() -> bool:
        me, lead = c.try_status(first), c.try_status(new)
        peers: list[dict[str, Any]] = (lead or {}).get("nodes", [])
        peer = next((p for p in peers if p["name"] == first), {})
        return (me is not None and me["role"] == "follower" and me["leader"] == new
                and peer.get("reachable") is True and peer.get("healthy") is True)

    wait_until(f"{first} rejoining as a healthy follower of {new}", 10.0, rejoined)
    holders = c.holders()
    if holders != [new]:
        raise DemoError(f"after {first} rejoined the VIP is on {holders}, expected only {new}")
    out.result(f"{first} is back as a healthy follower of {new}; {new} keeps the VIP")
    out.why("With preempt off (the default) a returning node never takes the VIP back by "
            "itself: no second outage.")
    out.why("Moving it back is the operator's choice, at a quiet moment: a switchover.")

    out.step(8, f"Switch the VIP back to {first}")
    time.sleep(0.5)
    t_switch = time.monotonic()
    args = ("switchover", "--to", first)
    r = c.cli(new, *args)
    out.transcript(new, args, r)
    if r.returncode != 0:
        raise DemoError(f"`hafailover switchover --to {first}` exited {r.returncode}: "
                        f"{(r.stdout + r.stderr).strip()}")
    holder, _ = c.wait_for_holder(5.0, exclude=(new,))
    if holder != first:
        raise DemoError(f"after the switchover the VIP is on {holder}, not {first}")
    time.sleep(1.0)
    run2 = stop_probe(lab, probe2)
    g_back = longest_gap(run2, t_back, t_switch)
    g2 = longest_gap(run2, t_switch, run2.end)
    if g2.after != first:
        raise DemoError(f"the client got no reply from {first} after the switchover")
    took = re.search(r"took (\d+) ms", r.stdout)
    out.result(f"client outage: {describe(g2)}")
    out.why("A planned handover: the leader drops the VIP and tells the target to stand at "
            "once, without waiting out failover_timeout.")
    rows.append(Row(f"{first} rejoins (preempt off)", f"{new} (stays)", f"{g_back.ms:.0f} ms"))
    rows.append(Row(f"switchover --to {first}", f"{new} -> {first}", f"{g2.ms:.0f} ms" + (
        f" (CLI: {took.group(1)} ms)" if took else "")))
    return rows


def summary(rows: list[Row], out: Out) -> None:
    head = Row("EVENT", "VIP HOLDER", "CLIENT OUTAGE (longest gap)")
    w1 = max(len(r.fault) for r in [head, *rows]) + 3
    w2 = max(len(r.holder) for r in [head, *rows]) + 3
    print("\n" + out.paint("1", "Summary"))
    for r in [head, *rows]:
        print(f"  {r.fault:<{w1}}{r.holder:<{w2}}{r.outage}", flush=True)
    out.why("The client probes every 10 ms, so a longest gap of 10-20 ms means it missed no "
            "reply at all.")


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
            c = HaCluster(lab, ClusterOptions())
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
