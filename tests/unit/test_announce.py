"""Announcements and conflict detection.

Frame content is checked by parsing the crafted bytes with scapy (here, in the test process;
never in the daemon). Scheduling is checked with fake sockets. In network namespaces: the frames
arrive at the peer, a client's neighbour table follows a takeover, and the conflict watcher
fires when a peer claims our VIP. Nothing touches the root namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hafailover.net import craft
from hafailover.net.announce import (
    AnnounceError,
    ConflictWatcher,
    FakeAnnouncer,
    RawAnnouncer,
    build_frames,
    parse_arp_claim,
    parse_na_claim,
)
from hafailover.net.vip import Vip
from tests.unit.vipnet import VipNet

V4 = Vip(ipaddress.ip_interface("10.213.0.100/24"), "eth0")
V6 = Vip(ipaddress.ip_interface("fd00:213::100/64"), "eth0")
MAC = "02:13:00:00:00:01"
OTHER = bytes.fromhex("021300000002")


# --------------------------------------------------------------------------------------------
# Frame content (no privileges needed)


def test_garp_request_and_reply() -> None:
    request, reply = (Ether(f) for f in craft.garp_frames("10.213.0.100/24", MAC))
    for frame, op, hwdst in ((request, 1, "00:00:00:00:00:00"), (reply, 2, MAC)):
        assert len(bytes(frame)) == 60
        assert frame.dst == "ff:ff:ff:ff:ff:ff" and frame.src == MAC and frame.type == 0x0806
        arp = frame[ARP]
        assert (arp.op, arp.hwsrc, arp.hwdst) == (op, MAC, hwdst)
        assert arp.psrc == arp.pdst == "10.213.0.100"


@pytest.mark.parametrize("router", [False, True])
def test_unsolicited_na(router: bool) -> None:
    raw = craft.unsolicited_na_frame("fd00:213::100", MAC, router=router)
    frame = Ether(raw)
    assert frame.dst == "33:33:00:00:00:01" and frame.src == MAC
    ip6 = frame[IPv6]
    assert (ip6.src, ip6.dst, ip6.hlim) == ("fd00:213::100", "ff02::1", 255)
    na = frame[ICMPv6ND_NA]
    assert (na.O, na.S, na.R, na.tgt) == (1, 0, int(router), "fd00:213::100")
    assert frame[ICMPv6NDOptDstLLAddr].lladdr == MAC
    rebuilt = frame.copy()
    del rebuilt[ICMPv6ND_NA].cksum
    assert Ether(bytes(rebuilt))[ICMPv6ND_NA].cksum == na.cksum  # checksum is right


def test_build_frames_runs_the_craft_subprocess() -> None:
    frames = build_frames([V4, V6], {"eth0": bytes.fromhex(MAC.replace(":", ""))})
    assert [len(frames[V4]), len(frames[V6])] == [2, 1]
    assert frames[V4] == craft.garp_frames(str(V4.address), MAC)
    assert frames[V6] == [craft.unsolicited_na_frame(str(V6.address), MAC)]


def test_craft_errors_are_reported() -> None:
    with pytest.raises(AnnounceError, match="no Ethernet address"):
        build_frames([V4], {})
    argv = [sys.executable, "-m", "hafailover.net.craft"]
    bad = json.dumps([{"address": "10.213.0.100", "interface": "eth0", "mac": "ff:ff:ff:ff:ff:ff"}])
    done = subprocess.run(argv, input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a unicast Ethernet address" in done.stderr
    done = subprocess.run(argv, input="{", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "hafailover.net.craft:" in done.stderr


def test_parsers_read_crafted_frames() -> None:
    mac = bytes.fromhex(MAC.replace(":", ""))
    for frame in craft.garp_frames("10.213.0.100", MAC):
        assert parse_arp_claim(frame) == (ipaddress.IPv4Address("10.213.0.100"), mac)
    probe = bytes(Ether(src=MAC) / ARP(op=1, hwsrc=MAC, psrc="0.0.0.0", pdst="10.213.0.100"))
    assert parse_arp_claim(probe) is None
    assert parse_arp_claim(craft.garp_frames("10.213.0.100", MAC)[0][:30]) is None
    icmp = craft.unsolicited_na_frame("fd00:213::100", MAC)[54:]  # past Ethernet + IPv6
    assert parse_na_claim(icmp) == (ipaddress.IPv6Address("fd00:213::100"), mac)
    assert parse_na_claim(icmp[:24]) is None  # no target link-layer option
    assert parse_na_claim(icmp[:24] + b"\x02\x00" + bytes(6)) is None  # zero-length option


def test_conflict_rules_without_sockets() -> None:
    got: list[str] = []
    own = bytes.fromhex(MAC.replace(":", ""))
    watcher = ConflictWatcher([V4, V6], own, got.append, quiet_period=60)
    theirs = craft.garp_frames("10.213.0.100", OTHER)[0]
    mine = craft.garp_frames("10.213.0.100", own)[1]
    unrelated = craft.garp_frames("10.213.0.7", OTHER)[0]
    watcher.check_arp("eth0", theirs)
    assert got == []  # not holding: someone else owning the VIP is normal
    watcher.set_holding(True)
    for frame in (mine, unrelated):
        watcher.check_arp("eth0", frame)
    watcher.check_arp("eth1", theirs)  # the VIP is configured on eth0 only
    assert got == []
    watcher.check_arp("eth0", theirs)
    watcher.check_arp("eth0", theirs)  # within quiet_period: one report per burst
    watcher.check_na("eth0", craft.unsolicited_na_frame("fd00:213::100", OTHER)[54:])
    assert got == ["10.213.0.100", "fd00:213::100"] and watcher.conflicts == 2

    def broken(address: str) -> None:
        raise RuntimeError(address)

    quiet = ConflictWatcher([V4], own, broken, quiet_period=0)
    quiet.set_holding(True)
    quiet.check_arp("eth0", theirs)  # a failing callback must not escape
    assert quiet.conflicts == 1


# --------------------------------------------------------------------------------------------
# Scheduling with fake sockets


class RecordingSocket:
    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sent: list[tuple[float, bytes]] = []
        self.closed = False

    def send(self, data: bytes, /) -> int:
        self.sent.append((time.monotonic(), data))
        return len(data)

    def close(self) -> None:
        self.closed = True


def fake_announcer(**kwargs: Any) -> tuple[RawAnnouncer, list[RecordingSocket]]:
    sockets: list[RecordingSocket] = []

    def factory(ifname: str) -> RecordingSocket:
        sockets.append(RecordingSocket(ifname))
        return sockets[-1]

    frames = {V4: [b"arp-request", b"arp-reply"], V6: [b"na"]}
    return RawAnnouncer([V4, V6], frames=frames, socket_factory=factory, **kwargs), sockets


def test_announce_sends_now_then_repeats_and_cancel_stops() -> None:
    async def scenario() -> None:
        ann, sockets = fake_announcer(count=3, interval=0.02)
        with pytest.raises(AnnounceError):
            ann.announce()
        await ann.start()
        (sock,) = sockets
        t0 = time.perf_counter()
        ann.announce()
        took = time.perf_counter() - t0
        assert [d for _, d in sock.sent] == [b"arp-request", b"arp-reply", b"na"]
        assert took < 0.005
        await asyncio.sleep(0.2)
        assert len(sock.sent) == 9 and not ann.pending
        times = [t for t, _ in sock.sent[::3]]
        assert all(b - a >= 0.015 for a, b in itertools.pairwise(times))

        ann.announce()
        ann.cancel()
        await asyncio.sleep(0.1)
        assert len(sock.sent) == 12  # the immediate burst only
        ann.close()
        assert sock.closed

    asyncio.run(scenario())


def test_refresh_runs_only_while_holding() -> None:
    async def scenario() -> None:
        ann, sockets = fake_announcer(count=1, interval=0.01, refresh=0.03)
        await ann.start()
        ann.set_holding(True)
        await asyncio.sleep(0.1)
        refreshed = len(sockets[0].sent)
        assert refreshed >= 6  # at least two refresh bursts of three frames
        ann.set_holding(False)
        assert not ann.pending
        await asyncio.sleep(0.1)
        assert len(sockets[0].sent) == refreshed
        ann.close()

    asyncio.run(scenario())


def test_fake_announcer() -> None:
    fake = FakeAnnouncer()
    with pytest.raises(AnnounceError):
        fake.announce()
    asyncio.run(fake.start())
    fake.set_holding(True)
    fake.announce()
    fake.cancel()
    fake.close()
    assert fake.calls == ["start", "set_holding(True)", "announce", "cancel", "close"]
    assert fake.announcements == 1 and not fake.holding and fake.closed


# --------------------------------------------------------------------------------------------
# Namespace lab: bridge namespace + nodes, eth0 in each (10.213.0.1N/24, fd00:213::1N/64)

PRELUDE = """
import asyncio, ipaddress, json, statistics, sys, time
from hafailover.net.announce import ConflictWatcher, RawAnnouncer
from hafailover.net.vip import NetlinkVipPort, Vip, interface_mac
VIPS = [Vip(ipaddress.ip_interface(a), i) for a, i in json.loads(sys.argv[1])]
def out(x): print(json.dumps(x), flush=True)
"""

ADD = "asyncio.run(NetlinkVipPort().add(VIPS, None)); out(0)"
REMOVE = "asyncio.run(NetlinkVipPort().remove(VIPS)); out(0)"

CAPTURE = """
import json, socket, sys, time
mac, want, seconds = bytes.fromhex(sys.argv[1].replace(":", "")), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 3))
s.settimeout(0.1)
print("ready", flush=True)
got, deadline = [], time.monotonic() + seconds
while len(got) < want and time.monotonic() < deadline:
    try:
        f = s.recv(2048)
    except TimeoutError:
        continue
    if f[6:12] == mac and (f[12:14] == b"\\x08\\x06" or (f[12:14] == b"\\x86\\xdd" and f[20] == 58 and f[54] == 136)):
        got.append([time.monotonic(), f.hex()])
print(json.dumps(got), flush=True)
"""  # noqa: E501

ANNOUNCE = """
async def main():
    ann = RawAnnouncer(VIPS, count=int(sys.argv[2]), interval=0.05)
    await ann.start()
    took = []
    for _ in range(int(sys.argv[3])):
        t0 = time.perf_counter(); ann.announce(); took.append(time.perf_counter() - t0)
        await asyncio.sleep(0.05 * int(sys.argv[2]) + 0.1)
    ann.close()
    return [statistics.median(took) * 1e3, max(took) * 1e3, ann.frames_sent, ann.send_errors]
out(asyncio.run(main()))
"""


class Lab(VipNet):
    """The shared namespace network plus this file's helpers."""

    def argv(self, ns: str, code: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]

    def py(self, ns: str, code: str, *args: str, timeout: float = 30) -> Any:
        """Run PRELUDE + code in `ns`; return the JSON of its last output line."""
        argv = self.argv(ns, PRELUDE + code, *args)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def spawn(self, ns: str, code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.argv(ns, code, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def mac(self, ns: str) -> str:
        link = json.loads(self.ip("-n", ns, "-j", "link", "show", "dev", "eth0"))
        return str(link[0]["address"])

    def neigh(self, ns: str, address: str) -> str | None:
        entries = json.loads(self.ip("-n", ns, "-j", "neigh", "show", "dev", "eth0", address))
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline().strip()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(nodes=3)  # two nodes and a client
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


def vips_arg(*vips: Vip) -> str:
    return json.dumps([[str(v.address), v.interface] for v in vips])


@pytest.mark.netns
def test_peer_receives_the_announcements(lab: Lab) -> None:
    n1, n2, _ = lab.nodes
    mac = lab.mac(n1)
    lab.py(n1, ADD, vips_arg(V4, V6))
    capture = lab.spawn(n2, CAPTURE, mac, "9", "10")
    assert read_line(capture, 10) == "ready"
    _, max_ms, sent, errors = lab.py(n1, ANNOUNCE, vips_arg(V4, V6), "3", "1")
    out, _ = capture.communicate(timeout=15)
    frames = [Ether(bytes.fromhex(h)) for _, h in json.loads(out.strip().splitlines()[-1])]
    assert (sent, errors) == (9, 0)
    assert max_ms < 5.0

    arps = [f[ARP] for f in frames if ARP in f]
    assert sorted(a.op for a in arps) == [1, 1, 1, 2, 2, 2]
    for a in arps:
        assert (a.hwsrc, a.psrc, a.pdst) == (mac, "10.213.0.100", "10.213.0.100")
        assert a.hwdst == (mac if a.op == 2 else "00:00:00:00:00:00")
    nas = [f for f in frames if ICMPv6ND_NA in f]
    assert len(nas) == 3
    for f in nas:
        na = f[ICMPv6ND_NA]
        assert (f[IPv6].dst, f[IPv6].hlim, na.tgt) == ("ff02::1", 255, "fd00:213::100")
        assert (na.O, na.S) == (1, 0) and f[ICMPv6NDOptDstLLAddr].lladdr == mac


@pytest.mark.netns
def test_announce_leaves_quickly(lab: Lab) -> None:
    n1 = lab.nodes[0]
    lab.py(n1, ADD, vips_arg(V4, V6))
    median_ms, max_ms, sent, errors = lab.py(n1, ANNOUNCE, vips_arg(V4, V6), "1", "30")
    print(f"\nannounce() median {median_ms:.3f} ms, max {max_ms:.3f} ms (3 frames)")
    assert (sent, errors) == (90, 0) and max_ms < 5.0


@pytest.mark.netns
def test_client_neighbour_tables_follow_a_takeover(lab: Lab) -> None:
    n1, n2, client = lab.nodes
    vips = vips_arg(V4, V6)
    lab.py(n1, ADD, vips)
    for address in ("10.213.0.100", "fd00:213::100"):
        ping = ["ip", "netns", "exec", client, "ping", "-c1", "-W2", address]
        subprocess.run(ping, check=True, capture_output=True, timeout=10)
    old, new = lab.mac(n1), lab.mac(n2)
    assert lab.neigh(client, "10.213.0.100") == old and lab.neigh(client, "fd00:213::100") == old

    lab.py(n1, REMOVE, vips)
    lab.py(n2, ADD, vips)
    # Without an announcement the client keeps sending to the old holder.
    assert lab.neigh(client, "10.213.0.100") == old and lab.neigh(client, "fd00:213::100") == old

    lab.py(n2, ANNOUNCE, vips, "2", "1")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen = (lab.neigh(client, "10.213.0.100"), lab.neigh(client, "fd00:213::100"))
        if seen == (new, new):
            break
        time.sleep(0.05)
    assert seen == (new, new)


WATCH = """
async def main():
    loop = asyncio.get_running_loop()
    await NetlinkVipPort().add(VIPS, None)
    ann = RawAnnouncer(VIPS, count=2, interval=0.05); await ann.start()
    got = []
    w = ConflictWatcher(VIPS, interface_mac("eth0"), got.append, quiet_period=0.0)
    w.start()
    out("phase1")  # not holding yet: the peer's announcements are no conflict
    await loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.sleep(0.2)
    before = list(got)
    w.set_holding(True); ann.set_holding(True); ann.announce()
    await asyncio.sleep(0.3)
    own = list(got)  # our own announcements are no conflict either
    out("phase2")
    await loop.run_in_executor(None, sys.stdin.readline)
    deadline = loop.time() + 5
    while loop.time() < deadline and not {"10.213.0.100", "fd00:213::100"} <= set(got):
        await asyncio.sleep(0.05)
    w.close(); ann.close()
    return {"before": before, "own": own, "got": got}
out(asyncio.run(main()))
"""


@pytest.mark.netns
def test_conflict_watcher_fires_when_a_peer_claims_our_vip(lab: Lab) -> None:
    n1, n2, _ = lab.nodes
    vips = vips_arg(V4, V6)
    watcher = lab.spawn(n1, PRELUDE + WATCH, vips)
    assert watcher.stdin is not None
    assert read_line(watcher, 20) == '"phase1"'
    lab.py(n2, ANNOUNCE, vips, "1", "1")  # n2 claims the VIPs (GARP + NA from its MAC)
    watcher.stdin.write("go\n")
    watcher.stdin.flush()
    assert read_line(watcher, 10) == '"phase2"'
    lab.py(n2, ANNOUNCE, vips, "1", "1")
    watcher.stdin.write("go\n")
    watcher.stdin.flush()
    out, err = watcher.communicate(timeout=15)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["before"] == [] and result["own"] == [], err
    assert set(result["got"]) == {"10.213.0.100", "fd00:213::100"}, err
