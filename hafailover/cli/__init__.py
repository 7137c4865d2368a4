"""`hafailover`: run the daemon, and inspect or steer it through its control socket.

Heavy modules (pydantic config, the daemon, asyncio) are imported inside the commands that need
them, so `hafailover --help` and shell completion stay fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.shell_completion import CompletionItem

from hafailover.cli import format as fmt
from hafailover.control.client import (
    DEFAULT_SOCKET,
    CommandUnanswered,
    ControlClient,
    ControlError,
    DaemonUnreachable,
)

if TYPE_CHECKING:
    from hafailover.config.schema import Config

DEFAULT_CONFIG = Path("/etc/hafailover/hafailover.yaml")
# How often `switchover` looks at the VIP holder while it waits: fine enough to report the
# switchover time to within one poll, cheap enough for the daemon (one small request each).
SWITCHOVER_POLL_S = 0.05
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class Duration(click.ParamType[float]):
    """`500ms`, `1s`, `2m` or plain seconds, bounded so that a typo cannot mean "spin" or "hang"."""

    name = "duration"

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        from hafailover.config.durations import DurationError, parse_duration

        try:
            seconds = parse_duration(value)
        except DurationError as e:
            self.fail(str(e), param, ctx)
        if not self.minimum <= seconds <= self.maximum:
            self.fail(f"{value} is out of range {self.minimum:g}s..{self.maximum:g}s", param, ctx)
        return seconds


class SocketPath(click.ParamType[Path]):
    """The control socket's path, taken as given (no existence or permission check here).

    Whether the socket can be used is for the connection to tell: a missing socket, a refused
    connection or a permission denied exit 3 with the reason, the same for `--socket`,
    HAFAILOVER_SOCKET and `-c` (click's readable-path check would exit 2, "no VIP holder").
    """

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        return value if isinstance(value, Path) else Path(value)


@dataclass
class Settings:
    socket: Path | None  # --socket or HAFAILOVER_SOCKET
    config: Path | None  # the group's -c

    def socket_path(self) -> Path:
        if self.socket is not None:
            return self.socket
        # The daemon reads the default config too, so its control_socket is the right guess.
        path = self.config or DEFAULT_CONFIG
        if self.config is not None or os.access(path, os.R_OK):
            from hafailover.config import ConfigError, load_config

            try:
                return load_config(path).config.control_socket
            except ConfigError as e:
                if self.config is not None:
                    # The file named with -c says where the daemon is; guessing another socket
                    # could show another daemon. Exit 3: this daemon cannot be reached.
                    _fail(f"cannot find the control socket in {path}:\n{e}", fmt.EXIT_UNREACHABLE)
        return DEFAULT_SOCKET

    def client(self, timeout: float = 5.0) -> ControlClient:
        return ControlClient(self.socket_path(), timeout=timeout)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"hafailover: {message}", err=True)
    sys.exit(code)


def _call(fn: Callable[[], _T], *, error_exit: int = 1) -> _T:
    """Run one request: unreachable exits 3, a daemon error exits `error_exit` with its message;
    a command whose outcome never came back exits 1 (unknown is not success)."""
    try:
        return fn()
    except CommandUnanswered as e:
        _fail(str(e), 1)
    except DaemonUnreachable as e:
        _fail(str(e), fmt.EXIT_UNREACHABLE)
    except ControlError as e:
        _fail(f"the daemon answered {e.code}: {e.message}", error_exit)


def _complete_nodes(
    ctx: click.Context, _: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Node names from the configuration, for `--node` and `--to`."""
    try:
        from hafailover.config import load_config

        path = (
            ctx.params.get("config")
            or ctx.meta.get("hafailover.config")
            or ctx.find_root().params.get("config")
            or DEFAULT_CONFIG
        )
        nodes = load_config(path).config.nodes
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [CompletionItem(n.name) for n in nodes if n.name.startswith(incomplete)]


def _node_option(*names: str, help: str) -> Callable[[_F], _F]:
    return click.option(*names, shell_complete=_complete_nodes, metavar="NODE", help=help)


_config_option = click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Configuration file [default: {DEFAULT_CONFIG}].",
)


def _set_setting(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """A subcommand's -c/--socket: given after the command, it wins over the one before it."""
    if value is None or param.name is None:
        return
    ctx.meta[f"hafailover.{param.name}"] = value  # for completion, which runs no group callback
    settings = ctx.find_object(Settings)
    if settings is not None:
        setattr(settings, param.name, value)


def _shared_options() -> list[click.Option]:
    return [
        click.Option(
            ["-c", "--config"],
            type=click.Path(dir_okay=False, path_type=Path),
            expose_value=False,
            callback=_set_setting,
            help=f"Configuration file [default: {DEFAULT_CONFIG}].",
        ),
        click.Option(
            ["--socket"],
            type=SocketPath(),
            expose_value=False,
            callback=_set_setting,
            help="Control socket [env HAFAILOVER_SOCKET; default: control_socket of the "
            f"config, else {DEFAULT_SOCKET}].",
        ),
    ]


class _Group(click.Group):
    """Gives every subcommand `-c/--config` and `--socket`, so both work on either side of the
    command name (`hafailover status -c FILE` as well as `hafailover -c FILE status`)."""

    # What a command does not use: genkey and import-keepalived read no configuration of this
    # host and talk to no daemon; run and release-vips talk to no daemon.
    UNUSED = {
        "genkey": ("config", "socket"),
        "import-keepalived": ("config", "socket"),
        "run": ("socket",),
        "release-vips": ("socket",),
    }

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        taken = {opt for p in cmd.params for opt in p.opts} | {p.name for p in cmd.params}
        taken.update(self.UNUSED.get(name or cmd.name or "", ()))
        for option in _shared_options():
            if option.name not in taken and not taken.intersection(option.opts):
                cmd.params.append(option)
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.option(
    "--socket",
    type=SocketPath(),
    envvar="HAFAILOVER_SOCKET",
    help="Control socket [env HAFAILOVER_SOCKET; default: control_socket of the config, "
    f"else {DEFAULT_SOCKET}].",
)
@_config_option
@click.version_option(package_name="hafailover", prog_name="hafailover")
@click.pass_context
def cli(ctx: click.Context, socket: Path | None, config: Path | None) -> None:
    """Quorum-leased floating VIPs with sub-second failover.

    \b
    Examples:
      hafailover status               cluster overview (exit 0 healthy, 1 degraded,
                                      2 no VIP holder, 3 daemon unreachable)
      hafailover switchover --to node2
      hafailover check-config -c /etc/hafailover/hafailover.yaml
    """
    ctx.obj = Settings(socket=socket, config=config)


# ------------------------------------------------------------------------------------------ run


@cli.command()
@_config_option
@_node_option("--node", help="Run as this node (default: by hostname, then by address).")
@click.pass_obj
def run(settings: Settings, config: Path | None, node: str | None) -> None:
    """Run the daemon in the foreground (systemd starts it this way).

    \b
    Example:
      hafailover run -c /etc/hafailover/hafailover.yaml --node node1
    """
    # Imported by name at call time: the daemon pulls in asyncio and the whole runtime, which no
    # other command needs (and `hafailover.runtime.daemon` is built separately from the CLI).
    daemon = importlib.import_module("hafailover.runtime.daemon")
    run_daemon: Callable[[Path, str | None], int] = daemon.run
    sys.exit(run_daemon(config or settings.config or DEFAULT_CONFIG, node))


# --------------------------------------------------------------------------------------- status


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the raw status object (see docs/cli.md)."
)
@click.option("--watch", is_flag=True, help="Redraw until Ctrl-C.")
@click.option(
    "--interval",
    type=Duration(0.1, 60),
    default="1s",
    show_default=True,
    help="Redraw interval for --watch (100ms..60s).",
)
@click.pass_obj
def status(settings: Settings, as_json: bool, watch: bool, interval: float) -> None:
    """Show the cluster as this node's daemon sees it.

    Exit status: 0 healthy (a node holds the VIP; every node reachable, healthy, out of
    maintenance), 1 degraded (a node holds the VIP but something is wrong), 2 no node holds the
    VIP, 3 the daemon is unreachable. With --watch: 0 on Ctrl-C.

    \b
    Examples:
      hafailover status
      hafailover status --json | jq .vip_holder
      hafailover status --watch --interval 500ms
    """
    client = settings.client()
    if not watch:
        result = _call(client.status, error_exit=fmt.EXIT_UNREACHABLE)
        click.echo(json.dumps(result, indent=2) if as_json else fmt.format_status(result))
        sys.exit(fmt.status_verdict(result)[0])
    try:
        while True:
            try:
                current: dict[str, object] | None = client.status()
                error = ""
            except (DaemonUnreachable, ControlError) as e:
                current, error = None, str(e)
            if as_json:  # JSON Lines: one object per refresh, no screen control
                click.echo(json.dumps(current if current is not None else {"error": error}))
            else:
                body = (
                    fmt.format_status(current)
                    if current is not None
                    else click.style(f"daemon unreachable: {error}", fg="red")
                )
                click.clear()
                stamp = time.strftime("%H:%M:%S")
                click.echo(f"{stamp}  every {interval:g}s, Ctrl-C to stop\n\n{body}")
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.exit(0)


# ----------------------------------------------------------------------------------- switchover


@cli.command()
@_node_option(
    "--to", "target", help="Hand the VIP to this node (default: the best other eligible node)."
)
@click.option(
    "--group",
    "-g",
    help="The VIP group to move (may be left out when the cluster has one group).",
)
@click.option(
    "--timeout",
    type=Duration(0.1, 600),
    default="5s",
    show_default=True,
    help="How long to wait for the VIP to move.",
)
@click.pass_obj
def switchover(settings: Settings, target: str | None, group: str | None, timeout: float) -> None:
    """Move a VIP group to another node and wait until it has moved.

    Exit status: 0 the VIP moved, 1 refused, 2 timed out, 3 daemon unreachable.

    \b
    Examples:
      hafailover switchover
      hafailover switchover --to node2 --timeout 10s
      hafailover switchover --group web --to node2
    """
    client = settings.client()
    previous = fmt.group_holder(_call(client.status, error_exit=1), group)
    start = time.monotonic()
    result = _call(lambda: client.switchover(target, group))
    click.echo(fmt.format_outcome("switchover" + (f" of {group}" if group else ""), result))
    if not result.get("accepted"):
        sys.exit(1)
    while True:
        holder = fmt.group_holder(_call(client.status, error_exit=1), group)
        elapsed = time.monotonic() - start
        if holder and (holder == target if target else holder != previous):
            click.echo(f"VIP now held by {holder} (switchover took {elapsed * 1000:.0f} ms)")
            sys.exit(0)
        if elapsed >= timeout:
            now = f"still held by {holder}" if holder else "no node holds it"
            click.echo(f"timed out after {timeout:g}s waiting for the VIP to move: {now}")
            sys.exit(2)
        time.sleep(SWITCHOVER_POLL_S)


# ---------------------------------------------------------------------------------- maintenance


@cli.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@_node_option("--node", help="The node to put in or out of maintenance (default: this node).")
@click.pass_obj
def maintenance(settings: Settings, state: str, node: str | None) -> None:
    """Put a node in maintenance (it gives up and never takes the VIP) or take it out.

    Exit status: 0 accepted, 1 refused, 3 daemon unreachable.

    \b
    Examples:
      hafailover maintenance on              this node
      hafailover maintenance off --node node3
    """
    client = settings.client()
    result = _call(lambda: client.maintenance(state == "on", node))
    click.echo(fmt.format_outcome(f"maintenance {state} for {node or 'this node'}", result))
    sys.exit(0 if result.get("accepted") else 1)


# --------------------------------------------------------------------------------------- events


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many recent events to show first.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON: the events result; with --follow one event per line.",
)
@click.option(
    "--interval",
    type=Duration(0.1, 60),
    default="500ms",
    show_default=True,
    help="Poll interval for --follow (100ms..60s).",
)
@click.option(
    "--group",
    "-g",
    help="Only this VIP group's events (and the node-wide ones, which name no group).",
)
@click.pass_obj
def events(
    settings: Settings,
    follow: bool,
    limit: int,
    as_json: bool,
    interval: float,
    group: str | None,
) -> None:
    """Show the role-transition history (newest last).

    \b
    Examples:
      hafailover events -n 50
      hafailover events --follow
      hafailover events --group web
    """
    client = settings.client()
    if not follow:
        result = _call(lambda: client.events(limit, group=group))
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            for event in fmt.records(result.get("events")):
                click.echo(fmt.format_event(event))
        sys.exit(0)
    seen: set[tuple[object, object]] = set()
    after: int | None = None
    lost = False
    try:
        while True:
            try:
                batch = fmt.records(
                    client.events(limit if after is None else 10_000, after, group)["events"]
                )
            except (DaemonUnreachable, ControlError) as e:
                if not lost:
                    click.echo(f"-- daemon unreachable, retrying: {e}", err=True)
                # After a restart sequence numbers may start over: re-read the recent history and
                # rely on `seen` to skip what was already printed.
                lost, after = True, None
                batch = []
            else:
                lost = False
            for event in batch:
                key = (event.get("seq"), event.get("time"))
                if key in seen:
                    continue
                seen.add(key)
                click.echo(json.dumps(event) if as_json else fmt.format_event(event))
                seq = event.get("seq")
                if isinstance(seq, int) and (after is None or seq > after):
                    after = seq
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.exit(0)


# --------------------------------------------------------------------------------------- genkey


@cli.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the key to this file (mode 0600) instead of printing it.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def genkey(out: Path | None, force: bool) -> None:
    """Generate a new random cluster key (base64 of 32 bytes).

    Every node needs the same key file (cluster.key_file in the config).

    \b
    Examples:
      hafailover genkey --out /etc/hafailover/cluster.key
      (umask 077; hafailover genkey > cluster.key)
    """
    from hafailover.wire.keys import generate_key

    key = generate_key() + "\n"
    if out is None:
        click.echo(key, nl=False)
        return
    if out.exists() and not force:
        _fail(f"{out} exists; refusing to overwrite it (pass --force to replace it)", 1)
    # Write a private temporary file and rename it into place: the key is never readable by
    # others, not even briefly, and a crash cannot leave a half-written key file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # umask may have removed bits; set exactly 0600
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # fails if someone created `out` meanwhile
            os.unlink(tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _fail(f"cannot write {out}: {e.strerror or e}", 1)
    click.echo(f"wrote a new cluster key to {out} (mode 0600); copy it to every node")


# --------------------------------------------------------------------------------- check-config


@cli.command("check-config")
@_config_option
@_node_option("--node", help="Check as this node (default: by hostname, then by address).")
@click.option(
    "--no-host", is_flag=True, help="Only validate the file; skip the checks of this host."
)
@click.pass_obj
def check_config(settings: Settings, config: Path | None, node: str | None, no_host: bool) -> None:
    """Validate the configuration and check that this host can run it.

    Host checks: the node this host is, each VIP's interface and subnet, the key file, and the
    UDP port. Exit status: 0 nothing failed (warnings allowed), 1 something failed.

    \b
    Examples:
      hafailover check-config -c /etc/hafailover/hafailover.yaml
      hafailover check-config -c new.yaml --no-host       (on another machine)
    """
    from hafailover.cli.hostcheck import check_host, load_and_report

    path = config or settings.config or DEFAULT_CONFIG
    report = fmt.Report()
    loaded = load_and_report(path, report)
    if loaded is not None and not no_host:
        check_host(loaded, node, settings.socket, report)
        _compare_with_peers(loaded.config, settings, report)
    sys.exit(1 if report.failed else 0)


def _compare_with_peers(config: Config, settings: Settings, report: fmt.Report) -> None:
    """The file's fingerprint against the running daemon's and the ones its peers advertise
    (in their heartbeats, carried in the daemon's status). Membership or groups differing is a
    failure: nodes that disagree on them refuse each other's votes (docs/architecture.md)."""
    try:
        status = ControlClient(settings.socket_path(), timeout=1.0).status()
    except (DaemonUnreachable, ControlError, OSError) as e:
        report.ok(f"configuration not compared with the peers: the local daemon is not "
                  f"reachable ({e})")
        return
    ours = dict(config.fingerprint())
    voting = {"cluster", "nodes", "groups"}
    running = status.get("fingerprint")
    if isinstance(running, dict) and running and running != ours:
        diff = sorted(k for k in set(ours) | set(running) if ours.get(k) != running.get(k))
        report.warn(f"the running daemon uses a different configuration ({', '.join(diff)}): "
                    "reload (systemctl reload hafailover) or restart it")
    peers = status.get("peer_fingerprints")
    if not isinstance(peers, dict) or not peers:
        report.ok("configuration not compared with the peers: none heard yet")
        return
    for name, theirs in sorted(peers.items()):
        if not isinstance(theirs, dict):
            continue
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if not diff:
            report.ok(f"{name} has the same cluster-wide configuration")
        elif voting.intersection(diff):
            report.fail(f"{name} differs in {', '.join(diff)}: nodes that disagree on "
                        "membership or groups refuse each other's votes. Copy one file to "
                        "every node (change membership one node at a time)")
        else:
            report.warn(f"{name} differs in {', '.join(diff)}")


# --------------------------------------------------------------------------------- release-vips


@cli.command("release-vips")
@_config_option
@click.pass_obj
def release_vips(settings: Settings, config: Path | None) -> None:
    """Remove this host's VIPs from its interfaces (for systemd's ExecStopPost).

    A daemon killed with SIGKILL, or by the watchdog, runs no clean-up and would leave the
    address on its interface until it restarts; systemd runs this right after the process died,
    so a dead node does not keep answering ARP for the VIP. Safe at any time the daemon is not
    running; idempotent. Exit status: 0 done (or nothing to remove), 1 failed.

    The daemon records every VIP it may add in its state directory (vips.json) when it starts;
    that record is used first, without parsing the configuration (which may be large or
    broken): the state directory is systemd's $STATE_DIRECTORY, or /var/lib/hafailover with the
    default configuration file. Only when there is no record is the configuration read (its
    state_dir's record, else its VIPs). `python -m hafailover release-vips` (what the unit runs)
    takes a shorter path to the same result when the record is found (hafailover/__main__.py).

    \b
    Example:
      hafailover release-vips -c /etc/hafailover/hafailover.yaml
    """
    import asyncio

    from hafailover.net.record import record_state_dir, recorded_vips, release
    from hafailover.net.vip import Vip, VipError

    path = config or settings.config or DEFAULT_CONFIG
    vips: list[Vip] | None = None
    source = ""
    state_dir = record_state_dir(path == DEFAULT_CONFIG)
    if state_dir is not None:
        try:
            vips, source = recorded_vips(state_dir), "recorded"
        except VipError as e:
            click.echo(f"warning: {e}; reading the configuration instead", err=True)
    if vips is None:
        from hafailover.config import ConfigError, load_config

        try:
            cfg = load_config(path).config
        except ConfigError as e:
            _fail(f"invalid configuration:\n{e}", 1)
        try:
            vips, source = recorded_vips(cfg.state_dir), "recorded"
        except VipError as e:
            click.echo(f"warning: {e}; using the configured VIPs", err=True)
        if vips is None:
            vips, source = [Vip(v.address, v.interface) for v in cfg.all_vips], "configured"

    try:
        removed = asyncio.run(release(vips))
    except VipError as e:
        _fail(f"could not remove the VIPs: {e}", 1)
    for v in removed:
        click.echo(f"removed {v}")
    if not removed:
        click.echo(f"no {source} VIP was present")
    sys.exit(0)


cli.add_command(importlib.import_module("hafailover.cli.importer").import_keepalived)


def main() -> None:
    """Console-script entry point (`hafailover = hafailover.cli:main`)."""
    # Fixed names: completion works the same whether started as `hafailover` or `python -m`.
    cli.main(prog_name="hafailover", complete_var="_HAFAILOVER_COMPLETE")
