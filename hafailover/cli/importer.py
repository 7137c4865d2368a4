"""`hafailover import-keepalived`: print the hafailover YAML for keepalived configurations."""

from __future__ import annotations

import ipaddress
import re
import sys

import click

__all__ = ["EXIT_DATAERR", "EXIT_NOINPUT", "EXIT_NOTES", "import_keepalived"]

EXIT_NOTES = 1
EXIT_DATAERR = 65  # sysexits.h EX_DATAERR: the input is not a usable keepalived configuration
EXIT_NOINPUT = 66  # sysexits.h EX_NOINPUT: a file named on the command line cannot be read


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _cluster_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise click.BadParameter(
            f"{value!r}: use letters, digits, '.', '_' and '-' (at most 63, starting with a "
            "letter or digit)"
        )
    return value


def _node_name(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    names: dict[str, str] = {}
    for value in values:
        address, sep, name = value.partition("=")
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected IP=NAME, e.g. 10.0.0.11=lb1") from None
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r}: expected IP=NAME, e.g. 10.0.0.11=lb1")
        names[str(ip)] = name.strip()
    return names


@click.command("import-keepalived", context_settings={"max_content_width": 100})
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "--node-name",
    "node_names",
    multiple=True,
    callback=_node_name,
    metavar="IP=NAME",
    help="Name the node at IP (a unicast_src_ip/unicast_peer address, or a host of a multicast "
    "setup: give NAME = the file's name without .conf to set that host's address). Repeatable.",
)
@click.option(
    "--config-id",
    "config_ids",
    multiple=True,
    metavar="ID",
    help="keepalived's -i: apply the `@ID` lines and skip the other conditional lines. Once "
    "for all files, or once per FILE in order. Without it, conditional lines are skipped.",
)
@click.option(
    "--cluster-name",
    default="keepalived",
    show_default=True,
    callback=_cluster_name,
    help="cluster.name to write.",
)
def import_keepalived(
    files: tuple[str, ...],
    node_names: dict[str, str],
    config_ids: tuple[str, ...],
    cluster_name: str,
) -> None:
    """Print a hafailover configuration equivalent to keepalived configurations.

    Give each host's keepalived.conf (its `include` files are read too): instances and sync
    groups that share a VIP across the files become one group, with each host's priority. With
    one host's file the other nodes come from unicast_peer (or a placeholder) and their
    priorities are guessed: import every host's file at once for the real ones. Name the files
    after the hosts (lb1.conf): a file's name is its node's name.

    The YAML goes to stdout; everything not carried over (and why) to stderr as FILE:LINE lines.
    LVS virtual_server blocks are reported, not imported. See docs/migration.md.

    \b
    Exit status:
      0   imported, nothing left behind
      1   imported, with notes on stderr to review (not carried over or guessed)
      2   usage error
      65  a file is not a usable keepalived configuration (FILE:LINE: why)
      66  a file cannot be read

    \b
    Examples:
      hafailover import-keepalived lb1.conf lb2.conf > hafailover.yaml
      hafailover import-keepalived /etc/keepalived/keepalived.conf --node-name 10.0.0.12=lb2
      hafailover import-keepalived k.conf k.conf --config-id high --config-id low
    """
    from hafailover.config.keepalived import (
        KeepalivedImportError,
        KeepalivedReadError,
        KeepalivedSyntaxError,
        import_files,
    )

    if len(config_ids) > 1 and len(config_ids) != len(files):
        raise click.UsageError(
            f"{len(config_ids)} --config-id for {len(files)} files: give one for all files, or "
            "one per file in order"
        )
    try:
        result = import_files(
            files, node_names=node_names, config_ids=config_ids, cluster_name=cluster_name
        )
    except KeepalivedReadError as exc:
        click.echo(f"hafailover import-keepalived: {exc.reason}", err=True)
        sys.exit(EXIT_NOINPUT)
    except (KeepalivedSyntaxError, KeepalivedImportError) as exc:
        click.echo(f"hafailover import-keepalived: {exc}", err=True)
        sys.exit(EXIT_DATAERR)
    click.echo(result.yaml, nl=False)
    if result.notes:
        click.echo(f"# not carried over, or changed on the way ({len(result.notes)}):", err=True)
        for note in result.notes:
            click.echo(str(note), err=True)
        sys.exit(EXIT_NOTES)
