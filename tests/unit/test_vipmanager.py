"""runtime/vipmanager.py: what the daemon opens after READY=1, before its engine may start.
A VIP port or frames that do not work stop the start-up (the daemon exits 78); until then the
engine's announcer refuses to announce."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hafailover.config import Config, load_config
from hafailover.net.announce import AnnounceError
from hafailover.net.vip import Vip, VipError
from hafailover.net.vipfake import FakeVipPort
from hafailover.runtime.vipmanager import (
    Frames,
    NotOpenYet,
    VipManagerError,
    craft,
    open_vip_manager,
)


def no_vips_config(tmp_path: Path) -> Config:
    path = tmp_path / "hafailover.yaml"
    path.write_text("cluster: {name: c, key_file: k}\n"
                    "nodes:\n  - {name: node1, address: 10.213.0.11}\n")
    return load_config(path).config


async def frames_of(result: Frames | Exception) -> Frames:
    if isinstance(result, Exception):
        raise result
    return result


def open_with(config: Config, port: FakeVipPort, frames: Frames | Exception,
              group_vips: dict[str, list[Vip]] | None = None) -> object:
    async def main() -> object:
        crafting = asyncio.create_task(frames_of(frames))
        return await open_vip_manager(config, group_vips or {"default": []}, port, crafting,
                                      {}, lambda g: lambda: False)
    return asyncio.run(main())


def test_the_port_is_cleaned_up_first_and_each_group_gets_an_announcer(tmp_path: Path) -> None:
    port = FakeVipPort()
    announcers = open_with(no_vips_config(tmp_path), port, {})
    assert isinstance(announcers, dict) and list(announcers) == ["default"]
    assert port.calls == [("cleanup_stale", ())]


def test_a_vip_port_that_fails_stops_the_start_up(tmp_path: Path) -> None:
    port = FakeVipPort()
    port.fail["cleanup_stale"] = VipError("netlink refused")
    with pytest.raises(VipManagerError, match="cannot manage the VIPs: netlink refused"):
        open_with(no_vips_config(tmp_path), port, {})


def test_frames_that_could_not_be_crafted_stop_the_start_up(tmp_path: Path) -> None:
    with pytest.raises(VipManagerError, match="cannot build the VIP announcements: no scapy"):
        open_with(no_vips_config(tmp_path), FakeVipPort(), AnnounceError("no scapy"))


def test_without_vips_nothing_is_crafted() -> None:
    assert asyncio.run(craft([], {}, {})) == {}


def test_the_placeholder_announcer_never_pretends_to_announce() -> None:
    placeholder = NotOpenYet()
    with pytest.raises(AnnounceError):
        placeholder.announce()
    with pytest.raises(AnnounceError):
        asyncio.run(placeholder.start())
    placeholder.cancel()
    placeholder.set_holding(False)
    placeholder.close()
