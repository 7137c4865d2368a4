"""Link and address tracking from netlink events (pyroute2 `AsyncIPRoute.bind()` + `get()`).

`LinkWatcher` keeps, for the interfaces and VIPs it is told to watch, whether each interface is
usable and which VIPs are on it, from the kernel's RTM_NEWLINK/DELLINK and RTM_NEWADDR/DELADDR
multicast events (no polling). It calls

* `on_link(ifname, up)` when a watched interface changes between usable and not: `up` means
  administratively up (IFF_UP) with carrier (IFLA_CARRIER, else IFF_LOWER_UP); an interface that
  does not exist, or was renamed away, is down;
* `on_address_removed(vip)` when a watched VIP is deleted (RTM_DELADDR) by anyone but this
  process's own VIP port (`own_removal`, e.g. `NetlinkVipPort.removed_by_us`): an admin's
  `ip addr del`, a network manager, the kernel when its lifetime ran out, or the interface
  going away.

Callbacks run in the loop, synchronously; they should only hand the event on.

Only removals and link changes matter, so RTM_NEWADDR notifications are not even read: every
lifetime renewal of every held VIP causes one (the kernel notifies a replace like an add), and
waking up for each (~0.1 ms of the loop) was most of an idle daemon's watching cost. A classic
BPF socket filter (SO_ATTACH_FILTER, compiled with pyroute2's `ext.bpf`), attached before the
socket joins the groups, drops them in the kernel: every message of type RTM_NEWADDR without
NLM_F_MULTI. Each notification is a datagram of its own; the answers to the watcher's own
address dump are RTM_NEWADDR too but always carry NLM_F_MULTI, so they pass (as do RTM_DELADDR,
links, errors and NLMSG_DONE). A dropped notification is not a lost one: it does not fill the
receive buffer and causes no ENOBUFS. A RTM_DELADDR of a watched VIP is reported whether or not
the watcher saw it appear: the kernel sends one only for an address that was there.
`state.vips` is therefore what the last dump found, less what was removed since.

If the daemon falls behind, the kernel drops events and the next read fails with ENOBUFS: the
socket is then unusable. The watcher closes it, opens a new one, dumps links and addresses again,
and reports the current state: `on_link` for every watched interface, `on_address_removed` for
every watched VIP that is not present now (it may have been added, and removed, while events
were lost; the callback ignores a VIP its node does not hold). Other socket errors are handled
the same way, after a short back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hafailover.net.vip import Vip

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute

    _Key = tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
SO_ATTACH_FILTER = 26
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
RETRY_MIN = 0.05
RETRY_MAX = 2.0


@dataclass(frozen=True)
class NetState:
    """What the watcher knows: each watched interface's usability, and the watched VIPs on."""

    links: dict[str, bool]
    vips: frozenset[Vip]


def link_up(msg: Any) -> bool:
    """Whether an RTM_NEWLINK message describes a usable link: IFF_UP and carrier."""
    flags = int(msg.get("flags", 0) or 0)
    carrier = msg.get("carrier")
    has_carrier = bool(carrier) if carrier is not None else bool(flags & IFF_LOWER_UP)
    return bool(flags & IFF_UP) and has_carrier


def address_notification_filter() -> list[list[int]]:
    """Classic BPF: drop RTM_NEWADDR notifications, accept everything else (module docstring).

    Netlink headers are host-endian; BPF loads half-words big-endian, hence `htons`.
    """
    from pyroute2.ext.bpf import BPF
    from pyroute2.netlink import NLM_F_MULTI

    load_half, ret = BPF.LD | BPF.H | BPF.ABS, BPF.RET | BPF.K
    return [
        [load_half, 0, 0, 4],  # nlmsg_type
        [BPF.JMP | BPF.JEQ | BPF.K, 0, 3, socket.htons(RTM_NEWADDR)],  # else: accept
        [load_half, 0, 0, 6],  # nlmsg_flags
        [BPF.JMP | BPF.JSET | BPF.K, 1, 0, socket.htons(NLM_F_MULTI)],  # a dump's: accept
        [ret, 0, 0, 0],  # a notification: drop
        [ret, 0, 0, 0x7FFFFFFF],  # accept, whole
    ]


def _attach_filter(ipr: Any) -> None:
    from pyroute2.ext import bpf

    fprog, program = bpf.compile(address_notification_filter())
    ipr.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies `program`
    del program


def _addr_key(msg: Any) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    raw = msg.get("local") or msg.get("address")
    index = msg.get("index")
    if raw is None or index is None:
        return None
    try:
        return int(index), ipaddress.ip_address(raw), int(msg.get("prefixlen", 0))
    except ValueError:
        return None


def _keys(vips: Iterable[Vip]) -> dict[_Key, Vip]:
    return {(v.interface, v.ip, v.prefixlen): v for v in vips}


class LinkWatcher:
    """Netlink watcher (see the module docstring): `start()` in the loop, `close()` at the end."""

    def __init__(
        self,
        interfaces: Iterable[str],
        vips: Iterable[Vip],
        *,
        on_link: Callable[[str, bool], None],
        on_address_removed: Callable[[Vip], None],
        own_removal: Callable[[Vip], bool] | None = None,
        rcvbuf: int = 1 << 20,
    ) -> None:
        self._vips = frozenset(vips)
        self._ifnames = frozenset(interfaces) | {v.interface for v in self._vips}
        self._by_key = _keys(self._vips)
        self._on_link = on_link
        self._on_address_removed = on_address_removed
        self._own_removal = own_removal
        self._rcvbuf = rcvbuf
        self._ipr: AsyncIPRoute | None = None
        self._task: asyncio.Task[None] | None = None
        self._names: dict[int, str] = {}  # ifindex -> name, every link
        self._up: dict[int, bool] = {}  # ifindex -> usable, every link
        self._present: set[Vip] = set()
        self._reported: dict[str, bool] = {}
        self._closed = False
        self.resyncs = 0  # times the socket was recreated after an error (ENOBUFS)

    # -- public

    @property
    def state(self) -> NetState:
        return NetState(self._links(), frozenset(self._present))

    async def start(self) -> NetState:
        """Subscribe, dump the current state, start reading events; return that state."""
        if self._task is not None:
            return self.state
        await self._open_and_dump()
        self._reported = self._links()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="link-watcher")
        return self.state

    async def watch(self, interfaces: Iterable[str], vips: Iterable[Vip]) -> NetState:
        """Change what is watched (a reload); re-dump; no callbacks for the change itself."""
        self._vips = frozenset(vips)
        self._ifnames = frozenset(interfaces) | {v.interface for v in self._vips}
        self._by_key = _keys(self._vips)
        self._present &= self._vips
        if self._ipr is not None:
            await self._dump(self._ipr)
        self._reported = self._links()
        return self.state

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_socket()

    # -- state

    def _links(self) -> dict[str, bool]:
        by_name = {name: self._up.get(index, False) for index, name in self._names.items()}
        return {name: by_name.get(name, False) for name in sorted(self._ifnames)}

    def _vip_for(self, key: tuple[int, Any, int]) -> Vip | None:
        index, ip, prefixlen = key
        name = self._names.get(index)
        return None if name is None else self._by_key.get((name, ip, prefixlen))

    # -- socket

    async def _open_and_dump(self) -> None:
        from pyroute2 import AsyncIPRoute

        self._drop_socket()
        ipr = AsyncIPRoute(rcvbuf=self._rcvbuf)
        try:
            _attach_filter(ipr)  # before joining the groups: no notification slips through
            # Subscribe before dumping, so that no change falls between the two.
            await ipr.bind(groups=GROUPS)
            await self._dump(ipr)
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr

    async def _dump(self, ipr: AsyncIPRoute) -> None:
        names: dict[int, str] = {}
        up: dict[int, bool] = {}
        async for msg in await ipr.link("dump"):
            index = int(msg["index"])
            names[index] = str(msg.get("ifname"))
            up[index] = link_up(msg)
        self._names, self._up = names, up
        present: set[Vip] = set()
        # Its answers are RTM_NEWADDR with NLM_F_MULTI: the socket filter lets them through.
        async for msg in await ipr.addr("dump"):
            key = _addr_key(msg)
            vip = self._vip_for(key) if key is not None else None
            if vip is not None:
                present.add(vip)
        self._present = present

    def _drop_socket(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    # -- events

    async def _run(self) -> None:
        delay = RETRY_MIN
        while not self._closed:
            ipr = self._ipr
            try:
                if ipr is None:
                    await self._resync()
                    delay = RETRY_MIN
                    continue
                async for msg in ipr.get():
                    self._handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._closed:
                    return
                code = getattr(e, "code", None) or getattr(e, "errno", None)
                if code == errno.ENOBUFS:
                    log.warning("netlink events were dropped (ENOBUFS); re-reading links")
                else:
                    log.warning("netlink event socket failed (%s); reopening in %.2fs", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                self._drop_socket()

    async def _resync(self) -> None:
        await self._open_and_dump()
        self.resyncs += 1
        links = self._links()
        for name, up in links.items():
            self._report_link(name, up, force=True)
        # Additions are not tracked (RTM_NEWADDR is not read), so any watched VIP may have
        # come and gone while events were lost: report every one that is absent now.
        for vip in sorted(self._vips - self._present, key=str):
            self._removed(vip)

    def _handle(self, msg: Any) -> None:
        kind = msg["header"]["type"]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            index = int(msg["index"])
            old = self._names.get(index)
            if kind == RTM_DELLINK:
                self._names.pop(index, None)
                self._up.pop(index, None)
            else:
                self._names[index] = str(msg.get("ifname") or old)
                self._up[index] = link_up(msg)
            links = self._links()
            for name in {old, self._names.get(index)} & set(links):
                if name is not None:
                    self._report_link(name, links[name])
        elif kind == RTM_DELADDR:
            # RTM_NEWADDR (a renewal, an add) is filtered out by the kernel; see _attach_filter.
            key = _addr_key(msg)
            vip = self._vip_for(key) if key is not None else None
            if vip is not None:
                self._present.discard(vip)
                self._removed(vip)

    def _removed(self, vip: Vip) -> None:
        if self._own_removal is not None and self._own_removal(vip):
            return  # this process's own VIP port removed it
        self._call(self._on_address_removed, vip)

    def _report_link(self, name: str, up: bool, force: bool = False) -> None:
        if not force and self._reported.get(name) == up:
            return
        self._reported[name] = up
        self._call(self._on_link, name, up)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("link watcher callback %r failed", callback)
