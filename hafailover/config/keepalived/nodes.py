"""The nodes of the imported cluster: one per host file, plus the unicast peers without a file.

A host's address is its `unicast_src_ip` (IPv4 first when it has both families); a peer is known
by its `unicast_peer` address; `--node-name IP=NAME` names an address, or gives a host of a
multicast setup (whose file names no address) its address by naming the node after the file. An
instance of the other address family lists the same peers under their other addresses: they are
matched by position. Addresses still unknown get placeholders from TEST-NET-2, with a note.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hafailover.config.keepalived.host import Host, IPAddress
from hafailover.config.keepalived.parse import KeepalivedSyntaxError, Note

__all__ = ["Node", "resolve_nodes", "unique_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Placeholders come from TEST-NET-2 (RFC 5737), which is never a real node's address.
_PLACEHOLDER_NET = ipaddress.ip_network("198.51.100.0/24")


@dataclass
class Node:
    name: str | None
    address: IPAddress | None
    source: str  # where it comes from, for the comment in the output
    host: int | None = None  # index of its file, None for a peer without a file
    aliases: list[IPAddress] = field(default_factory=list)


def unique_name(wanted: str, taken: set[str], fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", wanted).lstrip("._-")[:63] or fallback
    base, n = name, 2
    while name in taken:
        suffix = f"-{n}"
        name, n = base[: 63 - len(suffix)] + suffix, n + 1
    return name


def _own_addresses(host: Host) -> list[IPAddress]:
    found = [i.unicast_src for i in host.instances if i.unicast_src is not None]
    ordered = sorted(dict.fromkeys(found), key=lambda a: a.version)
    return ordered


def resolve_nodes(
    hosts: Sequence[Host],
    host_names: Sequence[str | None],
    node_names: Mapping[IPAddress, str],
    vips: set[IPAddress],
    notes: list[Note],
) -> list[Node]:
    nodes: list[Node] = []
    owner: dict[IPAddress, Node] = {}
    for index, host in enumerate(hosts):
        own = _own_addresses(host)
        name = next((node_names[a] for a in own if a in node_names), None) or host_names[index]
        node = Node(name, own[0] if own else None, host.source, index, own[1:])
        nodes.append(node)
        for address in own:
            if address in owner:
                where = next(i.where for i in host.instances if i.unicast_src == address)
                raise KeepalivedSyntaxError(
                    where,
                    f"unicast_src_ip {address} is also {owner[address].source}'s: two files "
                    "claim the same host address. Give each host's file once",
                )
            owner[address] = node
    for host in hosts:
        _peers(host, owner, nodes, node_names, notes)
    by_name = {n.name: n for n in nodes if n.name is not None}
    for address, name in node_names.items():
        known = owner.get(address) or by_name.get(name)
        if known is None:
            known = Node(name, address, "--node-name")
            nodes.append(known)
            by_name[name] = known
        elif known.address is None:
            known.address = address
        owner[address] = known
    if len(nodes) == 1:
        nodes.append(Node(None, None, "placeholder"))
        notes.append(
            Note(
                None,
                "no unicast_peer and only one host's file: the other nodes are unknown. "
                "One placeholder node was written: import every host's file at once, or name "
                "the nodes with --node-name IP=NAME",
            )
        )
    spare = (a for a in _PLACEHOLDER_NET.hosts() if a not in vips)
    reserved = {n.name for n in nodes if n.name and _NAME.fullmatch(n.name)}
    taken: set[str] = set()
    for number, node in enumerate(nodes, start=1):
        if node.name is None or not _NAME.fullmatch(node.name) or node.name in taken:
            node.name = unique_name(f"node{number}", taken | reserved, "node")
        taken.add(node.name)
        if node.address is None:
            node.address = next(spare)
            notes.append(
                Note(
                    None,
                    f"node {node.name} ({node.source}): its address is unknown "
                    f"(multicast VRRP); placeholder {node.address} written. Replace it, or "
                    f"pass --node-name ADDRESS={node.name}",
                )
            )
    return nodes


def _peers(
    host: Host,
    owner: dict[IPAddress, Node],
    nodes: list[Node],
    node_names: Mapping[IPAddress, str],
    notes: list[Note],
) -> None:
    primary = owner.get(_own_addresses(host)[0]) if _own_addresses(host) else None
    family = primary.address.version if primary and primary.address else None
    lists = [i.unicast_peers for i in host.instances if i.unicast_peers]
    main = next((p for p in lists if p[0].version == family), lists[0] if lists else [])
    for inst in host.instances:
        for position, peer in enumerate(inst.unicast_peers):
            if peer in owner:
                continue
            name = node_names.get(peer)
            if (
                name is None
                and peer.version != main[0].version
                and len(inst.unicast_peers) == len(main)
            ):
                twin = main[position]
                if twin not in owner:
                    _new_peer(twin, owner, nodes, node_names)
                owner[peer] = owner[twin]
                owner[twin].aliases.append(peer)
                notes.append(
                    Note(
                        inst.where,
                        f"unicast_peer {peer} taken to be the same node as {twin} "
                        "(same position in the other address family's unicast_peer list); "
                        f"hafailover reaches each node at one address ({twin})",
                    )
                )
                continue
            by_name = next((n for n in nodes if name is not None and n.name == name), None)
            if by_name is not None:
                owner[peer] = by_name
                by_name.aliases.append(peer)
            else:
                _new_peer(peer, owner, nodes, node_names)


def _new_peer(
    address: IPAddress,
    owner: dict[IPAddress, Node],
    nodes: list[Node],
    node_names: Mapping[IPAddress, str],
) -> None:
    node = Node(node_names.get(address), address, "unicast_peer")
    nodes.append(node)
    owner[address] = node
