"""Which node of the configuration this host is, and whether its VIPs fit its interfaces.

Both are pure: the caller reads the hostname and the interface addresses from the system (the
`check-config` command and the daemon do) and passes them in, so this is testable without a host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from hafailover.errors import LocalError

if TYPE_CHECKING:  # keeps pydantic out of callers that only resolve
    from hafailover.config.schema import Config, NodeConfig

__all__ = ["NodeResolutionError", "resolve_self", "vip_subnet_problems"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


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


def vip_subnet_problems(
    config: Config, interface_networks: Mapping[str, Sequence[IPInterface]]
) -> list[str]:
    """VIPs that could not work on this host, given each interface's configured addresses.

    A VIP outside every subnet on its interface would be added but never reached (no neighbour
    on the link sends to it). The VIPs themselves are ignored among the interface addresses:
    on the current leader they are present and would vouch for themselves.
    """
    vip_ips = {vip.ip for vip in config.vips}
    problems = []
    for i, vip in enumerate(config.vips):
        where = f"vips[{i}]: {vip.address} on {vip.interface}"
        if vip.interface not in interface_networks:
            known = ", ".join(sorted(interface_networks)) or "none"
            problems.append(
                f"{where}: this host has no interface {vip.interface} (it has: {known}). "
                "Fix `interface`, or name the interfaces the same on every node"
            )
            continue
        subnets = [a for a in interface_networks[vip.interface] if a.ip not in vip_ips]
        if any(vip.ip in a.network for a in subnets if a.version == vip.address.version):
            continue
        shown = ", ".join(str(a) for a in subnets) or "no addresses"
        problems.append(
            f"{where}: outside every subnet on {vip.interface} ({shown}), so no neighbour "
            "would send traffic to it here. Use an address in one of those subnets or fix "
            "`interface`"
        )
    return problems
