"""Craft gratuitous ARP / unsolicited neighbour advertisement frames with scapy, out of process.

scapy costs ~27 MB of RSS (~54 MB for `scapy.all`) and ~0.35 s to import, so the daemon never
imports it: at start-up `hafailover.net.announce.build_frames` runs

    python -m hafailover.net.craft  < [{"address": "10.213.0.100/24", "interface": "eth0",
                                        "mac": "02:00:00:00:00:01", "router": false}, ...]

and this prints, in request order, [{"address": ..., "interface": ..., "frames": [hex, ...]}].
The daemon then only writes the prebuilt bytes to a packet socket when it takes over.

scapy is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ALL_NODES_MAC = "33:33:00:00:00:01"  # Ethernet mapping of ff02::1 (RFC 2464)
ALL_NODES = "ff02::1"
# Shortest Ethernet frame without FCS. NICs usually pad by themselves, but not all do.
MIN_FRAME = 60


class CraftError(ValueError):
    """A request entry that cannot be turned into frames."""


def _mac_text(mac: str | bytes) -> str:
    raw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6 or raw[0] & 1:
        raise CraftError(f"not a unicast Ethernet address: {mac!r}")
    return raw.hex(":")


def _pad(frame: bytes) -> bytes:
    return frame + b"\0" * (MIN_FRAME - len(frame)) if len(frame) < MIN_FRAME else frame


def garp_frames(address: str, mac: str | bytes) -> list[bytes]:
    """Gratuitous ARP for an IPv4 address: a request and a reply, both broadcast.

    Both because hosts differ in which they honour. Sender and target protocol address are the
    VIP. The request's target hardware address is zero (RFC 5227); the reply's is our own MAC,
    which Linux requires before it treats an unsolicited reply as gratuitous (RFC 5944 4.6).
    """
    from scapy.layers.l2 import ARP, Ether

    ip = str(ipaddress.IPv4Address(address.split("/")[0]))
    hw = _mac_text(mac)
    request = Ether(dst=BROADCAST_MAC, src=hw) / ARP(
        op=1, hwsrc=hw, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip
    )
    reply = Ether(dst=BROADCAST_MAC, src=hw) / ARP(op=2, hwsrc=hw, psrc=ip, hwdst=hw, pdst=ip)
    return [_pad(bytes(request)), _pad(bytes(reply))]


def unsolicited_na_frame(address: str, mac: str | bytes, router: bool = False) -> bytes:
    """Unsolicited neighbour advertisement (RFC 4861 7.2.6) for an IPv6 address.

    To all-nodes, hop limit 255 (receivers drop anything else), Override set so that caches
    replace the old MAC, Solicited clear, and the target link-layer address option carrying our
    MAC. Router mirrors whether this node forwards IPv6: advertising R=0 for an address that
    hosts use as a router makes Linux drop their routes through it.
    """
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether

    ip = str(ipaddress.IPv6Address(address.split("/")[0]))
    hw = _mac_text(mac)
    frame = (
        Ether(dst=ALL_NODES_MAC, src=hw)
        / IPv6(src=ip, dst=ALL_NODES, hlim=255)
        / ICMPv6ND_NA(R=int(router), S=0, O=1, tgt=ip)
        / ICMPv6NDOptDstLLAddr(lladdr=hw)
    )
    return bytes(frame)


def frames_for(address: str, mac: str | bytes, router: bool = False) -> list[bytes]:
    """Every frame that announces `address` (optionally with /prefix) at `mac`."""
    try:
        version = ipaddress.ip_interface(address).version
    except ValueError as e:
        raise CraftError(str(e)) from None
    if version == 4:
        return garp_frames(address, mac)
    return [unsolicited_na_frame(address, mac, router)]


def craft(request: Any) -> list[dict[str, Any]]:
    """Answer a decoded JSON request (see the module docstring)."""
    if not isinstance(request, list):
        raise CraftError("request must be a JSON list")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(request):
        if not isinstance(entry, dict):
            raise CraftError(f"entry {i} must be an object")
        try:
            address, interface, mac = entry["address"], entry["interface"], entry["mac"]
        except KeyError as e:
            raise CraftError(f"entry {i} lacks {e.args[0]!r}") from None
        if not all(isinstance(x, str) for x in (address, interface, mac)):
            raise CraftError(f"entry {i}: address, interface and mac must be strings")
        frames = [f.hex() for f in frames_for(address, mac, bool(entry.get("router", False)))]
        out.append({"address": address, "interface": interface, "frames": frames})
    return out


def main() -> int:
    try:
        reply = craft(json.load(sys.stdin))
    except (CraftError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"hafailover.net.craft: {e}", file=sys.stderr)
        return 2
    json.dump(reply, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
