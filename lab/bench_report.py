# ruff: noqa: RUF001, RUF002 - the report is typeset markdown (en dashes, minus signs)
"""The benchmark's report: per-fault tables, idle cost, targets, method, raw runs (markdown)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lab.bench_faults import BIG_STALL_S, CONFIGS, FAULTS, LOSS_PERCENT, POST

Run = dict[str, Any]

TITLES = {
    "death": "Host death (holder's link down on both ends, then its daemon SIGKILLed)",
    "partition": "Silent partition of the holder (bridge drops its frames, carrier up), {hold:g} s",
    "freeze": "Frozen holder daemon (SIGSTOP of its process group), {hold:g} s, then SIGCONT",
    "hang": "Hung health check on the holder (interval 1 s, timeout 2 s, fall 2, rise 2), "
            "{hold:g} s, then healthy again",
    "sigterm": "SIGTERM of the holder's daemon (process group, as systemd stops a unit)",
    "switchover": "Planned switchover (the holder's control socket gets the request "
                  "`hafailover switchover` sends)",
    "loss": "{loss:g} minutes of {pct:g}% loss on every node's egress",
}

# (column title, field, clipped-flag field or None)
Column = tuple[str, str, str | None]
BASE: list[Column] = [("outage ms", "outage_ms", "outage_clipped"),
                      ("longest gap with lost probes ms", "lossy_gap_ms", "lossy_gap_clipped"),
                      ("dual ms", "dual_ms", None)]
HEAL: list[Column] = [("after-heal outage ms", "after_heal_ms", "after_heal_clipped")]
MOVES: list[Column] = [("VIP moves", "moves", None)]
COLUMNS: dict[str, list[Column]] = {
    "death": [*BASE, ("takeover ms", "takeover_ms", None), *MOVES],
    "partition": [*BASE, *HEAL, ("dual after heal ms", "dual_after_heal_ms", None), *MOVES],
    "freeze": [*BASE, *HEAL, ("stale VIP gone after resume ms", "stale_gone_ms", None),
               ("dual after resume ms", "dual_after_heal_ms", None), *MOVES],
    "hang": [*BASE, *HEAL, ("verdict after fault ms", "verdict_after_fault_ms", None),
             ("failover after verdict ms", "failover_after_verdict_ms", None), *MOVES],
    "sigterm": [*BASE, ("takeover ms", "takeover_ms", None), *MOVES],
    "switchover": [*BASE, ("takeover ms", "takeover_ms", None), *MOVES],
    "loss": [("false failovers (VIP moves)", "moves", None),
             ("of which right after a VM stall", "moves_after_stall", None),
             ("VIP drops", "drops", None),
             ("longest reply gap ms", "outage_ms", "outage_clipped"), ("dual ms", "dual_ms", None)],
}


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"


def stat(runs: Sequence[Run], key: str, clip_key: str | None = None) -> str:
    """median [min–max] over the runs that have a value; '≥' marks a window-clipped value."""
    # A short gap that merely touches the window's end is no outage in progress.
    # '≤' marks an upper bound (`KEY_le`).
    pairs = sorted((float(r[key]), "≥" if clip_key and r.get(clip_key) and r[key] > 25
                    else "≤" if r.get(f"{key}_le") else "")
                   for r in runs if r.get(key) is not None)
    if not pairs:
        return "—"

    def show(i: int) -> str:
        return pairs[i][1] + _num(pairs[i][0])

    n = len(pairs)
    if n % 2:
        med = show(n // 2)
    else:
        v = (pairs[n // 2 - 1][0] + pairs[n // 2][0]) / 2
        med = pairs[n // 2][1] + _num(v)
    return med if show(0) == show(n - 1) else f"{med} [{show(0)}–{show(n - 1)}]"


def with_lossy_gaps(runs: Sequence[Run]) -> list[Run]:
    """Add `lossy_gap_ms`: the longest reply gap in the outage window during which at least
    one probe went unanswered (the VIP really did not answer), from the run's list of gaps
    over 25 ms; "≤25" when there is none."""
    out = []
    for r in runs:
        gaps = r.get("notes", {}).get("gaps")
        if gaps is None or r.get("error"):
            out.append(r)
            continue
        lossy = [g for g in gaps if g["lost"] > 0]
        top = max(lossy, key=lambda g: g["ms"]) if lossy else None
        out.append({**r, "lossy_gap_ms": top["ms"] if top else 25.0,
                    "lossy_gap_ms_le": top is None,
                    "lossy_gap_clipped": bool(top and top["after"] is None)})
    return out


def median(runs: Sequence[Run], key: str) -> float | None:
    vals = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def maximum(runs: Sequence[Run], key: str) -> float | None:
    vals = [float(r[key]) for r in runs if r.get(key) is not None]
    return max(vals) if vals else None


def fault_table(fault: str, runs: Sequence[Run], configs: Sequence[str]) -> list[str]:
    cols = COLUMNS[fault]
    out = ["| config | " + " | ".join(c[0] for c in cols) + " | runs |",
           "|---|" + "---|" * (len(cols) + 1)]
    for key in configs:
        cfg = CONFIGS[key]
        mine = [r for r in runs if r["config"] == key and r["fault"] == fault]
        if not cfg.supports(fault):
            out.append(f"| {cfg.label} | " + " | ".join(
                ["no switchover command (edit priorities, reload)"] + ["—"] * (len(cols) - 1))
                + " | — |")
            continue
        if not mine:
            continue
        ok = [r for r in mine if not r.get("error")]
        cells = [stat(ok, f, c) for _, f, c in cols]
        failed = len(mine) - len(ok)
        runs_cell = f"{len(ok)}" + (f" ({failed} failed)" if failed else "")
        out.append(f"| {cfg.label} | " + " | ".join(cells) + f" | {runs_cell} |")
    return out


def stall_notes(fault: str, runs: Sequence[Run], configs: Sequence[str]) -> list[str]:
    """Reported gaps longer than 25 ms during which no probe went unanswered: the client (or
    the echo) was descheduled, so the replies were late rather than lost."""
    out = []
    for key in configs:
        for name, label in (("gap", "outage"), ("after_heal_gap", "after-heal")):
            gaps = [g for r in runs if r["config"] == key and r["fault"] == fault
                    and not r.get("error") and (g := r.get("notes", {}).get(name))
                    and g["ms"] > 25]
            late = [g for g in gaps if g["lost"] == 0]
            if late:
                ms = ", ".join(_num(float(g["ms"])) for g in late)
                out.append(f"* {CONFIGS[key].label}: {label} gap(s) of {ms} ms lost no probe "
                           "(late replies: the client, an echo or the whole VM stalled; "
                           "not the VIP)")
            frozen = [g for g in gaps if g["lost"] and g.get("stall_ms", 0) >= 50]
            if frozen:
                ms = ", ".join(f"{_num(float(g['ms']))} ({g['stall_ms']})" for g in frozen)
                out.append(f"* {CONFIGS[key].label}: {label} gap(s) of {ms} ms overlapped a "
                           "VM stall (ms in parentheses) during which nothing in the VM ran")
    return out


def move_reasons(runs: Sequence[Run], configs: Sequence[str]) -> list[str]:
    """Under loss, what hafailover decided just before each VIP move (from its event
    history): the reason behind every false failover."""
    out = []
    for key in configs:
        for r in (r for r in runs if r["config"] == key and r["fault"] == "loss"
                  and r.get("notes", {}).get("decisions")):
            notes = r["notes"]
            for m in notes.get("moves", []):
                before = [d for d in notes["decisions"]
                          if m["at_ms"] - 3000 <= d["at_ms"] <= m["at_ms"]
                          and d["reason"] in ("unhealthy", "lease-expired", "leader-lost",
                                              "stopping", "vip-conflict")]
                why = "; ".join(f"{d['node']} {d['message']} (at {d['at_ms'] - m['at_ms']} ms)"
                                for d in before[:3]) or "no unhealthy/lease/leader-lost decision"
                stall = ", right after a VM stall" if m.get("after_stall") else ""
                out.append(f"* {CONFIGS[key].label} #{r['repeat'] + 1}: move to {m['to']} at "
                           f"{m['at_ms'] / 1000:.1f} s{stall}: {why}")
    return out


def idle_table(idle: Sequence[Run], configs: Sequence[str]) -> list[str]:
    out = ["| config | node | role | RSS MB | CPU % of a core | CPU % incl. check scripts |"
           " processes |", "|---|---|---|---|---|---|---|"]
    for key in configs:
        for r in (r for r in idle if r["config"] == key):
            if r.get("error"):
                out.append(f"| {CONFIGS[key].label} | — | — | error: {r['error'][:80]} |"
                           " | | |")
                continue
            out.append(f"| {CONFIGS[key].label} | {r['node']} | {r['role']} | "
                       f"{r['rss_mb']:.1f} | {r['cpu_pct']:.2f} | "
                       f"{r['cpu_with_checks_pct']:.2f} | {r['processes']} |")
    return out


@dataclass
class Target:
    what: str
    config: str
    measured: str
    met: bool | None  # None: not measured in this run


def _limit(what: str, config: str, fault: str, key: str, runs: Sequence[Run], limit: float,
           agg: Callable[[Sequence[Run], str], float | None] = median,
           agg_name: str = "median") -> Target:
    mine = [r for r in runs if r["config"] == config and r["fault"] == fault
            and not r.get("error")]
    v = agg(mine, key)
    if v is None:
        return Target(what, config, "not measured", None)
    spread = stat(mine, key)
    met = v <= limit
    verdict = "" if met else f"; missed by {_num(v - limit)}"
    shown = spread if agg is median else f"{agg_name} {_num(v)}"
    return Target(what, config, f"{shown}{verdict}", met)


def targets(runs: Sequence[Run], idle: Sequence[Run]) -> list[Target]:
    out: list[Target] = [
        _limit("host death: median outage ≤ 800 ms at defaults", "hf", "death", "outage_ms",
               runs, 800),
        _limit("host death: median outage ≤ 400 ms, fast profile", "hffast", "death",
               "outage_ms", runs, 400),
    ]
    ka = median([r for r in runs if r["config"] == "ka01" and r["fault"] == "death"
                 and not r.get("error")], "outage_ms")
    if ka is not None:
        out.append(_limit("host death: fast profile no worse than keepalived advert_int 0.1 "
                          f"(median {_num(ka)} ms)", "hffast", "death", "outage_ms", runs, ka))
    for cfg in ("hf", "hffast"):
        out += [
            _limit("silent partition: 0 ms dual holders (every run)", cfg, "partition",
                   "dual_ms", runs, 0, maximum, "max"),
            _limit("silent partition: outage after healing ≤ 100 ms", cfg, "partition",
                   "after_heal_ms", runs, 100),
            _limit("frozen daemon: outage ≤ 800 ms", cfg, "freeze", "outage_ms", runs, 800),
            _limit("frozen daemon: stale holder gone ≤ 50 ms after resume", cfg, "freeze",
                   "stale_gone_ms", runs, 50),
            _limit("hung check: failover ≤ 150 ms after the unhealthy verdict", cfg, "hang",
                   "failover_after_verdict_ms", runs, 150),
            _limit("planned switchover: outage ≤ 100 ms", cfg, "switchover", "outage_ms",
                   runs, 100),
            _limit("SIGTERM of the leader: outage ≤ 200 ms", cfg, "sigterm", "outage_ms",
                   runs, 200),
        ]
        loss = [r for r in runs if r["config"] == cfg and r["fault"] == "loss"
                and not r.get("error")]
        if loss:
            moves = sum(int(r["moves"] or 0) for r in loss)
            stalled = sum(int(r.get("moves_after_stall") or 0) for r in loss)
            out.append(Target(f"{LOSS_PERCENT:g}% loss: 0 false failovers", cfg,
                              f"{moves} in {len(loss)} run(s), {stalled} of them right after "
                              "a VM stall", moves == 0))
    mine = [r for r in idle if r["config"] == "hf" and not r.get("error")]
    if mine:
        rss = max(r["rss_mb"] for r in mine)
        cpu = max(r["cpu_pct"] for r in mine)
        cpu_c = max(r["cpu_with_checks_pct"] for r in mine)
        out.append(Target("idle RSS ≤ 40 MB per node at defaults", "hf", f"max {rss:.1f} MB"
                          + ("" if rss <= 40 else f"; missed by {rss - 40:.1f} MB"), rss <= 40))
        out.append(Target("idle CPU ≤ 1% of a core per node at defaults", "hf",
                          f"max {cpu:.2f}% (incl. check scripts {cpu_c:.2f}%)"
                          + ("" if cpu <= 1 else f"; missed by {cpu - 1:.2f} points"), cpu <= 1))
    return out


def targets_table(ts: Sequence[Target]) -> list[str]:
    out = ["| target | config | measured | met? |", "|---|---|---|---|"]
    for t in ts:
        if t.met is None:
            continue  # its fault was not part of this run
        met = "—" if t.met is None else ("yes" if t.met else "**NO**")
        out.append(f"| {t.what} | {t.config} | {t.measured} | {met} |")
    return out


METHOD = """\
**Lab** (`lab.netns.Lab`): one namespace holding a bridge (STP off, forward delay 0,
multicast snooping off); three node namespaces (10.213.0.11–13 on `eth0`) each running a UDP
echo service; a client namespace (10.213.0.50) sending a UDP probe to the VIP 10.213.0.100 every
10 ms. Nothing is connected to the root namespace. The kernel has no netem, so loss is injected
with nftables on the bridge (each frame a node sends is dropped with probability p) and there
is no added delay. A fresh lab is built for every run; configurations alternate within each
repeat; the fault always hits the node holding the VIP at that moment.

**Systems.** keepalived (the distribution's package) with `--dont-fork --log-console
--log-detail --no-syslog --vrrp` and per-node pid files, all nodes `state BACKUP`, priorities
150/100/50, preemption on (default), multicast VRRP on `eth0`, `virtual_ipaddress {{
10.213.0.100/24 dev eth0 }}`, `advert_int 1` with VRRPv2 or `advert_int 0.1` with VRRPv3.
hafailover (`lab.cluster.HaCluster`): priorities 150/100/50, preempt off (its
default), heartbeat/failover timeout 100 ms/600 ms (defaults) or 50 ms/300 ms (fast). Both use
the same health check on every node and in every run: a script reading a mode file, interval
1 s, timeout 2 s, fall 2, rise 2 (keepalived: `track_script`, no weight, so a failure means
FAULT).

The client, the echo services and the VIP monitors run with real-time priority (SCHED_FIFO
10) and the daemons at normal priority, so that CPU contention delays the systems under test
but not the measurement. The switchover request is sent to the holder's control socket from
the benchmark process (what `hafailover switchover` sends), so no CLI interpreter start-up
competes for the CPUs at that moment.

**Metrics** (all times CLOCK_MONOTONIC, shared by the namespaces):

* *outage* — the longest gap between successful probe replies in [fault − 1 s, heal + {post:g} s]
  (faults without a heal: [fault − 1 s, fault + {post:g} s]); ~10–20 ms means nothing was lost.
  "≥" marks a gap still open at the end of the window (the outage lasted at least that long).
* *longest gap with lost probes* — the longest of those gaps in which at least one probe went
  unanswered: the part of the outage that the VIP itself caused, without gaps made of late
  replies (a descheduled client or echo, or a vCPU the host took away). "≤25" when no gap
  over 25 ms lost a probe.
* *dual* — total time two or more nodes had the VIP configured, over the same window, from
  per-node netlink monitors (10 ms polls plus address events). A node's address counts while its
  `eth0` is up with carrier: partitioned nodes (carrier up) and frozen daemons (the kernel keeps
  the address) count; the only exclusion is the dead host in *host death*, from the moment its
  link went down (the address it leaves behind is on a link that is down).
* *after-heal outage* — the longest reply gap in [heal, heal + {post:g} s]; *dual after heal* —
  dual time in the same window; *stale VIP gone after resume* — from SIGCONT until the resumed
  node's own VIP is removed (empty when it keeps the VIP, as keepalived's master does).
* *takeover* — from the fault to another node adding the VIP.
* *hung check*: *verdict after fault* — from the moment the check starts hanging until the
  holder decides it is unhealthy (hafailover: its `unhealthy` decision in the event history;
  keepalived logs with 1 s resolution, so its holder's VIP removal on entering FAULT stands in);
  *failover after verdict* — from that verdict to the new holder adding the VIP.
* *VIP moves* — how many times a node other than the previous holder added the VIP (a failover);
  under loss, counted during the loss window: these are the false failovers. *VIP drops* — how
  many times any node removed the VIP.
* *VM stall* — a time of more than 30 ms in which the real-time client sent no probe (it sends
  every 10 ms): the hypervisor did not run the VM, so every process, the daemons included,
  was late by that much. A move is *right after a VM stall* when a stall of 150 ms or more
  (hffast's event-loop lag limit) ended within 2 s before it.
* *idle* — after the cluster settled (one holder for 1 s, then 2 s), VmRSS of the daemon's
  processes (keepalived: parent + VRRP child; hafailover: the one process) and CPU as
  utime+stime over {idle:g} s from `/proc/PID/stat`, in % of one core; "incl. check scripts"
  adds the CPU of reaped children (cutime+cstime).

Values are median [min–max] over the repeats.
"""


def render(meta: Run, runs: Sequence[Run], idle: Sequence[Run], end: Run | None) -> str:
    runs = with_lossy_gaps(runs)
    configs = [c for c in CONFIGS if any(r["config"] == c for r in [*runs, *idle])]
    hold, loss_min = float(meta["hold"]), float(meta["loss_minutes"])
    lines = ["# Benchmarks: hafailover vs keepalived on a network-namespace lab", ""]
    lines += [f"Generated by `{meta['command']}` (as root), started {meta['started']}"
              + (f", wall time {float(end['wall_seconds']) / 60:.1f} min." if end else
                 " (incomplete run)."), ""]
    for sup in meta.get("supplements", []):
        how = "also include runs from" if sup.get("added") else "come from"
        lines += [f"Rows {', '.join(sup['replaced'])} {how} a later run, `{sup['command']}` "
                  f"(started {sup['started']}, hafailover {sup['hafailover']})"
                  + (f": {sup['note']}" if sup.get("note") and "--note" not in str(
                      sup["command"]) else "."), ""]
    v = meta["versions"]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {val} |" for k, val in v.items()] + [""]
    loads = sorted(float(r["notes"]["load1"]) for r in runs if "load1" in r.get("notes", {}))
    if loads:
        lines += [f"The machine was shared with other work: the 1-minute load average at the "
                  f"end of each run was median {statistics.median(loads):.2f} "
                  f"[{loads[0]:.2f}–{loads[-1]:.2f}] on {v.get('CPUs', '?')} CPUs. A client or "
                  "echo stall shows up as a reply gap with no lost probes (see the raw file's "
                  "`notes.gap.lost`).", ""]
    steal = sorted(float(r["notes"]["steal_pct"]) for r in runs
                   if "steal_pct" in r.get("notes", {}))
    if steal:
        stalled = [r for r in runs if any(x["ms"] >= 1000 * BIG_STALL_S
                                          for x in r.get("notes", {}).get("stalls", []))]
        longest = max((x["ms"] for r in runs for x in r.get("notes", {}).get("stalls", [])),
                      default=0)
        lines += [f"The machine is a VM whose CPUs the host takes away at times: steal time was "
                  f"median {statistics.median(steal):.1f}% [{steal[0]:.1f}–{steal[-1]:.1f}%] "
                  f"of the CPUs per run, and in {len(stalled)} of {len(runs)} runs the "
                  f"real-time client sent nothing for {1000 * BIG_STALL_S:.0f} ms or more at "
                  f"least once (longest {longest} ms): the whole VM stood still. Such *VM "
                  "stalls* are listed per run in the raw file (`notes.stalls`, from 30 ms) and "
                  "called out below.", ""]
    loss_text = (f"; loss runs: {meta['loss_repeats']} × {loss_min:g} min per configuration, "
                 + ("one configuration at a time" if meta.get("loss_sequential")
                    else "all configurations in parallel") + ", each in its own lab"
                 if any(r["fault"] == "loss" for r in runs) else "")
    lines += [f"Repeats per fault and configuration: {meta['repeats']}{loss_text}. Partition, "
              f"freeze and hung check last {hold:g} s.", ""]
    lines += ["## Targets", "", *targets_table(targets(runs, idle)), ""]
    lines += ["## Results", ""]
    for fault in FAULTS:
        if not any(r["fault"] == fault for r in runs):
            continue
        title = TITLES[fault].format(hold=hold, loss=loss_min, pct=LOSS_PERCENT)
        lines += [f"### {title}", "", *fault_table(fault, runs, configs), ""]
        notes = stall_notes(fault, runs, configs)
        if fault == "loss":
            notes += move_reasons(runs, configs)
        if notes:
            lines += [*notes, ""]
    if idle:
        lines += [f"### Idle cost per node ({float(meta['idle_seconds']):g} s)", "",
                  *idle_table(idle, configs), ""]
    lines += ["## Method", "", METHOD.format(post=POST, idle=float(meta["idle_seconds"])), ""]
    lines += ["## Raw runs", "", "Outage ms per run, in order (config/fault: values); "
              "`E` = run failed.", "", "```"]
    for fault in FAULTS:
        for c in configs:
            mine = [r for r in runs if r["config"] == c and r["fault"] == fault]
            if mine:
                vals = " ".join("E" if r.get("error") else
                                _num(float(r["outage_ms"])) for r in mine)
                lines.append(f"{c}/{fault}: {vals}")
    lines += ["```", ""]
    errors = [r for r in runs if r.get("error")]
    if errors:
        lines += ["Failed runs:", ""] + [f"* {r['config']}/{r['fault']} #{r['repeat']}: "
                                         f"{r['error'][:300]}" for r in errors] + [""]
    return "\n".join(lines)
