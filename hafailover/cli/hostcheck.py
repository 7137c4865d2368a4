"""`check-config`: validate the configuration file, then check that this host can run it.

Each check prints one `OK`/`WARN`/`FAIL` line through `format.Report`; the host is read here
(hostname, `ip -j addr`, interfaces, a test bind) and judged by the pure functions in
`hafailover.config.resolve`, so the same rules apply as in the daemon.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from hafailover.cli.format import Report
from hafailover.control.client import ControlClient, ControlError, DaemonUnreachable
from hafailover.runtime.interfaces import interface_networks

if TYPE_CHECKING:
    from hafailover.config import Config, LoadedConfig, NodeConfig
    from hafailover.config.resolve import IPInterface


def load_and_report(path: Path, report: Report) -> LoadedConfig | None:
    from hafailover.config import ConfigError, load_config

    try:
        loaded = load_config(path)
    except ConfigError as e:
        for problem in e.problems:  # each already reads `file:line: key: message`
            report.fail(str(problem))
        return None
    c = loaded.config
    report.ok(
        f"{loaded.file}: cluster {c.cluster.name}, {len(c.nodes)} nodes, {len(c.all_vips)} VIPs, "
        f"{len(c.checks)} checks, {len(c.groups)} group{'s' if len(c.groups) > 1 else ''}"
    )
    fp = c.fingerprint()
    sections = ", ".join(f"{k} {v}" for k, v in fp.items())
    report.ok(f"cluster-wide fingerprint {fp.digest}, must be the same on every node ({sections})")
    for warning in loaded.warnings:
        report.warn(str(warning))
    return loaded


def check_host(
    loaded: LoadedConfig, node: str | None, socket_override: Path | None, report: Report
) -> None:
    from hafailover.config import NodeResolutionError, resolve_self
    from hafailover.wire.keys import KeyFileError, load_key

    config = loaded.config

    networks = interface_networks()
    if isinstance(networks, str):
        report.warn(networks)
        networks = {}
    local = [a.ip for addresses in networks.values() for a in addresses]
    me: NodeConfig | None = None
    try:
        me = resolve_self(config, node, socket.gethostname(), local)
        report.ok(f"this host is node {me.name} ({me.address})")
    except NodeResolutionError as e:
        report.fail(str(e))
    if me is not None and me.witness:
        report.ok(f"{me.name} is a witness: it never holds the VIPs, VIP checks skipped")
    else:
        _check_interfaces(loaded, networks, report)
    try:
        load_key(config.cluster.key_file)
        report.ok(f"key file {config.cluster.key_file} is readable and private")
    except KeyFileError as e:
        report.fail(str(e))
    if me is None:
        report.warn("UDP port not checked: this host's node is unknown (pass --node NAME)")
    else:
        _check_port(config, me, socket_override or config.control_socket, report)


def _check_interfaces(
    loaded: LoadedConfig, networks: dict[str, list[IPInterface]], report: Report
) -> None:
    """Every interface a group needs exists here, and every VIP fits a subnet on its interface;
    problems are placed on the line that names the interface or the VIP."""
    from hafailover.config.resolve import interface_uses, missing_interfaces, vip_subnet_issues

    present = set(networks) or {name for _, name in socket.if_nameindex()}
    missing = missing_interfaces(loaded.config, present)
    for path, message in missing:
        report.fail(str(loaded.problem(path, message)))
    needed: dict[str, list[str]] = {}
    for _, group, name, _ in interface_uses(loaded.config):
        if name in present and group not in needed.setdefault(name, []):
            needed[name].append(group)
    for name, groups in needed.items():
        plural = "s" if len(groups) > 1 else ""
        report.ok(f"interface {name} exists (group{plural} {', '.join(groups)})")
    if networks and loaded.config.all_vips:
        issues = vip_subnet_issues(loaded.config, networks)
        for path, message in issues:
            report.fail(str(loaded.problem(path, message)))
        if not issues:
            report.ok("every VIP is inside a subnet of its interface")


def _check_port(config: Config, me: NodeConfig, control: Path, report: Report) -> None:
    port = config.port_of(me)
    where = f"UDP {me.address}:{port}" if me.address.version == 4 else f"UDP [{me.address}]:{port}"
    family = socket.AF_INET6 if me.address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(me.address), port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                report.fail(f"cannot bind {where}: {e.strerror}")
                return
        else:
            report.ok(f"{where} is free")
            return
    # Busy is fine if it is our own daemon already running there.
    try:
        ControlClient(control, timeout=2.0).ping()
    except (DaemonUnreachable, ControlError):
        report.fail(f"{where} is in use by another program (see `ss -ulpn 'sport = :{port}'`)")
    else:
        report.ok(f"{where} is held by the running hafailover daemon ({control} answers)")
