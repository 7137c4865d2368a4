"""The record of the VIPs this node may add, for `hafailover release-vips`.

The daemon writes it at start-up, before it can add anything; systemd's ExecStopPost runs
`release-vips`, which removes what is recorded without parsing the configuration (which may be
the very thing that is broken). `<state_dir>/vips.json`, replaced atomically.

How long `release-vips` takes is how long a killed or frozen node's address stays after systemd
noticed, so its path is kept short: `python -m hafailover release-vips` (what the unit runs)
finds the record here and removes it with `release()`, without click, the configuration's
models or the parts of pyroute2 it does not use (`load_async_iproute_only`).
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import json
import os
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path

from hafailover.net.vip import NetlinkVipPort, Vip, VipError

__all__ = [
    "DEFAULT_STATE_DIR",
    "RECORD_FILE",
    "RECORD_MAX_BYTES",
    "load_async_iproute_only",
    "record_state_dir",
    "record_vips",
    "recorded_vips",
    "release",
]

RECORD_FILE = "vips.json"
RECORD_MAX_BYTES = 1 << 20
# The configuration's default state_dir (config.schema), for the default configuration file.
DEFAULT_STATE_DIR = "/var/lib/hafailover"


def record_vips(state_dir: str | os.PathLike[str], vips: Iterable[Vip]) -> Path:
    """Write `<state_dir>/vips.json` atomically: every VIP this daemon may add.

    The daemon calls it at start-up, before it can add anything, so that `release-vips`
    (systemd's ExecStopPost) can remove them without parsing the configuration.
    """
    import tempfile

    directory = Path(state_dir)
    body = {
        "version": 1,
        "vips": [
            {"address": str(v.address), "interface": v.interface} for v in dict.fromkeys(vips)
        ],
    }
    data = (json.dumps(body, indent=1) + "\n").encode()
    target = directory / RECORD_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD_FILE}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def recorded_vips(state_dir: str | os.PathLike[str]) -> list[Vip] | None:
    """The VIPs recorded by `record_vips`, or None if there is no record. VipError if unusable."""
    path = Path(state_dir) / RECORD_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(RECORD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VipError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > RECORD_MAX_BYTES:
        raise VipError(f"{path} is larger than {RECORD_MAX_BYTES} bytes")
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("version") != 1:
            raise ValueError("unknown format")
        return [
            Vip(ipaddress.ip_interface(e["address"]), str(e["interface"])) for e in body["vips"]
        ]
    except (ValueError, TypeError, KeyError) as e:
        raise VipError(f"{path} is not a VIP record: {e}") from e


def record_state_dir(default_config: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where `release-vips` reads the record before any configuration: systemd's
    $STATE_DIRECTORY (its first entry), else the default state directory when the configuration
    is the default file; None: only the configuration can tell."""
    given = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return given
    return DEFAULT_STATE_DIR if default_config else None


def load_async_iproute_only() -> bool:
    """Import pyroute2's `AsyncIPRoute` without the rest of pyroute2; for a process that needs
    nothing else of it and exits soon (`release-vips`). True if done.

    pyroute2's `__init__` imports every netlink family it supports (conntrack, ipdb, ndb,
    ethtool, nl80211, ...): ~0.2 s of a ~0.35 s `release-vips`. Here the package is registered
    without running its `__init__` and `AsyncIPRoute` is imported from its own module
    (`pyroute2.iproute.linux`, ~a third of the cost) and set on the package, so that
    `from pyroute2 import AsyncIPRoute` (NetlinkVipPort) finds that same class. If that fails
    (another pyroute2 layout) every trace is removed and False returned: the ordinary import
    then happens as usual. Does nothing (False) if pyroute2 is imported already.
    """
    if "pyroute2" in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.submodule_search_locations is None:
            return False
        package = types.ModuleType("pyroute2")
        package.__spec__ = spec
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules["pyroute2"] = package
        linux = importlib.import_module("pyroute2.iproute.linux")
        package.AsyncIPRoute = linux.AsyncIPRoute  # type: ignore[attr-defined]
    except Exception:
        for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
            del sys.modules[name]
        return False
    return True


async def release(vips: Iterable[Vip]) -> list[Vip]:
    """Remove whichever of `vips` are present (any prefix length); the ones removed.
    VipError if netlink fails."""
    port = NetlinkVipPort()
    try:
        return await port.cleanup_stale(list(vips))
    finally:
        await port.close()
