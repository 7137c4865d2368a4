"""TRANSITIONAL: the former hand-packed rtnetlink VIP manager (synchronous), kept only until the
engine and daemon use `hafailover.net.vip.VipPort`; deleted then. New code must not use it.
"""
from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from hafailover.net.vip import IPAddress, Vip, VipError

log = logging.getLogger(__name__)

class VipManager(Protocol):
    """Port: puts the configured VIPs on and off this node's interfaces (synchronous, fast)."""

    def acquire(self) -> None:
        """Add every VIP; already present is fine. Raises VipError if any is missing after."""

    def release(self) -> None:
        """Remove every VIP; already absent is fine. Raises VipError if any is left after."""

    def present(self) -> list[Vip]:
        """The configured VIPs that are on their interface right now."""

    def cleanup_stale(self) -> list[Vip]:
        """Remove leftovers of the configured VIP addresses (any prefix length); return them."""

    def interface_mac(self, ifname: str) -> bytes:
        """The interface's hardware address (6 bytes on Ethernet)."""

    def interface_index(self, ifname: str) -> int:
        """The interface's ifindex in this namespace."""

    def close(self) -> None:
        """Release the netlink socket."""


# --------------------------------------------------------------------------------------------
# rtnetlink wire format (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFLA_ADDRESS = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type

# A reply to one request never needs more datagrams than this; the bound keeps a confused
# kernel conversation from spinning forever (each recv is also bounded by the socket timeout).
_MAX_DATAGRAMS = 4096
_DUMP_ATTEMPTS = 3


def _align(n: int) -> int:
    return (n + 3) & ~3


def _rtattr(kind: int, data: bytes) -> bytes:
    length = _RTATTR.size + len(data)
    return _RTATTR.pack(length, kind) + data + b"\0" * (_align(length) - length)


def _parse_rtattrs(buf: bytes, offset: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(buf):
        length, kind = _RTATTR.unpack_from(buf, offset)
        if length < _RTATTR.size:
            break
        # The top bits are NLA_F_NESTED / NLA_F_NET_BYTEORDER flags, not part of the type.
        attrs[kind & 0x3FFF] = buf[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return attrs


class _NetlinkError(OSError):
    pass


@dataclass(frozen=True)
class _Addr:
    ip: IPAddress
    prefixlen: int
    index: int
    flags: int


class _Rtnl:
    """One NETLINK_ROUTE socket, used synchronously: send a request, read its reply."""

    def __init__(self, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    # Extended ACKs give the kernel's reason text; strict checking makes the
                    # kernel filter address dumps by interface. Older kernels lack them: fine.
                    self._sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise
        self._timeout = timeout
        self._buf = bytearray(1 << 16)
        self._seq = itertools.count((os.getpid() & 0xFFFF) << 16)

    def close(self) -> None:
        self._sock.close()

    def request(
        self, msg_type: int, flags: int, body: bytes, dump: bool = False
    ) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, payload) replies. Raises _NetlinkError."""
        # A dump ends with NLMSG_DONE; anything else asks for an ACK so success is explicit.
        flags |= NLM_F_DUMP if dump else NLM_F_ACK
        seq = next(self._seq) & 0xFFFFFFFF
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0)
        self._sock.send(msg + body)
        replies: list[tuple[int, bytes]] = []
        interrupted = False
        for _ in range(_MAX_DATAGRAMS):
            try:
                n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except TimeoutError:
                raise _NetlinkError(
                    errno.ETIMEDOUT, f"no netlink reply within {self._timeout:g}s"
                ) from None
            if n > len(self._buf):
                raise _NetlinkError(errno.EMSGSIZE, f"netlink reply of {n} bytes truncated")
            data = bytes(self._buf[:n])
            offset = 0
            while offset + _NLMSGHDR.size <= n:
                length, kind, mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise _NetlinkError(errno.EBADMSG, "malformed netlink message")
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += _align(length)
                if mseq != seq:
                    continue  # a late reply to an earlier request that timed out
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        reason = _extack_text(payload, mflags) or os.strerror(code)
                        raise _NetlinkError(code, reason)
                    return replies  # plain ACK
                if kind == NLMSG_DONE:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code > 0:
                        raise _NetlinkError(code, os.strerror(code))
                    if interrupted:
                        raise _NetlinkError(errno.EINTR, "netlink dump interrupted")
                    return replies
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                replies.append((kind, payload))
        raise _NetlinkError(errno.EPROTO, "netlink reply did not terminate")

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytes]]:
        # A dump is interrupted when the table changes mid-way; the kernel says so and a retry
        # gives a consistent view.
        for attempt in range(_DUMP_ATTEMPTS):
            try:
                return self.request(msg_type, 0, body, dump=True)
            except _NetlinkError as e:
                if e.errno != errno.EINTR or attempt == _DUMP_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def addresses(self, index: int) -> list[_Addr]:
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)
        out: list[_Addr] = []
        for kind, payload in self.dump(RTM_GETADDR, body):
            if kind != RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
                continue
            family, prefixlen, hflags, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
            if ifindex != index:
                continue  # kernels without strict checking dump every interface
            attrs = _parse_rtattrs(payload, _IFADDRMSG.size)
            # IPv4 keeps the local address in IFA_LOCAL (IFA_ADDRESS is the peer on
            # point-to-point links); IPv6 uses IFA_ADDRESS unless a peer is set.
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            flags = struct.unpack("=I", attrs[IFA_FLAGS])[0] if IFA_FLAGS in attrs else hflags
            out.append(_Addr(ipaddress.ip_address(raw), prefixlen, ifindex, flags))
        return out

    def add_address(self, index: int, vip: Vip) -> None:
        family, packed = _family(vip.ip), vip.ip.packed
        if vip.version == 4:
            flags = 0
            attrs = _rtattr(IFA_LOCAL, packed) + _rtattr(IFA_ADDRESS, packed)
            # Same broadcast as `ip addr add ... brd +`; /31 and /32 have none (RFC 3021).
            if vip.address.network.prefixlen <= 30:
                attrs += _rtattr(IFA_BROADCAST, vip.address.network.broadcast_address.packed)
        else:
            # No duplicate address detection: the address is usable at once instead of
            # staying tentative for ~1 s. Split-brain is prevented by the lease, not by DAD.
            flags = IFA_F_NODAD
            attrs = _rtattr(IFA_ADDRESS, packed) + _rtattr(IFA_FLAGS, struct.pack("=I", flags))
        body = _IFADDRMSG.pack(family, vip.address.network.prefixlen, flags, 0, index) + attrs
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def del_address(self, index: int, ip: IPAddress, prefixlen: int) -> None:
        family = _family(ip)
        kind = IFA_LOCAL if family == socket.AF_INET else IFA_ADDRESS
        body = _IFADDRMSG.pack(family, prefixlen, 0, 0, index) + _rtattr(kind, ip.packed)
        self.request(RTM_DELADDR, 0, body)

    def link_address(self, index: int) -> bytes | None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        for kind, payload in self.request(RTM_GETLINK, 0, body):
            if kind == RTM_NEWLINK and len(payload) >= _IFINFOMSG.size:
                return _parse_rtattrs(payload, _IFINFOMSG.size).get(IFLA_ADDRESS)
        return None


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _extack_text(payload: bytes, flags: int) -> str:
    """The kernel's human-readable reason from an extended ACK, or ''."""
    if not flags & NLM_F_ACK_TLVS or len(payload) < 4 + _NLMSGHDR.size:
        return ""
    offset = 4 + _NLMSGHDR.size
    if not flags & NLM_F_CAPPED:
        offset = 4 + _align(_NLMSGHDR.unpack_from(payload, 4)[0])
    msg = _parse_rtattrs(payload, offset).get(NLMSGERR_ATTR_MSG, b"")
    return msg.rstrip(b"\0").decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------


class NetlinkVipManager:
    """Real VipManager. Keeps one netlink socket open; not thread-safe (one asyncio loop)."""

    def __init__(self, vips: Iterable[Vip], *, timeout: float = 1.0) -> None:
        self._vips = tuple(dict.fromkeys(vips))
        try:
            self._nl: _Rtnl | None = _Rtnl(timeout)
        except OSError as e:
            raise VipError(f"cannot open a netlink socket: {e.strerror or e}") from e

    @property
    def vips(self) -> tuple[Vip, ...]:
        return self._vips

    def __enter__(self) -> NetlinkVipManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _rtnl(self) -> _Rtnl:
        if self._nl is None:
            raise VipError("VIP manager is closed")
        return self._nl

    def interface_index(self, ifname: str) -> int:
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise VipError(
                f"interface {ifname!r} does not exist in this network namespace"
            ) from None

    def interface_mac(self, ifname: str) -> bytes:
        index = self.interface_index(ifname)
        try:
            mac = self._rtnl().link_address(index)
        except OSError as e:
            raise _vip_error(f"reading the address of {ifname!r}", e) from e
        if not mac or not any(mac):
            raise VipError(f"interface {ifname!r} has no hardware address")
        return mac

    def _by_interface(self) -> Iterator[tuple[str, list[Vip]]]:
        groups: dict[str, list[Vip]] = {}
        for vip in self._vips:
            groups.setdefault(vip.interface, []).append(vip)
        yield from groups.items()

    def _addresses(self, ifname: str) -> list[_Addr] | None:
        """Addresses on `ifname`, or None if it does not exist."""
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return None
        try:
            return self._rtnl().addresses(index)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise _vip_error(f"listing addresses of {ifname!r}", e) from e

    def acquire(self) -> None:
        errors: list[str] = []
        for ifname, vips in self._by_interface():
            try:
                index = self.interface_index(ifname)
            except VipError as e:
                errors.append(f"cannot add {', '.join(map(str, vips))}: {e}")
                continue
            failed: set[Vip] = set()
            for vip in vips:
                try:
                    self._rtnl().add_address(index, vip)
                except OSError as e:
                    if e.errno != errno.EEXIST:  # already there: acquire is idempotent
                        errors.append(str(_vip_error(f"adding {vip}", e)))
                        failed.add(vip)
            # Trust the kernel's table rather than the ACK: this also catches an address that
            # is there but unusable (IPv6 duplicate address detection failed).
            found = {(a.ip, a.prefixlen): a for a in self._addresses(ifname) or []}
            for vip in vips:
                if vip in failed:
                    continue
                addr = found.get((vip.ip, vip.address.network.prefixlen))
                if addr is None:
                    errors.append(f"{vip} is not present after adding it")
                elif addr.flags & IFA_F_DADFAILED:
                    errors.append(f"{vip}: duplicate address detected, another host uses it")
                elif addr.flags & IFA_F_TENTATIVE:
                    log.warning("%s is tentative (added earlier with DAD); not usable yet", vip)
        if errors:
            raise VipError("; ".join(errors))

    def release(self) -> None:
        # Every VIP is attempted even after a failure: holding one too many is the dangerous
        # direction, so none may be skipped.
        errors: list[str] = []
        for ifname, vips in self._by_interface():
            try:
                index = socket.if_nametoindex(ifname)
            except OSError:
                log.info("interface %s is gone, so are its VIPs", ifname)
                continue
            for vip in vips:
                try:
                    self._rtnl().del_address(index, vip.ip, vip.address.network.prefixlen)
                except OSError as e:
                    if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                        errors.append(str(_vip_error(f"removing {vip}", e)))
            left = {(a.ip, a.prefixlen) for a in self._addresses(ifname) or []}
            for vip in vips:
                if (vip.ip, vip.address.network.prefixlen) in left:
                    errors.append(f"{vip} is still present after removing it")
        if errors:
            raise VipError("; ".join(errors))

    def present(self) -> list[Vip]:
        out: list[Vip] = []
        for ifname, vips in self._by_interface():
            found = {(a.ip, a.prefixlen) for a in self._addresses(ifname) or []}
            out += [v for v in vips if (v.ip, v.address.network.prefixlen) in found]
        return out

    def cleanup_stale(self) -> list[Vip]:
        removed: list[Vip] = []
        errors: list[str] = []
        for ifname, vips in self._by_interface():
            wanted = {v.ip for v in vips}
            for addr in self._addresses(ifname) or []:
                if addr.ip not in wanted:
                    continue
                # Keep the prefix length found, which may differ from today's configuration.
                stale = Vip(ipaddress.ip_interface(f"{addr.ip}/{addr.prefixlen}"), ifname)
                try:
                    self._rtnl().del_address(addr.index, addr.ip, addr.prefixlen)
                except OSError as e:
                    if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV):  # else: gone already
                        errors.append(str(_vip_error(f"removing stale {stale}", e)))
                    continue
                removed.append(stale)
            left = [a for a in self._addresses(ifname) or [] if a.ip in wanted]
            errors += [f"stale {a.ip}/{a.prefixlen} dev {ifname} is still present" for a in left]
        if removed:
            log.warning("removed stale VIPs: %s", ", ".join(map(str, removed)))
        if errors:
            raise VipError("; ".join(errors))
        return removed


def _vip_error(what: str, e: OSError) -> VipError:
    reason = e.strerror or str(e)
    if e.errno in (errno.EPERM, errno.EACCES):
        reason = f"permission denied ({reason}); needs CAP_NET_ADMIN in this network namespace"
    elif e.errno == errno.ENODEV:
        reason = "interface does not exist in this network namespace"
    return VipError(f"{what}: {reason}")


class FakeVipManager:
    """In-memory VipManager for tests: records every call and keeps the address state."""

    def __init__(
        self,
        vips: Iterable[Vip],
        *,
        macs: Mapping[str, bytes] | None = None,
        stale: Iterable[Vip] = (),
    ) -> None:
        self.vips = tuple(dict.fromkeys(vips))
        self.macs = dict(macs or {})
        self.state: set[Vip] = set(stale)  # every address currently "on" an interface
        self.calls: list[str] = []
        # Method name -> error raised by every call of it, to simulate netlink failures.
        self.fail: dict[str, VipError] = {}
        self.closed = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.closed:
            raise VipError("VIP manager is closed")
        if name in self.fail:
            raise self.fail[name]

    def acquire(self) -> None:
        self._call("acquire")
        self.state.update(self.vips)

    def release(self) -> None:
        self._call("release")
        self.state.difference_update(self.vips)

    def present(self) -> list[Vip]:
        self._call("present")
        return [v for v in self.vips if v in self.state]

    def cleanup_stale(self) -> list[Vip]:
        self._call("cleanup_stale")
        wanted = {(v.ip, v.interface) for v in self.vips}
        removed = sorted(
            (v for v in self.state if (v.ip, v.interface) in wanted), key=lambda v: str(v)
        )
        self.state.difference_update(removed)
        return removed

    @property
    def holding(self) -> bool:
        return all(v in self.state for v in self.vips)

    def interface_mac(self, ifname: str) -> bytes:
        self._call("interface_mac")
        if ifname not in self.macs:
            # Locally administered, derived from the name so that it is stable across calls.
            self.macs[ifname] = bytes([0x02, 0, 0, 0, 0, (sum(ifname.encode()) % 254) + 1])
        return self.macs[ifname]

    def interface_index(self, ifname: str) -> int:
        self._call("interface_index")
        return sorted({v.interface for v in self.vips} | {ifname}).index(ifname) + 2

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True
