"""`python -m hafailover` is the `hafailover` command.

One short path: `release-vips`, which systemd's ExecStopPost runs as `python -I -m hafailover
release-vips -c FILE` after the daemon died. Its run time is how long a killed or frozen node's
address stays, so when the daemon's record (`hafailover.net.record`) is where systemd's
$STATE_DIRECTORY says, it is removed from here: no click, no configuration, only the part of
pyroute2 it uses. Anything else (other options, no record, an unreadable one) goes to the
click command, which behaves the same and also reads the configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/hafailover/hafailover.yaml"  # hafailover.cli.DEFAULT_CONFIG


def release_config(args: Sequence[str]) -> str | None:
    """The configuration file of `release-vips ARGS` if the short path understands ARGS
    (none, `-c FILE`, `--config FILE`, `--config=FILE`), else None."""
    match list(args):
        case []:
            return DEFAULT_CONFIG
        case ["-c" | "--config", path] if path and not path.startswith("-"):
            return path
        case [option] if option.startswith("--config=") and len(option) > len("--config="):
            return option.removeprefix("--config=")
    return None


def release_vips(args: Sequence[str]) -> int | None:
    """`release-vips` from the record alone; the exit status, or None to leave it to the CLI."""
    config = release_config(args)
    if config is None:
        return None
    import asyncio
    from pathlib import Path

    from hafailover.net.record import (
        load_async_iproute_only,
        record_state_dir,
        recorded_vips,
        release,
    )
    from hafailover.net.vip import VipError

    state_dir = record_state_dir(Path(config) == Path(DEFAULT_CONFIG))
    if state_dir is None:
        return None
    try:
        vips = recorded_vips(state_dir)
    except VipError:
        return None  # the CLI warns and reads the configuration instead
    if vips is None:
        return None
    load_async_iproute_only()
    try:
        removed = asyncio.run(release(vips))
    except VipError as e:
        print(f"hafailover: could not remove the VIPs: {e}", file=sys.stderr)
        return 1
    for v in removed:
        print(f"removed {v}")
    if not removed:
        print("no recorded VIP was present")
    return 0


def main() -> None:
    if sys.argv[1:2] == ["release-vips"]:
        status = release_vips(sys.argv[2:])
        if status is not None:
            sys.exit(status)
    from hafailover.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
