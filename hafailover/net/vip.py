"""Floating addresses (VIPs) on local interfaces, through pyroute2's asyncio netlink API.

The daemon runs inside its node's network namespace, so everything here acts on the current one.
Every call of `VipPort` is a coroutine for the daemon's running loop: pyroute2 0.9's
`AsyncIPRoute` sends and reads its netlink socket through that loop (its synchronous `IPRoute`
drives a private loop and cannot be called from inside a running one).

Kernel-backed lifetime. `add(vips, lifetime)` and `renew(vips, lifetime)` give each address a
valid and preferred lifetime (`ip addr ... valid_lft L preferred_lft L`), so that a daemon that
is frozen, wedged or starved loses its addresses without doing anything. What the kernel does
with it (net/ipv4/devinet.c `check_lifetime`, net/ipv6/addrconf.c `addrconf_verify_rtnl`):

* lifetimes are whole seconds (`struct ifa_cacheinfo`, u32); a valid lifetime of 0 is refused
  (EINVAL), and a preferred lifetime above the valid one too. `kernel_lifetime()` rounds a
  requested lifetime up to whole seconds, at least 1.
* an address is deleted by a per-namespace delayed work item (deferrable: on a fully idle CPU it
  may run late) once `(now - tstamp + HZ/50) / HZ >= valid_lft`, i.e. up to 20 ms early;
  the work is re-armed for the next expiry, rounded up to a whole second when that costs less
  than HZ/4, and never sooner than 1 s (ADDRCONF_TIMER_FUZZ_MAX) after its last run. Adding or
  replacing an address runs it at once. So an address added or renewed at t with lifetime L
  disappears in [t + L - 0.02 s, about t + L + 1 s]; measured here: see tests/unit/test_vip.py.
* replacing an address (RTM_NEWADDR with NLM_F_REPLACE) resets `tstamp`, which is what
  `renew()` relies on. The kernel re-creates an address that is gone (it does so even without
  NLM_F_CREATE: `ip addr change` on 6.18, both families), and `renew()` lets it: it makes no
  presence check (that dump and its decoding were a third of a renewal's CPU). That is safe
  because the engine renews only the VIPs of groups it holds under a valid lease, and the
  removal is still seen: `LinkWatcher` reports every RTM_DELADDR of a watched VIP, and the
  engine re-adds (EEXIST then replace, if the renewal came first), re-announces and records it.
* a renewal's replaces travel in datagrams of at most BATCH requests. Each request is encoded
  by pyroute2 once per VIP, interface and lifetime, with a sequence number of its own held
  from pyroute2's pool while it is cached (as `NetlinkRequest.prepare` does it), and its bytes
  are sent again on each renewal: no re-encoding and no sequence number allocation per call.
* a renewal asks for one answer a datagram, not one a VIP (`_send_one_ack`): every request
  of the datagram carries the last one's sequence number, and only the last asks for an ACK.
  The kernel handles a datagram's requests in order and queues an error for every request
  that fails, ACK or not, so the first answer to that number is either an error (some
  renewal failed: they are all sent again, one ACK each, to learn which) or the last one's
  ACK, which vouches for all of them. No answer within the timeout fails them all at once
  (asking again would wait as long again). Each answer read costs the loop a pass and pyroute2's
  parsing (~0.15 ms here): with 17 VIPs held, that was 0.3 % of a core a second.
  lab/bench_vip_renew.py measures a renewal.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hafailover.errors import HafailoverError

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

INFINITY_LIFE_TIME = 0xFFFFFFFF
# Beyond this the kernel treats a lifetime as infinite anyway (addrconf_timeout_fixup).
MAX_LIFETIME = 0x7FFFFFFF // 1000
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
OWN_REMOVAL_WINDOW = 10.0
BATCH = 64  # requests a datagram (renew)
RENEWALS_CACHED = 1024  # encoded renewal requests kept (each holds a sequence number)


@dataclass(frozen=True)
class Vip:
    """One floating address: `address` carries the prefix length, e.g. 10.213.0.100/24."""

    address: IPInterface
    interface: str

    def __post_init__(self) -> None:
        if not isinstance(self.address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            raise TypeError(f"Vip.address must be an IPv4Interface/IPv6Interface: {self.address!r}")
        # IFNAMSIZ is 16 including the terminating NUL.
        if not self.interface or len(self.interface) > 15 or "/" in self.interface:
            raise ValueError(f"invalid interface name {self.interface!r}")

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def prefixlen(self) -> int:
        return self.address.network.prefixlen

    @property
    def version(self) -> int:
        return self.address.version

    def __str__(self) -> str:
        return f"{self.address} dev {self.interface}"


class VipError(HafailoverError):
    """A VIP could not be added, renewed, removed or inspected; the message says which and why."""


class VipPort(Protocol):
    """Port: puts VIPs on and off this node's interfaces. Every method runs in the daemon's loop.

    Calls are not meant to overlap (the engine runs them one at a time); the real port
    serialises them anyway.
    """

    async def add(self, vips: Sequence[Vip], lifetime: float | None) -> None:
        """Add every address with valid/preferred lifetime `lifetime` seconds (None: forever).

        An address already present gets the new lifetime. If any address cannot be added, the
        ones this call added are removed again and VipError (one sentence) is raised.
        """

    async def renew(self, vips: Sequence[Vip], lifetime: float) -> None:
        """Restart the lifetime of every address (an address that is gone is re-created).

        No presence check: a removal behind our back is the link watcher's to report (see the
        module docstring). VipError (naming each VIP) if its interface does not exist or the
        kernel refuses one; the other addresses are renewed all the same.
        """

    async def remove(self, vips: Sequence[Vip]) -> None:
        """Remove every address; VipError unless every one is verifiably absent afterwards."""

    async def present(self, vips: Sequence[Vip]) -> list[Vip]:
        """The given VIPs that are on their interface right now (same prefix length)."""

    async def cleanup_stale(self, vips: Sequence[Vip]) -> list[Vip]:
        """Remove these VIPs' addresses with any prefix length; return what was removed."""

    def interface_mac(self, ifname: str) -> bytes:
        """The interface's hardware address (6 bytes on Ethernet); synchronous (an ioctl)."""

    async def close(self) -> None:
        """Release the netlink socket."""


def kernel_lifetime(lifetime: float | None) -> int:
    """Seconds to give the kernel: rounded up (never shorter than asked), at least 1."""
    if lifetime is None:
        return INFINITY_LIFE_TIME
    if not lifetime > 0 or math.isinf(lifetime):
        raise ValueError(f"a VIP lifetime must be a positive number of seconds, not {lifetime!r}")
    return min(max(1, math.ceil(lifetime)), MAX_LIFETIME)


def _by_interface(vips: Iterable[Vip]) -> dict[str, list[Vip]]:
    groups: dict[str, list[Vip]] = {}
    for vip in dict.fromkeys(vips):
        groups.setdefault(vip.interface, []).append(vip)
    return groups


def _names(vips: Iterable[Vip]) -> str:
    return ", ".join(map(str, vips))


# --------------------------------------------------------------------------------------------
# Hardware address (an ioctl: no netlink round trip, usable outside the loop)

SIOCGIFHWADDR = 0x8927


def interface_mac(ifname: str) -> bytes:
    """The hardware address of `ifname` in this namespace. Raises VipError."""
    import fcntl
    import struct

    if not ifname or len(ifname) > 15:
        raise VipError(f"invalid interface name {ifname!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise VipError(
                    f"interface {ifname!r} does not exist in this network namespace"
                ) from None
            raise VipError(f"cannot read the hardware address of {ifname!r}: {e.strerror}") from e
    mac = res[18:24]
    if not any(mac):
        raise VipError(f"interface {ifname!r} has no hardware address")
    return mac


# --------------------------------------------------------------------------------------------
# The real port


@dataclass(frozen=True)
class _Addr:
    ip: IPAddress
    prefixlen: int
    flags: int


class _Failed(Exception):
    """A netlink request failed: `code` is the errno, the message a short reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(eq=False)
class _Prepared:
    """A request pyroute2 has encoded: its `NetlinkRequest` after `prepare()` (which holds a
    sequence number from the socket's pool and that number's answer queue) and its bytes.
    Sent any number of times while each send's answer is read; `release()` gives both back."""

    request: Any
    data: bytes
    key: tuple[int, Vip, int] | None = None  # its entry in the renewal cache, if cached
    released: bool = False

    @property
    def seq(self) -> int:
        return int(self.request.msg_seq)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.request.cleanup()  # the number is banned for a while (late answers)


def _reason(e: BaseException) -> str:
    """One short clause: the kernel's own words (extended ACK) when it gave some."""
    code = getattr(e, "code", None) or getattr(e, "errno", None)
    if code == errno.EPERM:
        return "permission denied (needs CAP_NET_ADMIN in this network namespace)"
    if code == errno.ENODEV:
        return "interface does not exist in this network namespace"
    args: tuple[object, ...] = e.args
    text = args[1] if len(args) >= 2 else None
    if isinstance(text, str) and text:
        return text.rstrip(".")  # NetlinkError(code, text): the text of the kernel's extack
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(e) or type(e).__name__


_SEQ = struct.Struct("=I")  # nlmsg_seq, host order, at offset 8 of the header
_FLAGS = struct.Struct("=H")  # nlmsg_flags, at offset 6
_NLM_F_ACK = 0x4


def _unacked(data: bytes, seq: bytes) -> bytes:
    """An encoded netlink request with sequence number `seq` (packed) and no NLM_F_ACK."""
    (flags,) = _FLAGS.unpack_from(data, 6)
    return b"".join((data[:6], _FLAGS.pack(flags & ~_NLM_F_ACK), seq, data[12:]))


def _every_message(msg: object) -> bool:
    return True


def _newaddr(index: int, ip: IPAddress, prefixlen: int, valid: int, *, replace: bool) -> Any:
    """RTM_NEWADDR as pyroute2's `addr("add" or "replace", ...)` builds it (same bytes).

    IPv4 gets the broadcast of `ip addr add ... brd +` (none on /31 and /32, RFC 3021); IPv6 no
    DAD: usable at once, not tentative for ~1 s (the lease, not DAD, prevents split-brain).
    """
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWADDR
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    msg["prefixlen"] = prefixlen
    msg["index"] = index
    cacheinfo = {"ifa_valid": valid, "ifa_preferred": valid, "cstamp": 0, "tstamp": 0}
    attrs: list[list[Any]] = [["IFA_CACHEINFO", cacheinfo], ["IFA_ADDRESS", str(ip)]]
    if ip.version == 4:
        if prefixlen <= 30:
            net = ipaddress.ip_network(f"{ip}/{prefixlen}", strict=False)
            attrs.append(["IFA_BROADCAST", str(net.broadcast_address)])
        attrs.append(["IFA_LOCAL", str(ip)])
    else:
        attrs.append(["IFA_FLAGS", IFA_F_NODAD])
    msg["attrs"] = attrs
    msg["header"]["type"] = RTM_NEWADDR
    mode = NLM_F_REPLACE if replace else NLM_F_EXCL
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | mode
    return msg


class NetlinkVipPort:
    """Real VipPort on pyroute2's `AsyncIPRoute`, opened lazily inside the running loop."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()  # binds to the running loop on first use
        self._closed = False
        self._removed: dict[Vip, float] = {}  # removed by this port -> when
        self._ifname: dict[int, str] = {}  # index -> name, as last looked up
        self._renewals: dict[tuple[int, Vip, int], _Prepared] = {}  # (index, vip, seconds)

    # -- plumbing

    async def _open(self) -> AsyncIPRoute:
        if self._closed:
            raise VipError("the VIP port is closed")
        if self._ipr is None:
            from pyroute2 import AsyncIPRoute

            try:
                # strict_check: dumps are filtered by the kernel (see _addresses).
                ipr = AsyncIPRoute(ext_ack=True, strict_check=True)
            except OSError as e:
                raise VipError(f"cannot open a netlink socket: {_reason(e)}") from e
            try:
                await ipr.setup_endpoint()  # the loop reads it from now on
            except OSError as e:
                ipr.close()
                raise VipError(f"cannot open a netlink socket: {_reason(e)}") from e
            self._ipr = ipr
        return self._ipr

    async def _call(self, coro: Any) -> Any:
        """Await one pyroute2 request; its failures become `_Failed` (timeouts included)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await coro
        except TimeoutError:
            raise _Failed(errno.ETIMEDOUT, f"no netlink answer within {self._timeout:g}s") from None
        except OSError as e:  # the socket itself
            raise _Failed(e.errno or 0, _reason(e)) from e
        except Exception as e:
            code = getattr(e, "code", None)
            if not isinstance(code, int):  # not a NetlinkError: a bug, let it show
                raise
            raise _Failed(code, _reason(e)) from e

    async def _index(self, ifname: str) -> int | None:
        # An ioctl (SIOCGIFINDEX) rather than `link_lookup()`: the same answer from the same
        # namespace without a netlink round trip through pyroute2 (~0.3 ms of its Python each).
        if self._closed:
            raise VipError("the VIP port is closed")
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return None
        self._ifname[index] = ifname
        return index

    async def _addresses(self, index: int, vips: Iterable[Vip] = ()) -> list[_Addr]:
        """The addresses of interface `index`; only of the VIPs' family if they share one."""
        ipr = await self._open()
        families = {socket.AF_INET if v.version == 4 else socket.AF_INET6 for v in vips}
        family = families.pop() if len(families) == 1 else socket.AF_UNSPEC

        async def dump() -> list[_Addr]:
            out: list[_Addr] = []
            # With index in the request itself (a `dump_filter` keeps pyroute2 from turning it
            # into a filter of its own) and strict checking, the kernel sends only this
            # interface's addresses. The check below stays for a kernel that would not filter.
            request = ipr.addr("dump", index=index, family=family, dump_filter=_every_message)
            async for msg in await request:
                if msg.get("index") != index:
                    continue
                raw = msg.get("local") or msg.get("address")
                if raw is None:
                    continue
                flags = msg.get("IFA_FLAGS")
                flags = msg.get("flags", 0) if flags is None else flags
                out.append(_Addr(ipaddress.ip_address(raw), int(msg["prefixlen"]), int(flags)))
            return out

        try:
            return await self._call(dump())  # type: ignore[no-any-return]
        except _Failed as e:
            raise VipError(f"cannot list the addresses of interface {index}: {e}") from e

    async def _prepare(self, msg: Any) -> _Prepared:
        """Encode a request once, the way pyroute2 sends one (its own `NetlinkRequest`)."""
        from pyroute2.netlink.nlsocket import NetlinkRequest

        ipr = await self._open()
        request = NetlinkRequest(ipr, msg)  # a sequence number from the socket's pool
        await request.prepare()  # encodes; the number's answer queue
        return _Prepared(request, bytes(request.msg.data))

    async def _renewal(self, index: int, vip: Vip, seconds: int) -> _Prepared:
        """The request renewing `vip` on `index`, encoded once and sent on every renewal."""
        key = (index, vip, seconds)
        prepared = self._renewals.get(key)
        if prepared is None:
            msg = _newaddr(index, vip.ip, vip.prefixlen, seconds, replace=True)
            prepared = await self._prepare(msg)
            prepared.key = key
            self._renewals[key] = prepared
        return prepared

    def _drop(self, prepared: _Prepared) -> None:
        if prepared.key is not None and self._renewals.get(prepared.key) is prepared:
            del self._renewals[prepared.key]
        prepared.release()

    def _drop_renewals(self) -> None:
        for prepared in list(self._renewals.values()):
            self._drop(prepared)

    async def _send(self, requests: Sequence[tuple[Vip, _Prepared]]) -> list[tuple[Vip, _Failed]]:
        """Send prepared requests, BATCH a datagram, and read every answer; the failed ones.

        As pyroute2's `nlm_request_batch`, which however stops at the first error or drops
        every error unnamed: here each request keeps the kernel's own answer, read with
        pyroute2's `get()` from its sequence number's queue. A request whose answer was not
        read (a timeout, a socket error) is dropped: its number is not used again for a while,
        so a late answer cannot pass for the answer to a later send.
        """
        ipr = await self._open()
        failed: list[tuple[Vip, _Failed]] = []
        done = 0  # requests whose answer was read

        async def exchange() -> None:
            nonlocal done
            # At most BATCH a datagram, so that their answers fit the receive buffer.
            for start in range(0, len(requests), BATCH):
                chunk = requests[start : start + BATCH]
                ipr.send(b"".join(p.data for _, p in chunk))
                for vip, p in chunk:
                    answers = ipr.get(msg_seq=p.seq, exception_factory=p.request.exception_factory)
                    try:
                        async with aclosing(answers):
                            async for _ in answers:
                                pass
                    except Exception as e:
                        code = getattr(e, "code", None)
                        if not isinstance(code, int):  # not a NetlinkError: a bug, let it show
                            raise
                        failed.append((vip, _Failed(code, _reason(e))))
                    done += 1

        try:
            await self._call(exchange())
        except _Failed as e:
            return [(vip, e) for vip, _ in requests]
        finally:
            for _, p in requests[done:]:
                self._drop(p)
        return failed

    async def _send_one_ack(self, requests: Sequence[tuple[Vip, _Prepared]]) -> _Failed | None:
        """Send prepared requests, BATCH a datagram, each datagram answered once (module
        docstring); None if every request succeeded, else the first failure (an error answer,
        a timeout, a socket error), without saying whose: `_send` tells that."""
        ipr = await self._open()
        for start in range(0, len(requests), BATCH):
            chunk = requests[start : start + BATCH]
            last = chunk[-1][1]
            seq = _SEQ.pack(last.seq)
            quiet = [_unacked(p.data, seq) for _, p in chunk[:-1]]
            ipr.send(b"".join((*quiet, last.data)))  # the last one as encoded: with NLM_F_ACK
            answers = ipr.get(msg_seq=last.seq, exception_factory=last.request.exception_factory)

            async def read(answers: Any = answers) -> None:
                async with aclosing(answers):
                    async for _ in answers:
                        pass

            try:
                await self._call(read())
            except _Failed as e:
                # The number's queue may still get the other answers: never used again soon.
                self._drop(last)
                return e
        return None

    async def _request(
        self, command: str, index: int, ip: IPAddress, prefixlen: int, lifetime: int | None = None
    ) -> None:
        ipr = await self._open()
        if command == "del":
            self._note_removal(index, ip, prefixlen)
            await self._call(ipr.addr("del", index=index, address=str(ip), prefixlen=prefixlen))
            return
        valid = INFINITY_LIFE_TIME if lifetime is None else lifetime
        msg = _newaddr(index, ip, prefixlen, valid, replace=command == "replace")
        vip = Vip(ipaddress.ip_interface(f"{ip}/{prefixlen}"), self._ifname.get(index, "?"))
        prepared = await self._prepare(msg)
        try:
            failures = await self._send([(vip, prepared)])
        finally:
            prepared.release()
        for _, failure in failures:
            raise failure

    def _note_removal(self, index: int, ip: IPAddress, prefixlen: int) -> None:
        now = time.monotonic()
        for vip, t in list(self._removed.items()):
            if now - t > OWN_REMOVAL_WINDOW:
                del self._removed[vip]
        name = self._ifname.get(index)
        if name is not None:
            self._removed[Vip(ipaddress.ip_interface(f"{ip}/{prefixlen}"), name)] = now

    # -- VipPort

    async def add(self, vips: Sequence[Vip], lifetime: float | None) -> None:
        seconds = kernel_lifetime(lifetime)
        async with self._lock:
            added: list[tuple[int, Vip]] = []
            errors: list[str] = []
            for ifname, group in _by_interface(vips).items():
                index = await self._index(ifname)
                if index is None:
                    errors.append(f"cannot add {_names(group)}: interface does not exist")
                    continue
                pre_existing: list[Vip] = []
                for vip in group:
                    try:
                        await self._request("add", index, vip.ip, vip.prefixlen, seconds)
                        added.append((index, vip))
                    except _Failed as e:
                        if e.code != errno.EEXIST:
                            errors.append(f"cannot add {vip}: {e}")
                            continue
                        # Already there (an earlier add): give it the new lifetime.
                        try:
                            await self._request("replace", index, vip.ip, vip.prefixlen, seconds)
                            pre_existing.append(vip)
                        except _Failed as e2:
                            errors.append(f"cannot add {vip}: {e2}")
                if errors:
                    break
                if pre_existing:
                    # Not added by this call: check that the one found is usable (an address
                    # someone added with duplicate address detection may be tentative or
                    # failed). What this call added, the kernel's ACK vouches for.
                    found = {
                        (a.ip, a.prefixlen): a for a in await self._addresses(index, pre_existing)
                    }
                    for vip in pre_existing:
                        addr = found.get((vip.ip, vip.prefixlen))
                        if addr is None:
                            errors.append(f"{vip} is not present after adding it")
                        elif addr.flags & IFA_F_DADFAILED:
                            errors.append(f"{vip}: duplicate address detected, another host has it")
                        elif addr.flags & IFA_F_TENTATIVE:
                            log.warning("%s is tentative (added with DAD); not usable yet", vip)
            if not errors:
                return
            undo = [v for _, v in added]
            try:
                if undo:
                    await self._remove(undo)
            except VipError as e:
                errors.append(f"and could not take back what was added: {e}")
            raise VipError("; ".join(errors))

    async def renew(self, vips: Sequence[Vip], lifetime: float) -> None:
        seconds = kernel_lifetime(lifetime)
        async with self._lock:
            errors: list[str] = []
            renewals: list[tuple[Vip, _Prepared]] = []
            if len(self._renewals) >= RENEWALS_CACHED:  # indexes, lifetimes no longer in use
                self._drop_renewals()  # (never during a call: it sends what it took)
            wanted: list[tuple[int, Vip]] = []
            for ifname, group in _by_interface(vips).items():
                index = await self._index(ifname)
                if index is None:
                    errors.append(f"{_names(group)} gone: interface does not exist")
                    continue
                # No presence check (see the module docstring): one that is gone is re-created.
                wanted += [(index, vip) for vip in group]
            for index, vip in wanted:
                renewals.append((vip, await self._renewal(index, vip, seconds)))
            failure = await self._send_one_ack(renewals)
            if failure is not None and failure.code == errno.ETIMEDOUT:
                # No answer at all: asking again, one answer each, would only wait as long
                # again while every step waits behind this renewal.
                errors += [f"cannot renew {vip}: {failure}" for vip, _ in renewals]
            elif failure is not None:
                # Some failed: again, each with its own answer, to name them. (What failed
                # was dropped from the cache: fetched again.)
                log.debug("a renewal failed (%s); again, one answer each", failure)
                renewals = [(v, await self._renewal(i, v, seconds)) for i, v in wanted]
                errors += [f"cannot renew {vip}: {e}" for vip, e in await self._send(renewals)]
            if errors:
                raise VipError("; ".join(errors))

    async def remove(self, vips: Sequence[Vip]) -> None:
        async with self._lock:
            await self._remove(vips)

    async def _remove(self, vips: Sequence[Vip]) -> None:
        # Every VIP is attempted even after a failure: holding one too many is the dangerous
        # direction, so none may be skipped. The kernel's answer is the verification: an ACK
        # means it deleted that address (same address and prefix length), EADDRNOTAVAIL that
        # there is none, ENODEV that the interface (and so its addresses) is gone.
        errors: list[str] = []
        for ifname, group in _by_interface(vips).items():
            index = await self._index(ifname)
            if index is None:
                # Gone by this name. A renamed link keeps its index and its addresses, so try
                # the index this name last had: ENODEV there means the link is really gone.
                index = next((i for i, n in self._ifname.items() if n == ifname), None)
                if index is None:
                    log.info("interface %s is gone, so are its VIPs", ifname)
                    continue
            for vip in group:
                try:
                    await self._request("del", index, vip.ip, vip.prefixlen)
                except _Failed as e:
                    if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                        errors.append(f"cannot remove {vip}: {e}")
        if errors:
            raise VipError("; ".join(errors))

    async def present(self, vips: Sequence[Vip]) -> list[Vip]:
        async with self._lock:
            out: list[Vip] = []
            for ifname, group in _by_interface(vips).items():
                index = await self._index(ifname)
                if index is None:
                    continue
                found = {(a.ip, a.prefixlen) for a in await self._addresses(index, group)}
                out += [v for v in group if (v.ip, v.prefixlen) in found]
            return out

    async def cleanup_stale(self, vips: Sequence[Vip]) -> list[Vip]:
        async with self._lock:
            removed: list[Vip] = []
            errors: list[str] = []
            for ifname, group in _by_interface(vips).items():
                index = await self._index(ifname)
                if index is None:
                    continue
                wanted = {v.ip for v in group}
                for addr in await self._addresses(index, group):
                    if addr.ip not in wanted:
                        continue
                    # Keep the prefix length found, which may differ from today's config.
                    stale = Vip(ipaddress.ip_interface(f"{addr.ip}/{addr.prefixlen}"), ifname)
                    try:
                        await self._request("del", index, addr.ip, addr.prefixlen)
                    except _Failed as e:
                        if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                            errors.append(f"cannot remove stale {stale}: {e}")
                        continue
                    removed.append(stale)
                left = [a for a in await self._addresses(index, group) if a.ip in wanted]
                errors += [
                    f"stale {a.ip}/{a.prefixlen} dev {ifname} is still present" for a in left
                ]
            if removed:
                log.warning("removed stale VIPs: %s", _names(removed))
            if errors:
                raise VipError("; ".join(errors))
            return removed

    def interface_mac(self, ifname: str) -> bytes:
        return interface_mac(ifname)

    def removed_by_us(self, vip: Vip) -> bool:
        """Whether this port removed `vip` in the last OWN_REMOVAL_WINDOW seconds; forgets it.

        For a LinkWatcher's `own_removal`: the kernel's RTM_DELADDR does not say who removed
        an IPv6 address (its port id is 0, as for an expired lifetime), so the port remembers.
        """
        t = self._removed.pop(vip, None)
        return t is not None and time.monotonic() - t <= OWN_REMOVAL_WINDOW

    async def close(self) -> None:
        self._closed = True
        self._drop_renewals()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
