"""VIP manager: wire-format helpers and the fake anywhere, the netlink manager in namespaces.

The namespace lab: one namespace holds a bridge; each node has its own namespace joined to it
by a veth pair (eth0 inside the node). Nothing touches the root namespace.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hafailover.net import vip as vipmod
from hafailover.net.vip import FakeVipManager, Vip, VipError
from tests.unit.vipnet import VipNet

V4 = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
V6 = Vip(ipaddress.ip_interface("fd00:213::100/64"), "eth0")


# --------------------------------------------------------------------------------------------
# No privileges needed


def test_vip_value_object() -> None:
    assert str(V4) == "10.213.0.100/24 dev eth0"
    assert V4.ip == ipaddress.ip_address("10.213.0.100") and V4.version == 4 and V6.version == 6
    assert len({V4, Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")}) == 1
    with pytest.raises(ValueError):
        Vip(ipaddress.ip_interface("10.213.0.100/24"), "x" * 16)
    with pytest.raises(TypeError):
        Vip("10.213.0.100/24", "eth0")  # type: ignore[arg-type]


def test_rtattr_round_trip_and_alignment() -> None:
    packed = vipmod._rtattr(1, b"\x0a\xd5\x00\x64") + vipmod._rtattr(3, b"eth0\0")
    assert len(packed) % 4 == 0
    assert vipmod._parse_rtattrs(packed, 0) == {1: b"\x0a\xd5\x00\x64", 3: b"eth0\0"}


def test_extack_text_is_extracted() -> None:
    orig = vipmod._NLMSGHDR.pack(16, 20, 5, 7, 0)
    payload = b"\xea\xff\xff\xff" + orig + vipmod._rtattr(1, b"Invalid prefix\0")
    flags = vipmod.NLM_F_CAPPED | vipmod.NLM_F_ACK_TLVS
    assert vipmod._extack_text(payload, flags) == "Invalid prefix"
    assert vipmod._extack_text(payload, 0) == ""


def test_fake_manager_records_calls_and_state() -> None:
    stale = Vip(ipaddress.ip_interface("10.213.0.100/16"), "eth0")
    fake = FakeVipManager([V4, V6], stale=[stale])
    assert fake.cleanup_stale() == [stale]
    assert fake.present() == []
    fake.acquire()
    fake.acquire()
    assert fake.present() == [V4, V6] and fake.holding
    fake.release()
    assert fake.present() == [] and not fake.holding
    assert fake.interface_mac("eth0") == fake.interface_mac("eth0")
    fake.fail["acquire"] = VipError("boom")
    with pytest.raises(VipError, match="boom"):
        fake.acquire()
    fake.close()
    assert fake.calls[:4] == ["cleanup_stale", "present", "acquire", "acquire"]
    assert fake.calls[-1] == "close" and fake.closed


def test_daemon_side_modules_load_neither_scapy_nor_pyroute2() -> None:
    code = (
        "import sys, hafailover.net.vip, hafailover.net.announce;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scapy', 'pyroute2'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Namespace lab

PRELUDE = """
import asyncio, ipaddress, json, statistics, sys, time
from hafailover.net.vip import NetlinkVipManager, Vip, VipError
VIPS = [Vip(ipaddress.ip_interface(a), i) for a, i in json.loads(sys.argv[1])]
m = NetlinkVipManager(VIPS)
def out(x): print(json.dumps(x), flush=True)
"""


class Lab(VipNet):
    """The shared namespace network plus this file's helpers."""

    def py(self, ns: str, code: str, *args: str, timeout: float = 30) -> Any:
        """Run PRELUDE + code in `ns`; return the JSON of its last output line."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", PRELUDE + code, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def addrs(self, ns: str) -> list[str]:
        return self.ip("-n", ns, "-o", "addr", "show", "dev", "eth0").splitlines()

    def mac(self, ns: str) -> str:
        link = json.loads(self.ip("-n", ns, "-j", "link", "show", "dev", "eth0"))
        return str(link[0]["address"])


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(nodes=2)
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


def vips_arg(*vips: Vip) -> str:
    return json.dumps([[str(v.address), v.interface] for v in vips])


def lines_with(lines: list[str], needle: str) -> list[str]:
    return [line for line in lines if f" {needle} " in line]


@pytest.mark.netns
def test_acquire_is_idempotent_and_release_removes(lab: Lab) -> None:
    n1 = lab.nodes[0]
    code = "m.acquire(); m.acquire(); out([str(v) for v in m.present()])"
    assert lab.py(n1, code, vips_arg(V4, V6)) == [str(V4), str(V6)]
    addrs = lab.addrs(n1)
    (v4,) = lines_with(addrs, "10.213.0.100/24")
    assert "brd 10.213.0.255" in v4
    (v6,) = lines_with(addrs, "fd00:213::100/64")
    assert "tentative" not in v6 and "nodad" in v6
    assert lines_with(addrs, "10.213.0.11/24")  # the node's own address is untouched

    code = "m.release(); m.release(); out([str(v) for v in m.present()])"
    assert lab.py(n1, code, vips_arg(V4, V6)) == []
    addrs = lab.addrs(n1)
    assert not lines_with(addrs, "10.213.0.100/24") and not lines_with(addrs, "fd00:213::100/64")
    assert lines_with(addrs, "10.213.0.11/24") and lines_with(addrs, "fd00:213::11/64")


@pytest.mark.netns
def test_cleanup_stale_removes_leftovers_of_any_prefix(lab: Lab) -> None:
    n1 = lab.nodes[0]
    lab.ip("-n", n1, "addr", "add", "10.213.0.100/16", "dev", "eth0")
    lab.ip("-n", n1, "addr", "add", "fd00:213::100/120", "dev", "eth0", "nodad")
    code = "out([[str(v) for v in m.cleanup_stale()], m.cleanup_stale()])"
    removed, again = lab.py(n1, code, vips_arg(V4, V6))
    assert sorted(removed) == ["10.213.0.100/16 dev eth0", "fd00:213::100/120 dev eth0"]
    assert again == []
    addrs = lab.addrs(n1)
    assert not [a for a in addrs if "10.213.0.100/" in a or "fd00:213::100/" in a]
    assert lines_with(addrs, "10.213.0.11/24") and lines_with(addrs, "fd00:213::11/64")


@pytest.mark.netns
def test_interface_lookups_match_ip_link(lab: Lab) -> None:
    n1 = lab.nodes[0]
    code = "out([m.interface_mac('eth0').hex(':'), m.interface_index('eth0')])"
    mac, index = lab.py(n1, code, vips_arg(V4))
    link = json.loads(lab.ip("-n", n1, "-j", "link", "show", "dev", "eth0"))[0]
    assert mac == link["address"] and index == link["ifindex"]


@pytest.mark.netns
def test_errors_name_the_problem(lab: Lab) -> None:
    n1 = lab.nodes[0]
    code = """
errors = []
for call in (m.acquire, lambda: m.interface_mac("nope"), lambda: m.interface_mac("lo")):
    try:
        call()
    except VipError as e:
        errors.append(str(e))
m.release()  # a missing interface holds no VIPs: not an error
out(errors)
"""
    missing = Vip(ipaddress.ip_interface("10.213.0.101/24"), "nope")
    errors = lab.py(n1, code, vips_arg(V4, missing))
    assert len(errors) == 3
    assert "10.213.0.101/24 dev nope" in errors[0] and "does not exist" in errors[0]
    assert "'nope' does not exist" in errors[1]
    assert "'lo' has no hardware address" in errors[2]

    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to test the permission error")
    code = """
try:
    m.acquire()
    out("no error")
except VipError as e:
    out(str(e))
"""
    argv = ["ip", "netns", "exec", n1, "setpriv", "--reuid=65534", "--regid=65534",
            "--clear-groups", sys.executable, "-c", PRELUDE + code, vips_arg(V4)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert "permission denied" in done.stdout and "CAP_NET_ADMIN" in done.stdout, done


@pytest.mark.netns
def test_fast_enough_inside_a_running_event_loop(lab: Lab) -> None:
    # The daemon calls acquire()/release() from its asyncio loop (pyroute2's sync IPRoute
    # cannot run there), and the failover budget assumes they take well under a millisecond.
    code = """
async def main():
    acq, rel = [], []
    for _ in range(200):
        t0 = time.perf_counter(); m.acquire(); acq.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); m.release(); rel.append(time.perf_counter() - t0)
    m.close()
    return [statistics.median(acq) * 1e3, statistics.median(rel) * 1e3]
out(asyncio.run(main()))
"""
    acquire_ms, release_ms = lab.py(lab.nodes[0], code, vips_arg(V4, V6), timeout=60)
    print(f"\nacquire() median {acquire_ms:.3f} ms, release() median {release_ms:.3f} ms (v4+v6)")
    assert acquire_ms < 2.0 and release_ms < 2.0
