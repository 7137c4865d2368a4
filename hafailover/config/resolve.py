"""Which node of the configuration this host is, and whether its VIPs fit its interfaces.

Both are pure: the caller reads the hostname and the interface addresses from the system (the
`check-config` command and the daemon do) and passes them in, so this is testable without a host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from hafailover.errors import LocalError

if TYPE_CHECKING:  # keeps pydantic out of callers that only resolve
    from hafailover.config.schema import Config, NodeConfig, VipConfig

__all__ = [
    "NodeResolutionError",
    "interface_uses",
    "missing_interfaces",
    "resolve_self",
    "vip_subnet_issues",
    "vip_subnet_problems",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
KeyPath = tuple[str | int, ...]


class NodeResolutionError(LocalError, ValueError):
    """This host is not (unambiguously) one of the configured nodes; the message says why."""


def _listing(config: Config) -> str:
    return ", ".join(f"{n.name} ({n.address})" for n in config.nodes)


def resolve_self(
    config: Config,
    node_name: str | None,
    hostname: str,
    local_addresses: Iterable[IPAddress],
) -> NodeConfig:
    """The node this host runs as: `--node` wins, then the hostname, then a local address.

    The hostname matches a node name exactly, or by its first label (`node1.example.com` is
    node1) so FQDN hostnames work; an address match must be unique, since a lab may run several
    nodes on one address with different ports.
    """
    if node_name is not None:
        node = config.node(node_name)
        if node is None:
            raise NodeResolutionError(
                f"--node {node_name}: no such node in the configuration. Nodes: {_listing(config)}"
            )
        return node
    short = hostname.split(".", 1)[0]
    for candidate in (hostname, short):
        node = config.node(candidate) if candidate else None
        if node is not None:
            return node
    local = set(local_addresses)
    matches = [n for n in config.nodes if n.address in local]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(n.name for n in matches)
        raise NodeResolutionError(
            f"this host has the address of several nodes ({names}). Pass --node NAME to choose"
        )
    shown = ", ".join(sorted(str(a) for a in local)) or "none"
    raise NodeResolutionError(
        f"cannot tell which node this host is: hostname {hostname!r} is not a node name and "
        f"none of its addresses ({shown}) is a node address. Nodes: {_listing(config)}. "
        "Pass --node NAME, or name the host after its node"
    )


def interface_uses(config: Config) -> Iterator[tuple[KeyPath, str, str, VipConfig | None]]:
    """Every place the file names an interface a group needs: (key path of the interface name,
    group name, interface, the VIP on it or None for track_interfaces), in file order."""
    if not config.group_entries:
        for i, vip in enumerate(config.vips):
            yield ("vips", i, "interface"), "default", vip.interface, vip
        return
    for g, group in enumerate(config.group_entries):
        for i, vip in enumerate(group.vips):
            yield ("groups", g, "vips", i, "interface"), group.name, vip.interface, vip
        for i, name in enumerate(group.track_interfaces):
            yield ("groups", g, "track_interfaces", i), group.name, name, None


def missing_interfaces(config: Config, interfaces: Collection[str]) -> list[tuple[KeyPath, str]]:
    """Interfaces a group needs (its VIPs', its track_interfaces) that this host does not have:
    one problem per interface, at the first place the file names it."""
    first: dict[str, KeyPath] = {}
    groups: dict[str, list[str]] = {}
    for path, group, name, _ in interface_uses(config):
        if name in interfaces:
            continue
        first.setdefault(name, path)
        needing = groups.setdefault(name, [])
        if group not in needing:
            needing.append(group)
    known = ", ".join(sorted(interfaces)) or "none"
    return [
        (
            first[name],
            f"this host has no interface {name} (it has: {known}), needed by group"
            f"{'s' if len(needing) > 1 else ''} {', '.join(needing)}. Fix the name, or name the "
            "interfaces the same on every node",
        )
        for name, needing in groups.items()
    ]


def vip_subnet_issues(
    config: Config, interface_networks: Mapping[str, Sequence[IPInterface]]
) -> list[tuple[KeyPath, str]]:
    """VIPs outside every subnet on their interface, at the key path of the VIP's address.

    A VIP outside every subnet on its interface would be added but never reached (no neighbour
    on the link sends to it). The VIPs themselves are ignored among the interface addresses:
    on the current leader they are present and would vouch for themselves. VIPs on an interface
    not in `interface_networks` are left to `missing_interfaces`.
    """
    vip_ips = {vip.ip for vip in config.all_vips}
    issues: list[tuple[KeyPath, str]] = []
    for path, _, name, vip in interface_uses(config):
        if vip is None or name not in interface_networks:
            continue
        subnets = [a for a in interface_networks[name] if a.ip not in vip_ips]
        if any(vip.ip in a.network for a in subnets if a.version == vip.address.version):
            continue
        shown = ", ".join(str(a) for a in subnets) or "no addresses"
        issues.append(
            (
                (*path[:-1], "address"),
                f"{vip.address} on {name}: outside every subnet on {name} ({shown}), so no "
                "neighbour would send traffic to it here. Use an address in one of those "
                "subnets or fix `interface`",
            )
        )
    return issues


def vip_subnet_problems(
    config: Config, interface_networks: Mapping[str, Sequence[IPInterface]]
) -> list[str]:
    """VIPs that could not work on this host, as `key: message` lines (no file lines).

    `missing_interfaces` and `vip_subnet_issues` give the same findings with key paths, which
    `LoadedConfig.problem` places on their lines.
    """
    subnet = dict(vip_subnet_issues(config, interface_networks))
    problems = []
    for path, _, name, vip in interface_uses(config):
        if vip is None:
            continue
        key, address = _key(path[:-1]), (*path[:-1], "address")
        if name not in interface_networks:
            known = ", ".join(sorted(interface_networks)) or "none"
            problems.append(
                f"{key}: {vip.address} on {name}: this host has no interface {name} (it has: "
                f"{known}). Fix `interface`, or name the interfaces the same on every node"
            )
        elif address in subnet:
            problems.append(f"{key}: {subnet[address]}")
    return problems


def _key(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
