"""The daemon's VIP manager, opened right after READY=1 (see `hafailover.runtime.daemon`).

Off the readiness path, before the engine starts: pyroute2 is imported (in a thread, so the
event loop keeps pinging the watchdog), netlink is opened and the VIPs an earlier run left are
removed, and every group's announcer is started with the ARP/NA frames crafted by a subprocess
(`craft`, started before READY=1). Until that is done the engine has `NotOpenYet` for an
announcer and takes no step, so no VIP can be added or announced through a port that does not
work yet; if it cannot be done, `VipManagerError` (the daemon exits 78).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hafailover.errors import LocalError
from hafailover.net.announce import (
    AnnounceError,
    Announcer,
    FrameSocket,
    RawAnnouncer,
    build_frames_async,
    open_packet_socket,
)
from hafailover.net.vip import Vip, VipError, VipPort

if TYPE_CHECKING:
    from hafailover.config.schema import Config

log = logging.getLogger("hafailover.daemon")

Frames = dict[Vip, list[bytes]]


class VipManagerError(LocalError):
    """The VIPs cannot be managed on this host; the message says why."""


async def craft(vips: Sequence[Vip], macs: dict[str, bytes], router: dict[str, bool]) -> Frames:
    """Every VIP's announcement frames (a scapy subprocess, ~0.4 s); none without VIPs."""
    return await build_frames_async(vips, macs, router=router) if vips else {}


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a start-up task and wait for it (a crafting subprocess is killed)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class NotOpenYet:
    """The engine's announcer until the VIP manager is open. The engine takes no step before
    then, so nothing announces through it; if anything tried, it would fail, never pretend."""

    async def start(self) -> None:
        raise AnnounceError("the announcers are not open yet")

    def announce(self) -> None:
        raise AnnounceError("the announcers are not open yet")

    def cancel(self) -> None:
        pass

    def set_holding(self, holding: bool) -> None:
        pass

    def close(self) -> None:
        pass


async def open_vip_manager(
    config: Config, group_vips: dict[str, list[Vip]], vip_port: VipPort,
    crafting: asyncio.Task[Frames], macs: dict[str, bytes],
    may_announce: Callable[[str], Callable[[], bool]],
) -> dict[str, Announcer]:
    """Netlink opened and leftover VIPs removed, then every group's announcer started with the
    crafted frames; the announcers by group. VipManagerError if the VIPs cannot be managed."""
    vips = [v for vs in group_vips.values() for v in vs]
    try:
        # pyroute2 takes ~0.2-0.3 s to import: in a thread, the loop keeps its ticks.
        await asyncio.to_thread(importlib.import_module, "pyroute2")
        removed = await vip_port.cleanup_stale(vips)
    except (VipError, ImportError) as e:
        raise VipManagerError(f"cannot manage the VIPs: {e}") from e
    for v in removed:
        log.warning("removed leftover VIP %s (from an earlier run)", v)
    try:
        frames = await crafting
    except (AnnounceError, OSError) as e:
        raise VipManagerError(f"cannot build the VIP announcements: {e}") from e
    # One announcer per group (each group announces and goes quiet on its own), sharing one
    # packet socket per interface and frames crafted once for every VIP: crafting runs a
    # subprocess, which must not be paid once per group.
    sockets: dict[str, FrameSocket] = {}

    def shared_socket(ifname: str) -> FrameSocket:
        if ifname not in sockets:
            sockets[ifname] = open_packet_socket(ifname)
        return sockets[ifname]

    announcers: dict[str, Announcer] = {}
    for g in config.groups:
        own = group_vips[g.name]
        announcers[g.name] = RawAnnouncer(
            own, config.announce.count, config.announce.interval, config.announce.refresh,
            macs=macs, may_announce=may_announce(g.name),
            frames={v: frames[v] for v in own}, socket_factory=shared_socket,
        )
        await announcers[g.name].start()
    return announcers
