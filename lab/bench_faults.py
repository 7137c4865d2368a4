"""One benchmark run: a fresh lab, one system's three daemons, one fault, the measurements.

Used by `lab.bench`. The same lab, client and faults serve keepalived and
hafailover; `Daemons` hides the difference (how they start, where a check's mode file lives,
how a switchover is asked for, when a node decided it was unhealthy).

Times are time.monotonic() everywhere (shared by all namespaces): the lab's fault calls, the
prober's send/receive times and the VIP monitors' transitions line up without conversion.
hafailover's event history is stamped with wall-clock time and is mapped onto the monotonic
clock with an offset sampled here (to within 1 ms).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod
from lab.cluster import ClusterOptions, HaCluster
from lab.keepalived import KeepalivedCluster, KeepalivedOptions
from lab.monitor import HolderTimeline, Interval
from lab.netns import Lab, LabProcess

VIP = "10.213.0.100"
PRE = 1.5  # the prober runs this long before the fault (the outage window starts at fault-1s)
POST = 5.0  # ... and this long after the heal (or after the fault when nothing is healed)
LOSS_PERCENT = 10.0
# A send gap this long at the 10 ms real-time prober is a VM stall (the hypervisor ran nothing).
STALL_S = 0.03
# A stall this long can make a daemon react (hffast's loop-lag limit is 150 ms); a move that
# follows one within STALL_LOOKBACK is counted as a reaction to it.
BIG_STALL_S = 0.15
STALL_LOOKBACK = 2.0
FAULTS = ("death", "partition", "freeze", "hang", "sigterm", "switchover", "loss")
Kind = Literal["keepalived", "hafailover"]
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BenchConfig:
    key: str
    label: str
    kind: Kind
    advert_int: float = 1.0  # keepalived
    vrrp_version: int = 2  # keepalived
    heartbeat: str = "100ms"  # hafailover
    failover: str = "600ms"  # hafailover

    def supports(self, fault: str) -> bool:
        return not (fault == "switchover" and self.kind == "keepalived")


# The checks are the same everywhere: interval 1 s, timeout 2 s, fall 2, rise 2.
CONFIGS: dict[str, BenchConfig] = {c.key: c for c in (
    BenchConfig("ka1", "keepalived advert_int 1 (VRRPv2)", "keepalived", 1.0, 2),
    BenchConfig("ka01", "keepalived advert_int 0.1 (VRRPv3)", "keepalived", 0.1, 3),
    BenchConfig("hf", "hafailover defaults (100 ms / 600 ms)", "hafailover"),
    BenchConfig("hffast", "hafailover fast (50 ms / 300 ms)", "hafailover",
                heartbeat="50ms", failover="300ms"),
)}


class Daemons:
    """The three daemons of one configuration in one lab."""

    def __init__(self, cfg: BenchConfig, lab: Lab) -> None:
        self.cfg = cfg
        self.lab = lab
        self.ka: KeepalivedCluster | None = None
        self.hf: HaCluster | None = None
        if cfg.kind == "keepalived":
            self.ka = KeepalivedCluster(lab, KeepalivedOptions(
                advert_int=cfg.advert_int, vrrp_version=cfg.vrrp_version,
                check_interval=1.0, check_timeout=2.0, check_fall=2, check_rise=2))
        else:
            self.hf = HaCluster(lab, ClusterOptions(
                heartbeat=cfg.heartbeat, failover=cfg.failover, check_interval="1s",
                check_timeout="2s", check_fall=2, check_rise=2))

    @property
    def procs(self) -> dict[str, LabProcess]:
        return self.ka.procs if self.ka is not None else self._hf().procs

    def _hf(self) -> HaCluster:
        assert self.hf is not None
        return self.hf

    def start_all(self) -> None:
        if self.ka is not None:
            self.ka.start_all()
        else:
            self._hf().start_all()

    def set_check(self, node: str, mode: str) -> float:
        return self.ka.set_check(node, mode) if self.ka is not None else self._hf().set_check(
            node, mode)

    def switchover(self, node: str) -> dict[str, object]:
        """What `hafailover switchover` asks, sent from this process: starting the CLI's
        interpreter would compete for the CPUs with the client being measured."""
        from hafailover.control.client import ControlClient

        return ControlClient(self._hf().socket(node), timeout=5.0).switchover()

    def decisions(self, node: str) -> list[tuple[float, dict[str, Any]]]:
        """hafailover: node's recorded decisions as (monotonic time, entry)."""
        if self.hf is None:
            return []
        path = self.hf.node_dir(node) / "state" / "events.jsonl"
        offset = time.time() - time.monotonic()
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                e = json.loads(line)
                out.append((datetime.fromisoformat(e["time"]).timestamp() - offset, e))
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
        return out

    def unhealthy_at(self, node: str, after: float) -> float | None:
        """hafailover: when node recorded its 'unhealthy' decision (monotonic), if it did."""
        return next((t for t, e in self.decisions(node)
                     if e.get("reason") == "unhealthy" and t >= after - 0.5), None)

    def pids(self, node: str) -> list[int]:
        """The daemon's processes on node: the leader and its children running the same
        program (keepalived's VRRP child; not check scripts)."""
        root = self.procs[node].pid
        return [root, *same_program_children(root)]


def same_program_children(pid: int) -> list[int]:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return []
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and os.readlink(
                    f"/proc/{d}/exe") == exe:
                out.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return out


OBSERVER_PRIORITY = 10  # SCHED_FIFO; the daemons run at normal priority


def observe_in_realtime(procs: Iterable[LabProcess]) -> None:
    """Give the lab's observers (prober, echo services, VIP monitors) a real-time priority, so
    that a busy machine delays the daemons under test but not the measurement. They sleep
    almost all the time (a few % of a core together), and the kernel's RT throttling still
    bounds them."""
    for p in procs:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(p.pid, os.SCHED_FIFO, os.sched_param(OBSERVER_PRIORITY))


def wait_stable_holder(lab: Lab, settle: float = 1.0, timeout: float = 30.0) -> str:
    """Until one node has held the VIP, alone, for `settle` seconds; returns it."""
    deadline = time.monotonic() + timeout
    last, since = None, 0.0
    while time.monotonic() < deadline:
        held = lab.vip_holders(VIP)
        now = time.monotonic()
        if len(held) == 1:
            if held[0] != last:
                last, since = held[0], now
            elif now - since >= settle:
                return held[0]
        else:
            last = None
        time.sleep(0.05)
    raise TimeoutError(f"no stable VIP holder in {timeout}s (now: {lab.vip_holders(VIP)})")


@dataclass
class RunResult:
    config: str
    fault: str
    repeat: int
    holder: str = ""
    outage_ms: float | None = None
    outage_clipped: bool = False  # no reply until the window's end: the outage is at least this
    dual_ms: float | None = None
    after_heal_ms: float | None = None
    after_heal_clipped: bool = False
    dual_after_heal_ms: float | None = None  # dual time from the heal/resume on
    stale_gone_ms: float | None = None  # freeze: heal -> the resumed node's VIP removal
    moves: int | None = None  # holder changes (a different node acquires the VIP)
    moves_after_stall: int | None = None  # ... within STALL_LOOKBACK after a VM stall
    drops: int | None = None  # times the VIP left a node (including moves)
    verdict_after_fault_ms: float | None = None  # hang: fault -> unhealthy verdict
    failover_after_verdict_ms: float | None = None  # hang: verdict -> new holder's VIP add
    takeover_ms: float | None = None  # fault -> another node's VIP add
    lost: int | None = None  # probes without reply in the outage window
    sent: int | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _longest_gap(records: list[probe_mod.ProbeRecord], start: float, end: float,
                 notes: dict[str, Any] | None = None, name: str = "") -> tuple[float, bool]:
    gaps = probe_mod.outages(records, start, end, min_ms=0.0)
    if not gaps:
        return 0.0, False
    g = max(gaps, key=lambda g: g.ms)
    if notes is not None:
        # Enough to tell lost probes (lost > 0) from a stalled client (lost == 0).
        notes[name] = {"at_ms": round(1000 * (g.start - start)), "ms": round(g.ms, 1),
                       "before": g.before, "after": g.after, "lost": g.lost,
                       "start": g.start, "end": g.end}
    return g.ms, g.after is None and g.end >= end - 1e-6


def _acquisitions(tl: HolderTimeline, start: float, end: float) -> list[tuple[float, str]]:
    return [(t, n) for t, n, present in tl.merged()
            if present and start <= t <= end and t > tl[n].start]


def _releases(tl: HolderTimeline, node: str | None, start: float,
              end: float) -> list[float]:
    return [t for t, n, present in tl.merged()
            if not present and (node is None or n == node) and start <= t <= end]


def _moves(tl: HolderTimeline, holder: str, start: float,
           end: float) -> list[tuple[float, str]]:
    """(t, node) each time a node other than the previous holder added the VIP."""
    out, last = [], holder
    for t, n in _acquisitions(tl, start, end):
        if n != last:
            out.append((t, n))
            last = n
    return out


def stalls(records: list[probe_mod.ProbeRecord], start: float, end: float,
           min_gap: float = STALL_S) -> list[Interval]:
    """When the real-time prober sent nothing for longer than min_gap (it sends every 10 ms):
    the whole VM stood still (steal), so every process was late, the daemons included."""
    sends = sorted(r.send for r in records if start <= r.send <= end)
    return [(a, b) for a, b in itertools.pairwise(sends) if b - a > min_gap]


def _steal_ticks() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) if len(fields) > 8 else 0


def run_fault(cfg: BenchConfig, fault: str, lab: Lab, repeat: int, *, hold: float,
              loss_seconds: float, log: Callable[[str], None] = print) -> RunResult:
    """Start cfg's daemons in lab (fresh, built by the caller), inject fault, measure."""
    res = RunResult(cfg.key, fault, repeat)
    began = time.monotonic()
    steal0 = _steal_ticks()
    try:
        _run(cfg, fault, lab, res, hold, loss_seconds)
    except Exception as e:  # one bad run must not sink an hour of benchmark
        text = f"{type(e).__name__}: {e}"
        res.error = text if len(text) <= 2500 else f"{text[:500]} [...] {text[-2000:]}"
        log(f"  ERROR {cfg.key}/{fault}#{repeat}: {res.error}")
    res.seconds = time.monotonic() - began
    cpus = os.cpu_count() or 1
    res.notes["steal_pct"] = round(
        100 * (_steal_ticks() - steal0) / _TICK / max(res.seconds * cpus, 1e-9), 2)
    return res


def _run(cfg: BenchConfig, fault: str, lab: Lab, res: RunResult, hold: float,
         loss_seconds: float) -> None:
    d = Daemons(cfg, lab)
    observe_in_realtime(echo_mod.start(lab).values())
    d.start_all()
    holder = res.holder = wait_stable_holder(lab)
    observe_in_realtime(monitor_mod.start(lab, VIP).values())
    span = loss_seconds if fault == "loss" else hold
    prober = probe_mod.start(lab, VIP, duration=PRE + span + POST + 30)
    observe_in_realtime([prober])
    time.sleep(PRE)
    proc = d.procs[holder]
    heal: float | None = None
    exclude: dict[str, list[Interval]] = {}
    if fault == "death":
        t = lab.link_down(holder)
        lab.kill(proc)
        exclude[holder] = [(t, math.inf)]  # a dead host's address is on a link that is down
    elif fault == "partition":
        t = lab.partition(holder)
        time.sleep(hold)
        heal = lab.heal(holder)
    elif fault == "freeze":
        t = lab.freeze(proc)
        time.sleep(hold)
        # Taken before SIGCONT: the resumed daemon can drop its VIP (~0.5 ms) before this
        # thread gets the CPU back to note the time.
        heal = time.monotonic()
        lab.thaw(proc)
    elif fault == "hang":
        t = d.set_check(holder, "hang")
        time.sleep(hold)
        heal = d.set_check(holder, "ok")
    elif fault == "sigterm":
        t = lab.kill(proc, signal.SIGTERM)
    elif fault == "switchover":
        t = time.monotonic()
        res.notes["switchover"] = d.switchover(holder)
    elif fault == "loss":
        t = lab.loss(LOSS_PERCENT)
        time.sleep(loss_seconds)
        heal = lab.clear_loss()
    else:
        raise ValueError(f"unknown fault {fault!r}")
    end = (heal if heal is not None else t) + POST
    time.sleep(max(0.0, end - time.monotonic()) + 0.3)
    lab.stop(prober)
    assert prober.data is not None
    run = probe_mod.load(prober.data)
    records = run.records
    res.notes["prober"] = {k: run.meta.get(k) for k in (
        "skipped_slots", "send_errors", "send_lag_p99_ms", "send_lag_max_ms")}
    res.notes["load1"] = round(os.getloadavg()[0], 2)
    tl = monitor_mod.timeline(lab, VIP)
    _measure(res, d, tl, records, fault, holder, t, heal, end, exclude)
    if fault == "loss" and d.hf is not None:
        # Why the VIP moved: every node's decisions during the loss window (the labs' logs
        # are gone with their workdirs).
        seen = sorted([(at, n, e) for n in lab.nodes for at, e in d.decisions(n)
                       if t <= at <= end], key=lambda x: (x[0], x[1]))
        res.notes["decisions"] = [{"at_ms": round(1000 * (at - t)), "node": n,
                                   "reason": e.get("reason"),
                                   "message": str(e.get("message", ""))[:160]}
                                  for at, n, e in seen][:300]


def _measure(res: RunResult, d: Daemons, tl: HolderTimeline,
             records: list[probe_mod.ProbeRecord], fault: str, holder: str, t: float,
             heal: float | None, end: float, exclude: dict[str, list[Interval]]) -> None:
    lo = t - 1.0
    res.outage_ms, res.outage_clipped = _longest_gap(records, lo, end, res.notes, "gap")
    res.notes["gaps"] = [{"at_ms": round(1000 * (g.start - t)), "ms": round(g.ms, 1),
                          "before": g.before, "after": g.after, "lost": g.lost}
                         for g in probe_mod.outages(records, lo, end)][:30]
    window = [r for r in records if lo <= r.send <= end]
    res.sent = len(window)
    res.lost = sum(1 for r in window if r.recv is None)
    res.dual_ms = tl.dual_holder_ms(exclude, lo, end)
    # Holder changes: during the loss window for loss, else the whole outage window.
    m0, m1 = (t, heal if heal is not None else end) if fault == "loss" else (lo, end)
    moves = _moves(tl, holder, m0, m1)
    res.moves = len(moves)
    st = stalls(records, lo, end)
    res.notes["stalls"] = [{"at_ms": round(1000 * (a - t)), "ms": round(1000 * (b - a))}
                           for a, b in st][:100]
    big = [(a, b) for a, b in st if b - a >= BIG_STALL_S]
    # A move right after a VM stall (one ending within STALL_LOOKBACK before it) is the
    # daemons' reaction to the stall; the others are the fault's own doing.
    after_stall = [m for m, _ in moves if any(m - STALL_LOOKBACK <= b <= m for _, b in big)]
    res.moves_after_stall = len(after_stall)
    res.notes["moves"] = [{"at_ms": round(1000 * (m - t)), "to": n,
                           "after_stall": m in after_stall} for m, n in moves][:50]
    res.drops = len(_releases(tl, None, m0, m1))
    takeover = next((a for a, n in _acquisitions(tl, t, end) if n != holder), None)
    res.takeover_ms = None if takeover is None else 1000 * (takeover - t)
    if heal is not None and fault != "loss":
        res.after_heal_ms, res.after_heal_clipped = _longest_gap(
            records, heal, heal + POST, res.notes, "after_heal_gap")
        res.dual_after_heal_ms = tl.dual_holder_ms(exclude, heal, end)
    if fault == "freeze" and heal is not None:
        held_at_heal = holder in tl.holders_at(heal)
        gone = next(iter(_releases(tl, holder, heal, end)), None)
        if held_at_heal and gone is not None:
            res.stale_gone_ms = 1000 * (gone - heal)
        res.notes["resumed_node_kept_vip"] = held_at_heal and gone is None
    if fault == "hang":
        # hafailover: its 'unhealthy' decision. keepalived logs with 1 s resolution only, but a
        # failing track_script puts the instance into FAULT, which drops the VIP at once: the
        # holder's VIP removal stands in for its verdict.
        verdict = d.unhealthy_at(holder, t)
        if verdict is None and d.ka is not None:
            verdict = next(iter(_releases(tl, holder, t, end)), None)
            res.notes["verdict_source"] = "holder's VIP removal (keepalived FAULT)"
        elif verdict is not None:
            res.notes["verdict_source"] = "hafailover event 'unhealthy'"
        if verdict is not None:
            res.verdict_after_fault_ms = 1000 * (verdict - t)
            new = next((a for a, n in _acquisitions(tl, verdict - 0.01, end) if n != holder),
                       None)
            if new is not None:
                res.failover_after_verdict_ms = 1000 * (new - verdict)
    for name in ("gap", "after_heal_gap"):
        g = res.notes.get(name)
        if g:  # how much of the reported gap the whole VM stood still
            g["stall_ms"] = round(1000 * sum(max(0.0, min(b, g["end"]) - max(a, g["start"]))
                                             for a, b in st))


# --- idle cost ---------------------------------------------------------------------------------


def _cpu_and_rss(pids: list[int]) -> tuple[float, float, float]:
    """(utime+stime s, cutime+cstime s, VmRSS MB) summed over pids."""
    own = children = rss = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        own += (int(f[11]) + int(f[12])) / _TICK
        children += (int(f[13]) + int(f[14])) / _TICK
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
    return own, children, rss


@dataclass
class IdleResult:
    config: str
    node: str
    role: str  # holder or backup
    rss_mb: float
    cpu_pct: float  # the daemon's own processes, % of one core
    cpu_with_checks_pct: float  # plus its reaped children (the check scripts)
    processes: int
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_idle(cfg: BenchConfig, lab: Lab, seconds: float) -> list[IdleResult]:
    d = Daemons(cfg, lab)
    d.start_all()
    holder = wait_stable_holder(lab)
    time.sleep(2.0)  # start-up work (imports, first elections) is not idle cost
    pids = {n: d.pids(n) for n in lab.nodes}
    before = {n: _cpu_and_rss(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {n: _cpu_and_rss(p) for n, p in pids.items()}
    dt = time.monotonic() - t0
    out = []
    for n in lab.nodes:
        own = after[n][0] - before[n][0]
        kids = after[n][1] - before[n][1]
        out.append(IdleResult(cfg.key, n, "holder" if n == holder else "backup", after[n][2],
                              100 * own / dt, 100 * (own + kids) / dt, len(pids[n]), dt))
    return out
