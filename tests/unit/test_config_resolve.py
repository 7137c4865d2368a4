from __future__ import annotations

import ipaddress

import pytest

from hafailover.config.loader import parse_config
from hafailover.config.resolve import (
    NodeResolutionError,
    interface_uses,
    missing_interfaces,
    resolve_self,
    vip_subnet_issues,
    vip_subnet_problems,
)
from hafailover.config.schema import Config

TEXT = """\
cluster: {name: web}
nodes:
  - {name: node1, address: 10.0.0.11}
  - {name: node2, address: 10.0.0.12}
  - {name: lab1, address: 127.0.0.1, port: 7001, witness: true}
  - {name: lab2, address: 127.0.0.1, port: 7002}
  - {name: node5, address: "fd00::15"}
vips:
  - {address: 10.0.0.100/24, interface: eth0}
  - {address: 192.168.1.100/24, interface: eth1}
"""
NODES = "node1 (10.0.0.11), node2 (10.0.0.12), lab1 (127.0.0.1), lab2 (127.0.0.1), node5 (fd00::15)"
ip = ipaddress.ip_address
iface = ipaddress.ip_interface


@pytest.fixture
def config() -> Config:
    return parse_config(TEXT, "t.yaml").config


def test_node_option_wins(config: Config) -> None:
    assert resolve_self(config, "node2", "node1", [ip("10.0.0.11")]).name == "node2"


def test_unknown_node_option(config: Config) -> None:
    with pytest.raises(NodeResolutionError) as caught:
        resolve_self(config, "node9", "node1", [])
    assert str(caught.value) == f"--node node9: no such node in the configuration. Nodes: {NODES}"


def test_hostname_matches_a_node_name(config: Config) -> None:
    assert resolve_self(config, None, "node2", [ip("10.0.0.11")]).name == "node2"


def test_fqdn_hostname_matches_by_its_first_label(config: Config) -> None:
    assert resolve_self(config, None, "node2.example.com", []).name == "node2"


def test_local_address_matches_a_node_address(config: Config) -> None:
    local = [ip("192.168.7.7"), ip("fd00::15")]
    assert resolve_self(config, None, "db-host", local).name == "node5"


def test_address_shared_by_several_nodes_is_ambiguous(config: Config) -> None:
    with pytest.raises(NodeResolutionError) as caught:
        resolve_self(config, None, "laptop", [ip("127.0.0.1")])
    assert str(caught.value) == (
        "this host has the address of several nodes (lab1, lab2). Pass --node NAME to choose"
    )


def test_no_match_lists_nodes_and_how_to_choose(config: Config) -> None:
    with pytest.raises(NodeResolutionError) as caught:
        resolve_self(config, None, "web7", [ip("10.0.0.99"), ip("10.0.0.98")])
    assert str(caught.value) == (
        "cannot tell which node this host is: hostname 'web7' is not a node name and none of "
        f"its addresses (10.0.0.98, 10.0.0.99) is a node address. Nodes: {NODES}. Pass --node "
        "NAME, or name the host after its node"
    )


def test_vips_inside_their_subnets(config: Config) -> None:
    networks = {
        "lo": [iface("127.0.0.1/8")],
        "eth0": [iface("10.0.0.11/24")],
        "eth1": [iface("192.168.1.5/24"), iface("fe80::1/64")],
    }
    assert vip_subnet_problems(config, networks) == []


def test_vip_outside_every_subnet_of_its_interface(config: Config) -> None:
    networks = {"eth0": [iface("10.0.1.11/24")], "eth1": [iface("192.168.1.5/24")]}
    assert vip_subnet_problems(config, networks) == [
        "vips[0]: 10.0.0.100/24 on eth0: outside every subnet on eth0 (10.0.1.11/24), so no "
        "neighbour would send traffic to it here. Use an address in one of those subnets or fix "
        "`interface`"
    ]


def test_vip_already_present_does_not_vouch_for_itself(config: Config) -> None:
    # On the current leader the VIP is on the interface; it must not count as the subnet.
    networks = {"eth0": [iface("10.0.0.11/24")], "eth1": [iface("192.168.1.100/24")]}
    assert vip_subnet_problems(config, networks) == [
        "vips[1]: 192.168.1.100/24 on eth1: outside every subnet on eth1 (no addresses), so no "
        "neighbour would send traffic to it here. Use an address in one of those subnets or fix "
        "`interface`"
    ]


def test_vip_on_a_missing_interface(config: Config) -> None:
    networks = {"eth0": [iface("10.0.0.11/24")], "lo": [iface("127.0.0.1/8")]}
    assert vip_subnet_problems(config, networks) == [
        "vips[1]: 192.168.1.100/24 on eth1: this host has no interface eth1 (it has: eth0, lo). "
        "Fix `interface`, or name the interfaces the same on every node"
    ]


# --- per-group interfaces ----------------------------------------------------------------------

GROUPS = """\
cluster: {name: web}
nodes:
  - {name: node1, address: 10.0.0.11}
groups:
  - name: web
    vips:
      - {address: 10.0.0.100/24, interface: eth0}
      - {address: 192.168.1.100/24, interface: eth9}
    track_interfaces: [eth1, eth7]
  - name: db
    vips: [{address: 10.0.0.101/24, interface: eth9}]
    track_interfaces: [eth7]
"""


def test_missing_interfaces_are_named_once_at_their_first_use() -> None:
    config = parse_config(GROUPS, "t.yaml").config
    assert missing_interfaces(config, {"lo", "eth0", "eth1"}) == [
        (
            ("groups", 0, "vips", 1, "interface"),
            "this host has no interface eth9 (it has: eth0, eth1, lo), needed by groups web, db. "
            "Fix the name, or name the interfaces the same on every node",
        ),
        (
            ("groups", 0, "track_interfaces", 1),
            "this host has no interface eth7 (it has: eth0, eth1, lo), needed by groups web, db. "
            "Fix the name, or name the interfaces the same on every node",
        ),
    ]
    assert missing_interfaces(config, {"eth0", "eth1", "eth7", "eth9"}) == []


def test_missing_interfaces_of_the_default_group(config: Config) -> None:
    assert missing_interfaces(config, {"eth0"}) == [
        (
            ("vips", 1, "interface"),
            "this host has no interface eth1 (it has: eth0), needed by group default. Fix the "
            "name, or name the interfaces the same on every node",
        )
    ]


def test_subnet_issues_per_group_vip() -> None:
    config = parse_config(GROUPS, "t.yaml").config
    networks = {"eth0": [iface("10.0.0.11/24")], "eth9": [iface("10.0.0.11/24")]}
    assert vip_subnet_issues(config, networks) == [
        (
            ("groups", 0, "vips", 1, "address"),
            "192.168.1.100/24 on eth9: outside every subnet on eth9 (10.0.0.11/24), so no "
            "neighbour would send traffic to it here. Use an address in one of those subnets or "
            "fix `interface`",
        )
    ]
    assert vip_subnet_problems(config, networks) == [
        "groups[0].vips[1]: 192.168.1.100/24 on eth9: outside every subnet on eth9 "
        "(10.0.0.11/24), so no neighbour would send traffic to it here. Use an address in one "
        "of those subnets or fix `interface`"
    ]


def test_interface_uses_in_file_order() -> None:
    config = parse_config(GROUPS, "t.yaml").config
    assert [(path[-2:], group, name) for path, group, name, _ in interface_uses(config)] == [
        ((0, "interface"), "web", "eth0"),
        ((1, "interface"), "web", "eth9"),
        (("track_interfaces", 0), "web", "eth1"),
        (("track_interfaces", 1), "web", "eth7"),
        ((0, "interface"), "db", "eth9"),
        (("track_interfaces", 0), "db", "eth7"),
    ]
