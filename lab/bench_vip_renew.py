"""Cost of renewing VIP lifetimes, and of watching the events it causes (root, one namespace).

    python -m lab.bench_vip_renew --vips 17 --watched 50 --renewals 500

Creates a namespace (10.213.50.0/24 on one end of a veth pair, nothing else, no route out), puts
`--vips` addresses on it with `NetlinkVipPort.add`, then times `--renewals` calls of
`NetlinkVipPort.renew(all of them)` as the engine makes them (one call, every VIP of every group
held). Meanwhile a `LinkWatcher` in a second process of the same namespace watches `--watched`
VIPs (the held ones and others that are absent, as on a node holding some of the groups) and
reports the CPU it used while the renewals ran (the RTM_NEWADDR each renewed VIP causes is
dropped by the watcher's socket filter, so this is now its idle cost). Prints one JSON line: per
renewal call the median wall time and the CPU (user+sys) of the renewing process (kernel time of
the replaces included), and the watcher's CPU per renewal call and per renewed VIP. The
namespace is deleted at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from hafailover.net.vip import Vip

IFNAME = "eth0"


def vips(n: int, start: int = 0) -> list[Vip]:
    return [Vip(ipaddress.ip_interface(f"10.213.50.{100 + i}/24"), IFNAME) for i in range(start, n)]


async def watcher(held: int, watched: int) -> None:
    """Child: watch the VIPs, answer each line on stdin with its CPU time and event count."""
    from hafailover.net.links import LinkWatcher

    removed: list[str] = []
    w = LinkWatcher(
        [IFNAME],
        vips(watched),
        on_link=lambda name, up: None,
        on_address_removed=lambda vip: removed.append(str(vip)),
    )
    state = await w.start()
    assert len(state.vips) == held, state
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while await reader.readline():
        print(json.dumps({"cpu": time.process_time(), "removed": removed}), flush=True)
    await w.close()


async def renewer(n_vips: int, renewals: int, child: subprocess.Popen[str]) -> dict[str, Any]:
    from hafailover.net.vip import NetlinkVipPort

    assert child.stdin is not None and child.stdout is not None

    def child_cpu() -> float:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("\n")
        child.stdin.flush()
        answer = json.loads(child.stdout.readline())
        assert answer["removed"] == [], answer
        return float(answer["cpu"])

    held = vips(n_vips)
    port = NetlinkVipPort()
    try:
        for _ in range(20):  # warm-up: imports, socket, caches
            await port.renew(held, 30)
        await asyncio.sleep(0.2)
        took: list[float] = []
        watch0 = child_cpu()
        cpu0 = time.process_time()
        for _ in range(renewals):
            t0 = time.perf_counter()
            await port.renew(held, 30)
            took.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        await asyncio.sleep(0.3)  # let the watcher drain the last events
        watch = child_cpu() - watch0
    finally:
        await port.close()
    return {
        "vips": n_vips,
        "renewals": renewals,
        "renew_median_ms": round(statistics.median(took) * 1e3, 3),
        "renew_cpu_ms": round(cpu / renewals * 1e3, 3),
        "watcher_cpu_ms_per_renewal": round(watch / renewals * 1e3, 3),
        "watcher_cpu_us_per_event": round(watch / (renewals * n_vips) * 1e6, 1),
    }


def inner(args: argparse.Namespace) -> None:
    from hafailover.net.vip import NetlinkVipPort

    async def setup() -> None:
        port = NetlinkVipPort()
        await port.add(vips(args.vips), 30)
        await port.close()

    asyncio.run(setup())
    argv = [sys.executable, "-m", "lab.bench_vip_renew", "--role", "watcher"]
    argv += ["--vips", str(args.vips), "--watched", str(args.watched)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert json.loads(child.stdout.readline()) == {"ready": True}
        result = asyncio.run(renewer(args.vips, args.renewals, child))
        result["load"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result), flush=True)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def outer(args: argparse.Namespace) -> None:
    ns = f"hfrenew{os.getpid()}"

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=20)

    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", IFNAME, "type", "veth", "peer", "name", "peer0")
        ip("-n", ns, "link", "set", "peer0", "up")
        ip("-n", ns, "link", "set", IFNAME, "up")
        ip("-n", ns, "addr", "add", "10.213.50.1/24", "dev", IFNAME)
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "lab.bench_vip_renew"]
        argv += ["--role", "inner", "--vips", str(args.vips), "--watched", str(args.watched)]
        argv += ["--renewals", str(args.renewals)]
        for _ in range(args.repeats):
            subprocess.run(argv, check=True, timeout=600)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=17, help="VIPs held and renewed")
    parser.add_argument("--watched", type=int, default=50, help="VIPs the watcher watches")
    parser.add_argument("--renewals", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--role", choices=["outer", "inner", "watcher"], default="outer")
    args = parser.parse_args()
    if not 1 <= args.vips <= args.watched <= 150:
        parser.error("need 1 <= --vips <= --watched <= 150")
    if args.role == "watcher":
        asyncio.run(watcher(args.vips, args.watched))
    elif args.role == "inner":
        inner(args)
    else:
        outer(args)


if __name__ == "__main__":
    main()
