"""VIP groups measured on real daemons in the netns lab (root): `python -m lab.bench_groups_daemon`.

    python -m lab.bench_groups_daemon cpu --groups 1 10 50 500 --repeats 2 --window 15
    python -m lab.bench_groups_daemon failover --repeats 3
    python -m lab.bench_groups_daemon link --repeats 3
    python -m lab.bench_groups_daemon vipdel --repeats 5

cpu: 3 nodes at the default timings (heartbeat 100ms, failover 600ms), no health checks, the
metrics endpoint on and scraped every second from the client (`--metrics off`: the default
configuration, no endpoint and no scraper); per daemon the CPU it used itself
(utime+stime, not children) over `window` seconds once every group has a holder, the part of it
in the event loop's thread (the rest is the metrics endpoint's threads), how many groups' VIPs
it held at the end, and its RSS; the median per node, and of the node holding the most VIPs and
of the others apart; and how often the event loop's thread was woken a second (schedstat).
failover: web/db on 3 nodes, node1's host dies: web's failover time (kill to the VIP on its new
holder) and the db client's lost probes (10 ms probes). link: the two-bridge lab, node1's eth0
loses carrier: time to the VIP on node2. vipdel: `ip addr del` of web's VIP on its holder: time
until it is back (the daemon's vip-readded event) and the client's longest gap. Medians (and
all values) are printed as JSON lines. One lab at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lab import echo as echo_mod
from lab import monitor as monitor_mod
from lab import probe as probe_mod
from lab.cluster import ClusterOptions, HaCluster, generated_groups, web_db_groups
from lab.netns import CLIENT, Lab, in_netns

WEB, DB = "10.213.0.100", "10.213.0.101"
METRICS_PORT = 9405
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime+stime of the process (every thread), or of its thread `tid`."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def wakeups(pid: int) -> int:
    """How many times the process's main thread (its event loop) was scheduled to run: each
    wake-up from sleep is one (`/proc/PID/task/PID/schedstat`, third field)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[2])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Scraper:
    """GET /metrics from every node once a second, from the client's namespace."""

    def __init__(self, lab: Lab) -> None:
        self.urls = [f"http://{lab.address(n)}:{METRICS_PORT}/metrics" for n in lab.nodes]
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.thread = threading.Thread(target=lambda: in_netns(lab.ns(CLIENT), self._run),
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=0.9) as r:
                        r.read()
                    self.ok += 1
                except OSError:
                    self.failed += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)


def med(xs: Sequence[float]) -> float:
    return round(statistics.median(xs), 4) if xs else float("nan")


def emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


def bench_cpu(groups: int, window: float, settle: float, metrics: bool = True) -> dict[str, Any]:
    with Lab(3, "hfbgd") as lab:
        c = HaCluster(lab, ClusterOptions(groups=generated_groups(groups, lab.nodes),
                                          with_check=False,
                                          metrics_port=METRICS_PORT if metrics else 0))
        t0 = time.monotonic()
        for n in lab.nodes:
            c.start(n)
        held_s: float | None = None
        try:
            c.wait_groups(lambda h: all(len(v) == 1 for v in h.values()), timeout=60.0,
                          poll=0.1)
            held_s = round(time.monotonic() - t0, 2)
        except TimeoutError:
            pass  # measured anyway: the cost of a cluster that does not settle
        scraper = Scraper(lab) if metrics else None
        time.sleep(settle)
        pids = {n: c.procs[n].pid for n in lab.nodes}
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        loop_before = {n: cpu_seconds(p, p) for n, p in pids.items()}  # the main thread
        woken_before = {n: wakeups(p) for n, p in pids.items()}
        t = time.monotonic()
        time.sleep(window)
        dt = time.monotonic() - t
        cpu = {n: 100 * (cpu_seconds(p) - before[n]) / dt for n, p in pids.items()}
        loop = {n: 100 * (cpu_seconds(p, p) - loop_before[n]) / dt for n, p in pids.items()}
        woken = {n: round((wakeups(p) - woken_before[n]) / dt, 1) for n, p in pids.items()}
        holds = c.group_holders()
        rss = {n: rss_mb(p) for n, p in pids.items()}
        if scraper is not None:
            scraper.close()
        alive = all(c.procs[n].alive() for n in lab.nodes)
        return {"what": "cpu", "groups": groups, "metrics": metrics, "cpu_percent": cpu,
                "loop_thread_cpu_percent": loop, "loop_wakeups_per_s": woken,
                "vips_held": {n: sum(n in h for h in holds.values()) for n in lab.nodes},
                "rss_mb": rss,
                "held_s": held_s, "scrapes_ok": scraper.ok if scraper else 0,
                "scrapes_failed": scraper.failed if scraper else 0, "alive": alive,
                "window_s": round(dt, 1)}


def bench_failover() -> dict[str, Any]:
    with Lab(3, "hfbgd") as lab:
        c = HaCluster(lab, ClusterOptions(groups=web_db_groups("3s")))
        echo = echo_mod.start(lab)
        c.start_all()
        c.wait_groups(lambda h: h == {"web": ["node1"], "db": ["node2"]}, timeout=15.0)
        p_db = probe_mod.start(lab, DB, duration=60.0)
        p_web = probe_mod.start(lab, WEB, duration=60.0)
        time.sleep(1.0)
        t_kill = c.kill_host("node1", echo)
        _, t_web = c.wait_groups(lambda h: h["web"] == ["node2"], timeout=10.0, poll=0.005,
                                    exclude=("node1",))
        time.sleep(1.0)
        lab.stop(p_db)
        lab.stop(p_web)
        assert p_db.data is not None and p_web.data is not None
        db, web = probe_mod.load(p_db.data), probe_mod.load(p_web.data)
        return {"what": "failover", "web_failover_ms": round((t_web - t_kill) * 1000, 1),
                "web_client_outage_ms": round(probe_mod.longest_outage_ms(
                    web.records, t_kill - 0.2, web.end), 1),
                "db_lost": sum(1 for r in db.records if r.recv is None and r.send >= t_kill),
                "db_sent": sum(1 for r in db.records if r.send >= t_kill),
                "db_longest_gap_ms": round(probe_mod.longest_outage_ms(
                    db.records, t_kill, db.end), 1)}


def bench_link() -> dict[str, Any]:
    with Lab(3, "hfbgd", two_bridges=True) as lab:
        c = HaCluster(lab, ClusterOptions(groups=web_db_groups("3s")))
        c.start_all()
        c.wait_groups(lambda h: h == {"web": ["node1"], "db": ["node2"]}, timeout=15.0)
        monitor_mod.start(lab, WEB)
        time.sleep(1.0)
        t_down = lab.set_carrier("node1", False)
        c.wait_groups(lambda h: h["web"] == ["node2"], timeout=10.0)
        time.sleep(0.5)
        tl = monitor_mod.timeline(lab, WEB)
        merged = tl.merged()
        rel = next(t for t, n, p in merged if n == "node1" and not p and t > t_down)
        took = next(t for t, n, p in merged if n == "node2" and p and t > t_down)
        return {"what": "link", "released_ms": round((rel - t_down) * 1000, 1),
                "moved_ms": round((took - t_down) * 1000, 1),
                "dual_holder_ms": tl.dual_holder_ms()}


def bench_vipdel(repeats: int) -> list[dict[str, Any]]:
    """readded_ms: from just before `ip addr del` to the daemon's vip-readded event (logged
    once the address is back; ms resolution; the time of the ip command included)."""
    out = []
    with Lab(3, "hfbgd") as lab:
        c = HaCluster(lab, ClusterOptions(groups=web_db_groups("3s")))
        echo_mod.start(lab)
        c.start_all()
        c.wait_groups(lambda h: h == {"web": ["node1"], "db": ["node2"]}, timeout=15.0)
        for k in range(1, repeats + 1):
            p = probe_mod.start(lab, WEB, duration=30.0)
            time.sleep(0.5)
            t_del, m_del = time.time(), time.monotonic()
            lab.ip("node1", "addr", "del", f"{WEB}/24", "dev", "eth0")
            time.sleep(1.0)
            lab.stop(p)
            assert p.data is not None
            run = probe_mod.load(p.data)
            readded = [e for e in c.event_log("node1") if e["reason"] == "vip-readded"]
            assert len(readded) == k, readded
            back = datetime.fromisoformat(readded[-1]["time"]).timestamp()
            out.append({"what": "vipdel", "readded_ms": round((back - t_del) * 1000, 1),
                        "client_gap_ms": round(probe_mod.longest_outage_ms(
                            run.records, m_del - 0.1, run.end), 1)})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.bench_groups_daemon",
                                 description=(__doc__ or "").splitlines()[0])
    ap.add_argument("what", choices=("cpu", "failover", "link", "vipdel"))
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--window", type=float, default=15.0, help="cpu: seconds measured")
    ap.add_argument("--settle", type=float, default=3.0, help="cpu: seconds before measuring")
    ap.add_argument("--metrics", choices=("1s", "off"), default="1s",
                    help="cpu: metrics endpoint scraped every second, or no endpoint")
    a = ap.parse_args(argv)
    if a.what == "cpu":
        for g in a.groups:
            runs = [bench_cpu(g, a.window, a.settle, a.metrics == "1s") for _ in range(a.repeats)]
            for r in runs:
                emit(r)
            top = [max(r["vips_held"], key=r["vips_held"].get) for r in runs]
            pairs = list(zip(runs, top, strict=True))
            emit({"what": "cpu-median", "groups": g, "metrics": a.metrics,
                  "cpu_percent_per_node": med([v for r in runs for v in r["cpu_percent"].values()]),
                  "cpu_percent_most_vips": med([r["cpu_percent"][n] for r, n in pairs]),
                  "cpu_percent_others": med([v for r, n in pairs
                                             for k, v in r["cpu_percent"].items() if k != n]),
                  "wakeups_per_s_most_vips": med([r["loop_wakeups_per_s"][n] for r, n in pairs]),
                  "wakeups_per_s_others": med([v for r, n in pairs for k, v in
                                               r["loop_wakeups_per_s"].items() if k != n]),
                  "rss_mb": med([v for r in runs for v in r["rss_mb"].values()]),
                  "held_s": med([r["held_s"] for r in runs if r["held_s"] is not None]),
                  "settled": sum(r["held_s"] is not None for r in runs)})
        return 0
    if a.what == "vipdel":
        recs = bench_vipdel(a.repeats)
    else:
        fn = bench_failover if a.what == "failover" else bench_link
        recs = [fn() for _ in range(a.repeats)]
    for r in recs:
        emit(r)
    keys = [k for k, v in recs[0].items() if isinstance(v, (int, float)) and k != "what"]
    emit({"what": f"{a.what}-median", "repeats": len(recs),
          **{k: med([float(r[k]) for r in recs]) for k in keys}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
