"""Link watcher: the flag logic anywhere; the netlink events in a namespace network.

Each scenario runs as one script inside a node namespace (the watcher, the VIP port and the
timing live in one process) and changes the world with `ip`, as an administrator would.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from hafailover.net.links import IFF_LOWER_UP, IFF_UP, link_up
from hafailover.net.vip import Vip
from tests.unit.vipnet import VipNet

V4 = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
V6 = Vip(ipaddress.ip_interface("fd00:213::100/64"), "eth0")


def test_up_means_admin_up_with_carrier() -> None:
    assert link_up({"flags": IFF_UP | IFF_LOWER_UP, "carrier": 1})
    assert not link_up({"flags": IFF_UP, "carrier": 0})  # cable out, peer down
    assert not link_up({"flags": IFF_LOWER_UP, "carrier": 1})  # admin down
    assert link_up({"flags": IFF_UP | IFF_LOWER_UP})  # no IFLA_CARRIER: the flag decides
    assert not link_up({"flags": IFF_UP})


PRELUDE = """
import asyncio, ipaddress, json, subprocess, sys, time
from hafailover.net.links import LinkWatcher
from hafailover.net.vip import NetlinkVipPort, Vip
V4 = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
V6 = Vip(ipaddress.ip_interface("fd00:213::100/64"), "eth0")
BRIDGE = sys.argv[1]
events = []
def on_link(name, up): events.append(["link", name, up, time.monotonic()])
def on_removed(vip): events.append(["removed", str(vip), None, time.monotonic()])
def ip(*args): subprocess.run(["ip", *args], check=True, capture_output=True)
async def wait_for(kind, name, value=None, timeout=3.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for e in events:
            if e[:2] == [kind, name] and (value is None or e[2] == value):
                events.remove(e)
                return round((e[3] - t0) * 1e3, 3)
        await asyncio.sleep(0.001)
    return None
def out(x): print(json.dumps(x), flush=True)
"""

SCENARIO = """
async def main():
    port = NetlinkVipPort()
    await port.add([V4, V6], None)
    w = LinkWatcher(["eth0", "eth7"], [V4, V6], on_link=on_link, on_address_removed=on_removed,
                    own_removal=port.removed_by_us)
    r = {}
    state = await w.start()
    r["start"] = [state.links, sorted(map(str, state.vips)), list(events)]
    ip("-n", BRIDGE, "link", "set", "v1", "down")  # the switch port dies: no carrier
    r["carrier_lost_ms"] = await wait_for("link", "eth0", False)
    ip("-n", BRIDGE, "link", "set", "v1", "up")
    r["carrier_back_ms"] = await wait_for("link", "eth0", True)
    await port.remove([V6])  # our own removal is no news
    await asyncio.sleep(0.3)
    r["own_removal"] = list(events)
    await port.add([V6], None)
    ip("addr", "del", "10.213.0.100/24", "dev", "eth0")  # an administrator's
    r["v4_removed_ms"] = await wait_for("removed", str(V4))
    ip("-6", "addr", "del", "fd00:213::100/64", "dev", "eth0")
    r["v6_removed_ms"] = await wait_for("removed", str(V6))
    await port.add([V4], 1)  # the kernel removes it when its lifetime runs out
    r["expired_ms"] = await wait_for("removed", str(V4), timeout=4)
    ip("link", "set", "eth0", "down")
    r["admin_down_ms"] = await wait_for("link", "eth0", False)
    ip("link", "set", "eth0", "name", "eth7")  # renamed: now the other watched name
    ip("link", "set", "eth7", "up")
    r["renamed_up_ms"] = await wait_for("link", "eth7", True)
    r["end"] = [w.state.links, list(events)]
    await w.close(); await port.close()
    out(r)
asyncio.run(main())
"""

OVERFLOW = """
async def main():
    port = NetlinkVipPort()
    await port.add([V4], None)
    # A tiny receive buffer, and a loop that does not read for a second while the kernel
    # sends a few hundred events: it must drop some (ENOBUFS).
    w = LinkWatcher(["eth0"], [V4, V6], on_link=on_link, on_address_removed=on_removed,
                    own_removal=port.removed_by_us, rcvbuf=4096)
    await w.start()
    await port.add([V6], None)  # after the watcher's dump: it never reads this addition
    await asyncio.sleep(0.2)
    # Additions are filtered out in the kernel (no overflow); 200 removals are not.
    adds = "".join(f"addr add 10.213.1.{i}/32 dev eth0\\n" for i in range(1, 201))
    batch = adds + adds.replace("addr add", "addr del") + "addr del fd00:213::100/64 dev eth0\\n"
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    ip("-n", BRIDGE, "link", "set", "v1", "down")
    time.sleep(0.5)  # the loop is blocked: nothing reads the socket
    r = {}
    r["carrier_lost_ms"] = await wait_for("link", "eth0", False)
    r["v6_removed_ms"] = await wait_for("removed", str(V6))
    r["resyncs"] = w.resyncs
    ip("-n", BRIDGE, "link", "set", "v1", "up")  # and events flow again afterwards
    r["carrier_back_ms"] = await wait_for("link", "eth0", True)
    r["state"] = [w.state.links, sorted(map(str, w.state.vips))]
    await w.close(); await port.close()
    out(r)
asyncio.run(main())
"""


FILTERED = """
async def main():
    port = NetlinkVipPort()
    await port.add([V4, V6], 30)
    w = LinkWatcher(["eth0"], [V4, V6], on_link=on_link, on_address_removed=on_removed,
                    own_removal=port.removed_by_us)
    seen = []  # the type of every message the watcher reads
    handle = w._handle
    w._handle = lambda msg: (seen.append(msg["header"]["type"]), handle(msg))
    r = {"start": sorted(map(str, (await w.start()).vips))}
    for _ in range(20):
        await port.renew([V4, V6], 30)
    ip("addr", "add", "10.213.0.101/24", "dev", "eth0")
    ip("-6", "addr", "add", "fd00:213::101/64", "dev", "eth0")
    ip("-n", BRIDGE, "link", "set", "v1", "down")
    r["carrier_lost_ms"] = await wait_for("link", "eth0", False)
    ip("addr", "del", "10.213.0.100/24", "dev", "eth0")
    r["v4_removed_ms"] = await wait_for("removed", str(V4))
    r["types"] = sorted(set(seen))
    r["redump"] = sorted(map(str, (await w.watch(["eth0"], [V4, V6])).vips))  # same socket
    await w.close(); await port.close()
    out(r)
asyncio.run(main())
"""


@pytest.fixture
def net() -> Iterator[VipNet]:
    net = VipNet(nodes=1)
    try:
        net.create()
        yield net
    finally:
        net.destroy()


def scenario(net: VipNet, code: str) -> Any:
    return net.run_py(net.nodes[0], PRELUDE + code, net.bridge, timeout=60)


@pytest.mark.netns
def test_links_and_vips_removed_behind_our_back_are_reported(net: VipNet) -> None:
    r = scenario(net, SCENARIO)
    print("\n" + json.dumps({k: v for k, v in r.items() if k.endswith("_ms")}))
    links, vips, early = r["start"]
    assert links == {"eth0": True, "eth7": False}  # a watched interface that does not exist
    assert vips == [str(V4), str(V6)] and early == []  # start() reports, it does not call back
    # Events, not polling: each is reported within a bound far below a heartbeat interval.
    bound = 500 if os.environ.get("CI") else 250
    for key in (
        "carrier_lost_ms",
        "carrier_back_ms",
        "v4_removed_ms",
        "v6_removed_ms",
        "admin_down_ms",
        "renamed_up_ms",
    ):
        assert r[key] is not None and r[key] < bound, (key, r)
    assert r["own_removal"] == []
    assert r["expired_ms"] is not None and 500 < r["expired_ms"] < 2600, r
    links, left = r["end"]
    assert links == {"eth0": False, "eth7": True} and left == [], r


@pytest.mark.netns
def test_dropped_events_are_recovered_by_a_new_dump(net: VipNet) -> None:
    r = scenario(net, OVERFLOW)
    assert r["resyncs"] >= 1, r
    # What happened while events were lost is reported from the re-dump.
    assert r["carrier_lost_ms"] is not None and r["v6_removed_ms"] is not None, r
    assert r["carrier_back_ms"] is not None, r
    assert r["state"] == [{"eth0": True}, [str(V4)]], r


@pytest.mark.netns
def test_address_additions_are_not_read_but_dumps_and_removals_are(net: VipNet) -> None:
    # The socket filter: renewals and additions (RTM_NEWADDR, 20) never reach the watcher;
    # links (16), removals (21) and its own dumps (RTM_NEWADDR with NLM_F_MULTI) do.
    r = scenario(net, FILTERED)
    assert r["start"] == [str(V4), str(V6)], r
    assert r["carrier_lost_ms"] is not None and r["v4_removed_ms"] is not None, r
    assert 20 not in r["types"] and {16, 21} <= set(r["types"]), r
    assert r["redump"] == [str(V6)], r
