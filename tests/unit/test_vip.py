"""VIP port: the fake, the record and the value object anywhere; the netlink port in namespaces.

The namespace lab: one namespace holds a bridge; each node has its own namespace joined to it
by a veth pair (eth0 inside the node). Nothing touches the root namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafailover.errors import HafailoverError
from hafailover.net.record import record_vips, recorded_vips
from hafailover.net.vip import Vip, VipError, kernel_lifetime
from hafailover.net.vipfake import FakeVipPort
from tests.unit.vipnet import VipNet

V4 = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
V6 = Vip(ipaddress.ip_interface("fd00:213::100/64"), "eth0")


# --------------------------------------------------------------------------------------------
# No privileges needed


def test_vip_value_object() -> None:
    assert str(V4) == "10.213.0.100/24 dev eth0"
    assert V4.ip == ipaddress.ip_address("10.213.0.100") and V4.version == 4 and V6.version == 6
    assert V4.prefixlen == 24 and V6.prefixlen == 64
    assert len({V4, Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")}) == 1
    with pytest.raises(ValueError):
        Vip(ipaddress.ip_interface("10.213.0.100/24"), "x" * 16)
    with pytest.raises(TypeError):
        Vip("10.213.0.100/24", "eth0")  # type: ignore[arg-type]
    assert issubclass(VipError, HafailoverError)


def test_kernel_lifetime_rounds_up_to_whole_seconds() -> None:
    # The kernel counts lifetimes in whole seconds and refuses 0: never give it less than asked.
    assert kernel_lifetime(None) == 0xFFFFFFFF
    assert [kernel_lifetime(x) for x in (0.001, 1, 1.0001, 2.5, 3)] == [1, 1, 2, 3, 3]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            kernel_lifetime(bad)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_fake_port_state_calls_and_failures() -> None:
    stale = Vip(ipaddress.ip_interface("10.213.0.100/16"), "eth0")
    fake = FakeVipPort(stale=[stale])
    assert run(fake.cleanup_stale([V4, V6])) == [stale]
    assert run(fake.present([V4, V6])) == []
    run(fake.add([V4, V6], 3.0))
    run(fake.add([V4, V6], None))
    assert run(fake.present([V4, V6])) == [V4, V6] and fake.holds([V4, V6])
    assert fake.lifetimes[V4] is None

    fake.fail_next("renew", VipError("once"))
    with pytest.raises(VipError, match="once"):
        run(fake.renew([V4], 5))
    run(fake.renew([V4], 5))
    assert fake.lifetimes[V4] == 5

    fake.drop(V6)  # removed behind the port's back
    run(fake.renew([V4, V6], 5))
    assert fake.state == {V4, V6}  # re-created, as by the kernel (the link watcher reports it)
    run(fake.remove([V6]))

    fake.fail["add"] = VipError("boom")
    with pytest.raises(VipError, match="boom"):
        run(fake.add([V6], None))
    assert fake.state == {V4}  # a failed add leaves nothing behind
    del fake.fail["add"]
    fake.fail["remove"] = VipError("stuck")
    with pytest.raises(VipError, match="stuck"):
        run(fake.remove([V4]))
    del fake.fail["remove"]
    run(fake.remove([V4]))
    assert fake.state == set()
    assert fake.interface_mac("eth0") == fake.interface_mac("eth0")
    run(fake.close())
    with pytest.raises(VipError, match="closed"):
        run(fake.present([V4]))
    assert [name for name, _ in fake.calls[:4]] == ["cleanup_stale", "present", "add", "add"]
    assert fake.calls[2] == ("add", (V4, V6))


def test_fake_port_expires_addresses_like_the_kernel() -> None:
    now = [100.0]
    fake = FakeVipPort(clock=lambda: now[0])
    run(fake.add([V4], 1.5))  # the kernel rounds up: 2 s
    run(fake.add([V6], None))
    now[0] = 101.9
    assert fake.state == {V4, V6}
    run(fake.renew([V4], 2))
    now[0] = 103.8
    assert fake.state == {V4, V6}
    now[0] = 103.9
    assert fake.state == {V6}
    run(fake.renew([V4], 2))  # re-created, as by the kernel
    assert fake.state == {V4, V6}


def test_record_round_trip(tmp_path: Path) -> None:
    assert recorded_vips(tmp_path) is None
    path = record_vips(tmp_path, [V4, V6, V4])
    assert path == tmp_path / "vips.json"
    assert recorded_vips(tmp_path) == [V4, V6]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vips.json"]  # no temporary left
    record_vips(tmp_path, [V6])  # replaced whole
    assert recorded_vips(tmp_path) == [V6]
    assert json.loads(path.read_text())["version"] == 1


def test_record_refuses_a_bad_or_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "vips.json"
    for body in (
        "{",
        '{"version": 2, "vips": []}',
        '{"version": 1, "vips": [{"a": 1}]}',
        '{"version": 1, "vips": [{"address": "nope", "interface": "eth0"}]}',
    ):
        path.write_text(body)
        with pytest.raises(VipError, match=r"vips\.json"):
            recorded_vips(tmp_path)
    path.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(VipError, match="larger than"):
        recorded_vips(tmp_path)


def test_importing_the_vip_module_loads_neither_scapy_nor_pyroute2() -> None:
    # pyroute2 (~13 MB) is imported when a port first talks to the kernel, so CLI commands
    # that only read the record or the socket stay light; scapy never enters the daemon.
    code = (
        "import sys, hafailover.net.vip, hafailover.net.links, hafailover.net.announce;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scapy', 'pyroute2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Namespace lab

PRELUDE = """
import asyncio, ipaddress, json, statistics, sys, time
from hafailover.net.vip import NetlinkVipPort, Vip, VipError, interface_mac
VIPS = [Vip(ipaddress.ip_interface(a), i) for a, i in json.loads(sys.argv[1])]
def out(x): print(json.dumps(x), flush=True)
def strs(vips): return [str(v) for v in vips]
async def attempt(coro):
    try:
        await coro
        return "ok"
    except VipError as e:
        return str(e)
def main(body, make=NetlinkVipPort):
    async def runner():
        p = make()
        try:
            return await body(p)
        finally:
            await p.close()
    out(asyncio.run(runner()))
"""


class Lab(VipNet):
    def py(self, ns: str, code: str, *vips: Vip, timeout: float = 30) -> Any:
        return self.run_py(ns, PRELUDE + code, vips_arg(*vips), timeout=timeout)

    def entry(self, ns: str, address: str) -> dict[str, Any] | None:
        ip, prefix = address.split("/")
        for a in self.addrs(ns):
            if a["local"] == ip and a["prefixlen"] == int(prefix):
                return a
        return None


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(nodes=1)
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


def vips_arg(*vips: Vip) -> str:
    return json.dumps([[str(v.address), v.interface] for v in vips])


@pytest.mark.netns
def test_add_is_idempotent_and_remove_removes(lab: Lab) -> None:
    n1 = lab.nodes[0]
    code = """
async def body(p):
    await p.add(VIPS, None); await p.add(VIPS, None)
    return strs(await p.present(VIPS))
main(body)
"""
    assert lab.py(n1, code, V4, V6) == [str(V4), str(V6)]
    v4, v6 = lab.entry(n1, "10.213.0.100/24"), lab.entry(n1, "fd00:213::100/64")
    assert v4 is not None and v4["broadcast"] == "10.213.0.255"
    assert v4["valid_life_time"] == 0xFFFFFFFF
    assert v6 is not None and v6.get("nodad") and not v6.get("tentative")

    code = """
async def body(p):
    await p.remove(VIPS); await p.remove(VIPS)
    return strs(await p.present(VIPS))
main(body)
"""
    assert lab.py(n1, code, V4, V6) == []
    assert lab.entry(n1, "10.213.0.100/24") is None and lab.entry(n1, "fd00:213::100/64") is None
    # The node's own addresses are untouched.
    assert lab.entry(n1, "10.213.0.11/24") and lab.entry(n1, "fd00:213::11/64")


@pytest.mark.netns
def test_lifetimes_are_set_and_renewed_and_a_gone_address_is_re_created(lab: Lab) -> None:
    n1 = lab.nodes[0]
    lab.py(n1, "main(lambda p: p.add(VIPS, 30.2))", V4, V6)  # rounded up to 31 s
    for address in ("10.213.0.100/24", "fd00:213::100/64"):
        e = lab.entry(n1, address)
        assert e is not None and 29 <= e["valid_life_time"] <= 31, e
        assert e["preferred_life_time"] == e["valid_life_time"]

    lab.py(n1, "main(lambda p: p.renew(VIPS, 300))", V4, V6)
    for address in ("10.213.0.100/24", "fd00:213::100/64"):
        e = lab.entry(n1, address)
        assert e is not None and 298 <= e["valid_life_time"] <= 300, e

    # Removed behind the port's back (the link watcher reports that): the renewal re-creates
    # them, the same addresses as add() makes (broadcast, no DAD), with the new lifetime.
    lab.ip("-n", n1, "addr", "del", "fd00:213::100/64", "dev", "eth0")
    lab.ip("-n", n1, "addr", "del", "10.213.0.100/24", "dev", "eth0")
    code = "main(lambda p: attempt(p.renew(VIPS, 200)))"
    assert lab.py(n1, code, V4, V6) == "ok"
    v4, v6 = lab.entry(n1, "10.213.0.100/24"), lab.entry(n1, "fd00:213::100/64")
    assert v4 is not None and v4["broadcast"] == "10.213.0.255", v4
    assert v6 is not None and v6.get("nodad") and not v6.get("tentative"), v6
    for e in (v4, v6):
        assert 198 <= e["valid_life_time"] <= 200 and e["preferred_life_time"] <= 200, e

    # add() on a present address sets the new lifetime (here: back to forever).
    lab.py(n1, "main(lambda p: p.add(VIPS, None))", V4)
    e = lab.entry(n1, "10.213.0.100/24")
    assert e is not None and e["valid_life_time"] == 0xFFFFFFFF


@pytest.mark.netns
def test_a_failed_add_takes_back_what_it_added(lab: Lab) -> None:
    n1 = lab.nodes[0]
    missing = Vip(ipaddress.ip_interface("10.213.0.101/24"), "nope")
    code = "main(lambda p: attempt(p.add(VIPS, 10)))"
    error = lab.py(n1, code, V4, V6, missing)
    assert error == "cannot add 10.213.0.101/24 dev nope: interface does not exist"
    assert lab.entry(n1, "10.213.0.100/24") is None and lab.entry(n1, "fd00:213::100/64") is None

    # An address the kernel refuses: the error is the kernel's reason, in one sentence.
    bad = Vip(ipaddress.ip_interface("fd00:213::100/64"), "lo")
    lab.ip("-n", n1, "link", "set", "lo", "down")
    lab.ip("netns", "exec", n1, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
    error = lab.py(n1, code, V4, bad)
    assert error == "cannot add fd00:213::100/64 dev lo: ipv6: IPv6 is disabled on this device"
    assert lab.entry(n1, "10.213.0.100/24") is None


@pytest.mark.netns
def test_cleanup_stale_removes_leftovers_of_any_prefix(lab: Lab) -> None:
    n1 = lab.nodes[0]
    lab.add_address(n1, "10.213.0.100/16")
    lab.add_address(n1, "fd00:213::100/120")
    code = """
async def body(p):
    return [strs(await p.cleanup_stale(VIPS)), strs(await p.cleanup_stale(VIPS))]
main(body)
"""
    removed, again = lab.py(n1, code, V4, V6)
    assert sorted(removed) == ["10.213.0.100/16 dev eth0", "fd00:213::100/120 dev eth0"]
    assert again == []
    assert not [a for a in lab.addrs(n1) if a["local"] in ("10.213.0.100", "fd00:213::100")]
    assert lab.entry(n1, "10.213.0.11/24") and lab.entry(n1, "fd00:213::11/64")


@pytest.mark.netns
def test_interface_mac_matches_ip_link_and_errors_name_the_problem(lab: Lab) -> None:
    n1 = lab.nodes[0]
    code = """
errors = []
for name in ("nope", "lo"):
    try:
        interface_mac(name)
    except VipError as e:
        errors.append(str(e))
out([interface_mac("eth0").hex(":"), errors])
"""
    mac, errors = lab.py(n1, code)
    link = json.loads(lab.ip("-n", n1, "-j", "link", "show", "dev", "eth0"))[0]
    assert mac == link["address"]
    assert errors == [
        "interface 'nope' does not exist in this network namespace",
        "interface 'lo' has no hardware address",
    ]


@pytest.mark.netns
def test_permission_error_names_the_capability(lab: Lab) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to test the permission error")
    code = PRELUDE + "main(lambda p: attempt(p.add(VIPS, None)))"
    argv = [
        "ip",
        "netns",
        "exec",
        lab.nodes[0],
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        code,
        vips_arg(V4),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert "cannot add 10.213.0.100/24 dev eth0: permission denied" in done.stdout, done
    assert "CAP_NET_ADMIN" in done.stdout


@pytest.mark.netns
def test_each_refused_renewal_is_reported_with_the_kernels_reason(lab: Lab) -> None:
    # The renewals of one call travel in one datagram; every answer is read. One port renews,
    # then the process drops to nobody: every replace (encoded once, sent again) is refused,
    # twice in a row on the same port (nothing is left unread in between).
    n1 = lab.nodes[0]
    code = """
import os
async def body(p):
    await p.add(VIPS, 30)
    first = await attempt(p.renew(VIPS, 300))
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
    return [first, await attempt(p.renew(VIPS, 30)), await attempt(p.renew(VIPS, 30))]
main(body)
"""
    first, refused, again = lab.py(n1, code, V4, V6)
    reason = "permission denied (needs CAP_NET_ADMIN in this network namespace)"
    assert first == "ok"
    assert refused == again == f"cannot renew {V4}: {reason}; cannot renew {V6}: {reason}"
    for address in ("10.213.0.100/24", "fd00:213::100/64"):
        e = lab.entry(n1, address)
        assert e is not None and 290 <= e["valid_life_time"] <= 300, e  # not renewed to 30


@pytest.mark.netns
def test_a_renewal_of_many_vips_goes_in_several_datagrams(lab: Lab) -> None:
    # 150 VIPs: three datagrams of at most 64 requests; every answer is read, the one refused
    # in the middle (IPv6 off on eth0) is named with the kernel's reason, the others are
    # renewed (one removed meanwhile is re-created), twice in a row on the same port.
    n1 = lab.nodes[0]
    many = [Vip(ipaddress.ip_interface(f"10.213.1.{i}/16"), "eth0") for i in range(1, 151)]
    lab.py(n1, "main(lambda p: p.add(VIPS, 30))", *many)
    lab.ip("-n", n1, "addr", "del", "10.213.1.100/16", "dev", "eth0")
    lab.ip("netns", "exec", n1, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    refused = Vip(ipaddress.ip_interface("fd00:213::1:1/64"), "eth0")
    code = """
async def body(p):
    return [await attempt(p.renew(VIPS, 300)), await attempt(p.renew(VIPS, 300))]
main(body)
"""
    reason = f"cannot renew {refused}: ipv6: IPv6 is disabled on this device"
    assert lab.py(n1, code, *many[:70], refused, *many[70:]) == [reason, reason]
    lifetimes = {
        a["local"]: a["valid_life_time"]
        for a in lab.addrs(n1)
        if a["local"].startswith("10.213.1.")
    }
    assert len(lifetimes) == 150 and "10.213.1.100" in lifetimes
    assert all(298 <= t <= 300 for t in lifetimes.values()), lifetimes


@pytest.mark.netns
def test_a_renewal_reads_one_answer_a_datagram_and_names_a_failure_by_asking_again(
    lab: Lab,
) -> None:
    # 150 VIPs renewed: three datagrams of requests, three answers read (each request ACKed,
    # that was 150). Then one of them refused: the first answer is an error, and the second
    # pass, one answer each, names it; the others are renewed all the same.
    n1 = lab.nodes[0]
    many = [Vip(ipaddress.ip_interface(f"10.213.1.{i}/16"), "eth0") for i in range(1, 151)]
    refused = Vip(ipaddress.ip_interface("fd00:213::1:1/64"), "eth0")
    lab.py(n1, "main(lambda p: p.add(VIPS, 30))", *many)
    code = """
async def body(p):
    ipr = await p._open()
    read = []
    put = ipr.msg_queue.put_nowait  # where pyroute2 queues each datagram read
    def counting(tag, data):
        read.append(tag)
        return put(tag, data)
    ipr.msg_queue.put_nowait = counting
    ok = await attempt(p.renew(VIPS[:150], 200))
    answers_ok = len(read)
    os.system("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1")
    read.clear()
    refused = await attempt(p.renew(VIPS, 300))
    return [ok, answers_ok, refused, len(read)]
import os
main(body)
"""
    ok, answers_ok, why, answers_refused = lab.py(n1, code, *many, refused)
    assert ok == "ok" and answers_ok == 3
    assert why == f"cannot renew {refused}: ipv6: IPv6 is disabled on this device"
    # The first pass ends at the error (up to three answers), the second reads all 151.
    assert 152 <= answers_refused <= 154, answers_refused
    lifetimes = [a["valid_life_time"] for a in lab.addrs(n1) if a["local"].startswith("10.213.1.")]
    assert len(lifetimes) == 150 and all(298 <= t <= 300 for t in lifetimes), lifetimes


@pytest.mark.netns
def test_a_renewal_without_any_answer_fails_every_vip_after_one_timeout(lab: Lab) -> None:
    # Requests that get no answer at all (here never sent): every VIP is named with the
    # timeout, after one wait, not a second one asking each again.
    n1 = lab.nodes[0]
    code = """
async def body(p):
    await p.add(VIPS, 30)
    ipr = await p._open()
    ipr.send = lambda data: None  # lost on the way: the kernel never answers
    t0 = time.monotonic()
    why = await attempt(p.renew(VIPS, 300))
    return [why, time.monotonic() - t0]
def make():
    return NetlinkVipPort(timeout=1.0)
main(body, make)
"""
    why, took = lab.py(n1, code, V4, V6)
    reason = "no netlink answer within 1s"
    assert why == f"cannot renew {V4}: {reason}; cannot renew {V6}: {reason}"
    assert 0.9 <= took < 1.8, took
    for address in ("10.213.0.100/24", "fd00:213::100/64"):
        e = lab.entry(n1, address)
        assert e is not None and e["valid_life_time"] <= 30, e  # not renewed


EXPIRY = """
async def body(p):
    runs = []
    for _ in range(int(sys.argv[2])):
        await p.add(VIPS, float(sys.argv[3]))
        t0, gone = time.monotonic(), {}
        while len(gone) < len(VIPS) and time.monotonic() - t0 < 10:
            here = await p.present(VIPS)
            for v in VIPS:
                if v not in here and str(v) not in gone:
                    gone[str(v)] = time.monotonic() - t0
            await asyncio.sleep(0.005)
        await p.remove(VIPS)
        runs.append(gone)
    return runs
main(body)
"""


@pytest.mark.netns
def test_the_kernel_removes_an_address_whose_lifetime_ran_out(lab: Lab) -> None:
    # The safety net of a frozen holder. Runs and lifetime from the environment for the
    # measurement in the report: HAFAILOVER_EXPIRY_RUNS=5.
    runs = int(os.environ.get("HAFAILOVER_EXPIRY_RUNS", "2"))
    lifetime = 2
    argv = (vips_arg(V4, V6), str(runs), str(lifetime))
    result = lab.run_py(lab.nodes[0], PRELUDE + EXPIRY, *argv, timeout=30 + 12 * runs)
    for family, vip in (("IPv4", V4), ("IPv6", V6)):
        times = sorted(r[str(vip)] for r in result)
        print(
            f"\n{family}: valid_lft {lifetime} s, gone after "
            f"{', '.join(f'{t:.3f}' for t in times)} s (median {times[len(times) // 2]:.3f})"
        )
        # The kernel deletes up to HZ/50 early and up to about a second late.
        assert all(lifetime - 0.05 <= t <= lifetime + 1.5 for t in times), times


LATENCY = """
async def body(p):
    add, rem = [], []
    import resource
    user = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime
    cpu = user()
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); await p.add(VIPS, None); add.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); await p.remove(VIPS); rem.append(time.perf_counter() - t0)
    cpu = (user() - cpu) / (2 * len(add))
    return [statistics.median(add) * 1e3, statistics.median(rem) * 1e3, cpu * 1e3]
main(body)
"""


@pytest.mark.netns
def test_fast_enough_inside_a_running_event_loop(lab: Lab) -> None:
    # One request each (the kernel's answer is the verification). Wall time depends on the
    # machine's load (and on other namespaces' users of the kernel's global RTNL lock); the
    # user CPU the call costs in this process (pyroute2's Python) does not: that is bounded.
    n = int(os.environ.get("HAFAILOVER_LATENCY_RUNS", "200"))
    argv = (vips_arg(V4), str(n))
    add_ms, remove_ms, cpu_ms = lab.run_py(lab.nodes[0], PRELUDE + LATENCY, *argv, timeout=120)
    print(
        f"\nadd() median {add_ms:.3f} ms, remove() median {remove_ms:.3f} ms, "
        f"{cpu_ms:.3f} ms user CPU per call (one IPv4 address, n={n}, "
        f"load {os.getloadavg()[0]:.1f})"
    )
    assert cpu_ms < 3.0 and add_ms < 50 and remove_ms < 50


RENEWAL = """
async def body(p):
    import resource
    user = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_utime
    await p.add(VIPS, 30)
    took = []
    cpu = user()
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); await p.renew(VIPS, 30); took.append(time.perf_counter() - t0)
    cpu = (user() - cpu) / len(took)
    return [statistics.median(took) * 1e3, cpu * 1e3]
main(body)
"""


@pytest.mark.netns
def test_renewal_cost_does_not_grow_with_the_namespaces_other_addresses(lab: Lab) -> None:
    # renew() lists no addresses (it once checked presence with a dump: unfiltered, 200
    # addresses on lo cost 22 ms of pyroute2 decoding per renewal here): what it costs must
    # not depend on the namespace's other addresses.
    n1 = lab.nodes[0]
    batch = "".join(
        f"addr add 10.215.0.{i + 1}/32 dev lo\naddr add fd00:215::{i + 1}/128 dev lo\n"
        for i in range(100)
    )
    done = subprocess.run(
        ["ip", "-n", n1, "-batch", "-"], input=batch, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    n = int(os.environ.get("HAFAILOVER_LATENCY_RUNS", "200"))
    for vip in (V4, V6):
        median_ms, cpu_ms = lab.run_py(n1, PRELUDE + RENEWAL, vips_arg(vip), str(n), timeout=120)
        print(
            f"\nrenew() {vip}: median {median_ms:.3f} ms, {cpu_ms:.3f} ms user CPU per call "
            f"(200 other addresses in the namespace, n={n}, load {os.getloadavg()[0]:.1f})"
        )
        assert cpu_ms < 3.0


@pytest.mark.netns
def test_release_vips_uses_the_record_without_reading_the_configuration(
    lab: Lab, tmp_path: Path
) -> None:
    n1 = lab.nodes[0]
    lab.add_address(n1, "10.213.0.100/16")  # a leftover of an older prefix length goes too
    lab.add_address(n1, "fd00:213::100/64")
    record_vips(tmp_path, [V4, V6])
    broken = tmp_path / "broken.yaml"
    broken.write_bytes(b"nodes: [\0\f" + b"x" * 100_000)  # never parsed
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
    argv = [
        "ip",
        "netns",
        "exec",
        n1,
        sys.executable,
        "-m",
        "hafailover",
        "release-vips",
        "-c",
        str(broken),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "removed 10.213.0.100/16 dev eth0",
        "removed fd00:213::100/64 dev eth0",
    ]
    assert not [a for a in lab.addrs(n1) if a["local"] in ("10.213.0.100", "fd00:213::100")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout) == (0, "no recorded VIP was present\n"), done
