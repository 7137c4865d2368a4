"""The record of the VIPs this node may add, for `hafailover release-vips`.

The daemon writes it at start-up, before it can add anything; systemd's ExecStopPost runs
`release-vips`, which removes what is recorded without parsing the configuration (which may be
the very thing that is broken). `<state_dir>/vips.json`, replaced atomically.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from hafailover.net.vip import Vip, VipError

__all__ = ["RECORD_FILE", "RECORD_MAX_BYTES", "record_vips", "recorded_vips"]

RECORD_FILE = "vips.json"
RECORD_MAX_BYTES = 1 << 20


def record_vips(state_dir: str | os.PathLike[str], vips: Iterable[Vip]) -> Path:
    """Write `<state_dir>/vips.json` atomically: every VIP this daemon may add.

    The daemon calls it at start-up, before it can add anything, so that `release-vips`
    (systemd's ExecStopPost) can remove them without parsing the configuration.
    """
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
