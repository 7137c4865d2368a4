"""The typed objects other modules use: field types, immutability, ClusterSpec, check helpers."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hafailover.config.loader import parse_config
from hafailover.config.schema import CheckKind, Config, HostPort, NodeConfig
from hafailover.core.spec import ClusterSpec, NodeSpec, Timings

TEXT = """\
cluster:
  name: web
  heartbeat_interval: 50ms
  failover_timeout: 400ms
  preempt: true
  preempt_delay: 1m
  clock_drift: 0.02
  max_loop_lag: 0.25
nodes:
  - {name: node1, address: 10.0.0.11, priority: 150}
  - {name: node2, address: "fd00::12", port: 6000}
  - {name: tiebreak, address: 10.0.0.20, witness: true}
vips:
  - {address: 10.0.0.100/24, interface: eth0}
  - {address: "fd00::100/64", interface: eth0}
checks:
  - {name: web, http: "https://127.0.0.1:8443/healthz", expect_status: 204, expect_body: ok}
  - {name: db, script: [/usr/local/bin/check-db, --deep]}
  - {name: sh, shell: true, script: "test -e /run/db.pid"}
  - {name: pg, tcp: "[::1]:5432", critical: false}
notify:
  leader: /etc/hafailover/on-leader
  stop: [/usr/bin/logger, stopping]
"""


@pytest.fixture
def config() -> Config:
    return parse_config(TEXT, "t.yaml").config


def test_cluster_fields(config: Config) -> None:
    c = config.cluster
    assert (c.name, c.port, c.key_file) == ("web", 5405, Path("/etc/hafailover/cluster.key"))
    assert (c.heartbeat_interval, c.failover_timeout, c.lease_guard) == (0.05, 0.4, 0.05)
    assert (c.preempt, c.preempt_delay, c.clock_drift, c.watchdog) == (True, 60.0, 0.02, True)
    assert c.max_loop_lag_seconds == pytest.approx(0.1)


def test_cluster_spec(config: Config) -> None:
    spec = config.cluster_spec()
    assert spec == ClusterSpec(
        nodes=(
            NodeSpec("node1", 150, False),
            NodeSpec("node2", 100, False),
            NodeSpec("tiebreak", 100, True),
        ),
        timings=Timings(
            heartbeat_interval=0.05,
            failover_timeout=0.4,
            clock_drift=0.02,
            lease_guard=0.05,
            preempt_delay=60.0,
        ),
        preempt=True,
    )
    spec.timings.validate()


def test_nodes_and_vips_are_typed(config: Config) -> None:
    node1, node2, witness = config.nodes
    assert node1.address == ipaddress.IPv4Address("10.0.0.11")
    assert node2.address == ipaddress.IPv6Address("fd00::12")
    assert (config.port_of(node1), config.port_of(node2)) == (5405, 6000)
    assert witness.witness and not node1.witness
    assert config.node("node2") is node2 and config.node("nope") is None
    vip4, vip6 = config.vips
    assert vip4.address == ipaddress.IPv4Interface("10.0.0.100/24")
    assert (vip4.ip, vip4.network) == (
        ipaddress.IPv4Address("10.0.0.100"),
        ipaddress.IPv4Network("10.0.0.0/24"),
    )
    assert vip6.ip == ipaddress.IPv6Address("fd00::100") and vip6.interface == "eth0"


def test_checks(config: Config) -> None:
    web, db, sh, pg = config.checks
    assert [c.kind for c in config.checks] == [
        CheckKind.HTTP,
        CheckKind.SCRIPT,
        CheckKind.SCRIPT,
        CheckKind.TCP,
    ]
    assert (web.expect_status, web.expect_body) == ((204, 204), "ok")
    assert (db.interval, db.timeout, db.fall, db.rise, db.critical) == (1.0, 1.0, 2, 2, True)
    assert db.argv == ("/usr/local/bin/check-db", "--deep")
    assert sh.argv == ("/bin/sh", "-c", "test -e /run/db.pid")
    assert pg.tcp == HostPort("::1", 5432) and not pg.critical
    assert pg.expect_status == (200, 399)
    with pytest.raises(ValueError, match="check pg is a tcp check, not a script"):
        _ = pg.argv


def test_notify_hooks_are_argv_tuples(config: Config) -> None:
    assert config.notify.leader == ("/etc/hafailover/on-leader",)
    assert config.notify.stop == ("/usr/bin/logger", "stopping")
    assert config.notify.follower is None
    assert config.notify.timeout == 10.0


def test_defaults_of_the_top_level(config: Config) -> None:
    assert config.control_socket == Path("/run/hafailover/control.sock")
    assert config.control_group == "hafailover"
    assert config.state_dir == Path("/var/lib/hafailover")
    assert config.log_level == "info"
    assert (config.announce.count, config.announce.interval, config.announce.refresh) == (
        3,
        0.1,
        0.0,
    )


def test_config_is_immutable(config: Config) -> None:
    with pytest.raises(ValidationError):
        config.log_level = "debug"
    with pytest.raises(ValidationError):
        config.nodes[0].priority = 1
    assert isinstance(config.nodes, tuple) and isinstance(config.checks[1].script, tuple)
    assert hash(config.nodes[0]) == hash(config.nodes[0])


def test_programmatic_construction_applies_the_same_rules() -> None:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate(
            {
                "cluster": {"name": "web"},
                "nodes": [
                    {"name": "a", "address": "10.0.0.1"},
                    {"name": "a", "address": "10.0.0.2"},
                ],
            }
        )
    assert "[1].name: node name a is already used by entry [0]" in str(caught.value)
    node = NodeConfig.model_validate({"name": "a", "address": "10.0.0.1"})
    assert node.priority == 100 and node.port is None


def test_importing_the_package_does_not_import_pydantic() -> None:
    # durations and resolve are used by light callers (CLI argument parsing).
    code = (
        "import sys, hafailover.config, hafailover.config.durations, hafailover.config.resolve;"
        "assert 'pydantic' not in sys.modules, 'pydantic imported';"
        "assert 'yaml' not in sys.modules, 'yaml imported';"
        "hafailover.config.Config;"
        "assert 'pydantic' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
