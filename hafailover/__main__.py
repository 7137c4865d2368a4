"""`python -m hafailover` is the `hafailover` command.

Two short paths, for what systemd runs (both as `python -I -m hafailover ...`):

* `run`: the unit's ExecStart. How long it takes to import and get ready is how long
  `systemctl start` waits, so `run -c FILE [--node NAME]` goes to the daemon directly, without
  click and the other commands' modules (~30 ms of imports), and with the cyclic garbage
  collector off while the daemon's modules are imported: `hafailover.runtime.daemon.run`, the
  same function the click command calls, with the same exit status.
* `release-vips`: the unit's ExecStopPost. Its run time is how long a killed or frozen node's
  address stays, so when the daemon's record (`hafailover.net.record`) is where systemd's
  $STATE_DIRECTORY says, it is removed from here: no click, no configuration, only the part of
  pyroute2 it uses, and no interpreter shutdown: the process ends with `os._exit` once its
  output is flushed (tearing the modules down took ~30 ms of a ~0.2 s run).

Anything else (other options, `--help`, no record, an unreadable one) goes to the click
command, which behaves the same and also reads the configuration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

DEFAULT_CONFIG = "/etc/hafailover/hafailover.yaml"  # hafailover.cli.DEFAULT_CONFIG


def _option_value(args: list[str], i: int, names: tuple[str, ...]) -> tuple[str, int] | None:
    """`args[i]` as one of the options `names` with its value (`-c FILE`, `--config FILE`,
    `--config=FILE`): the value and the index after it; None if it is not that option."""
    arg = args[i]
    if arg in names:
        if i + 1 < len(args) and args[i + 1] and not args[i + 1].startswith("-"):
            return args[i + 1], i + 2
        return None
    for name in names:
        if name.startswith("--") and arg.startswith(name + "=") and len(arg) > len(name) + 1:
            return arg[len(name) + 1:], i + 1
    return None


def _options(args: Sequence[str], allowed: dict[str, tuple[str, ...]]) -> dict[str, str] | None:
    """The options of ARGS by key when every argument is one of `allowed` (each at most once,
    with a value), else None: anything else is the click command's to parse."""
    found: dict[str, str] = {}
    rest, i = list(args), 0
    while i < len(rest):
        matches = [(key, got) for key, names in allowed.items()
                   if (got := _option_value(rest, i, names)) is not None]
        if not matches or matches[0][0] in found:
            return None
        key, (value, i) = matches[0]
        found[key] = value
    return found


def release_config(args: Sequence[str]) -> str | None:
    """The configuration file of `release-vips ARGS` if the short path understands ARGS
    (none, `-c FILE`, `--config FILE`, `--config=FILE`), else None."""
    options = _options(args, {"config": ("-c", "--config")})
    return None if options is None else options.get("config", DEFAULT_CONFIG)


def run_options(args: Sequence[str]) -> tuple[str, str | None] | None:
    """The configuration file and node of `run ARGS` if the short path understands ARGS (none,
    `-c/--config FILE`, `--node NAME`, in any order), else None."""
    options = _options(args, {"config": ("-c", "--config"), "node": ("--node",)})
    if options is None:
        return None
    return options.get("config", DEFAULT_CONFIG), options.get("node")


def run(args: Sequence[str]) -> int | None:
    """`run` without click; the daemon's exit status, or None to leave it to the CLI."""
    options = run_options(args)
    if options is None or os.path.isdir(options[0]):
        return None  # click says what is wrong with a directory for a file (exit 2)
    import gc
    from pathlib import Path

    # The imports (pydantic models, the runtime) allocate much and free little: the cyclic
    # collector's passes over them are wasted time before READY=1 (~5-10% of the imports).
    gc.disable()
    try:
        from hafailover.runtime.daemon import run as run_daemon
    finally:
        gc.enable()
    config, node = options
    return run_daemon(Path(config), node)


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


def _exit_now(status: int) -> None:
    """End the process without the interpreter's shutdown (nothing is left to clean up: the
    netlink socket is closed and the event loop too); the output is flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main() -> None:
    command, args = sys.argv[1:2], sys.argv[2:]
    if command == ["release-vips"]:
        status = release_vips(args)
        if status is not None:
            _exit_now(status)
    elif command == ["run"]:
        status = run(args)
        if status is not None:
            sys.exit(status)
    from hafailover.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
