"""The CLI, through click's runner, against real daemons over their real control sockets.

The daemons run in lab namespaces; Unix sockets are files, so the runner in this process
reaches them directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hafailover.cli import cli
from lab.cluster import HaCluster
from lab.netns import Lab

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cluster() -> Iterator[HaCluster]:
    with Lab(3, prefix="hfcli") as lab:
        c = HaCluster(lab)
        c.start_all()
        c.wait_for_holder(timeout=10)
        yield c


def hafailover(cluster: HaCluster, node: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--socket", str(cluster.socket(node)), *args])


def wait_healthy(cluster: HaCluster, node: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if hafailover(cluster, node, "status").exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError(hafailover(cluster, node, "status").output)


def test_status_json_has_the_documented_schema(cluster: HaCluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.lab.nodes if n != leader)
    wait_healthy(cluster, follower)
    result = hafailover(cluster, follower, "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    documented = ("node", "role", "term", "leader", "holds_vip", "healthy", "quorum", "vips")
    for key in (*documented, "nodes"):
        assert key in status
    assert status["node"] == follower and status["role"] == "follower"
    assert status["leader"] == leader and status["vip_holder"] == leader
    assert status["holds_vip"] is False and status["quorum"] is True
    names = [n["name"] for n in status["nodes"]]
    assert names == cluster.lab.nodes
    for n in status["nodes"]:
        assert {"name", "role", "healthy", "priority", "maintenance", "last_heard_ms"} <= set(n)
    assert next(n for n in status["nodes"] if n["name"] == leader)["last_heard_ms"] < 1000


def test_status_text_names_the_holder_and_exits_0_when_healthy(cluster: HaCluster) -> None:
    leader = cluster.leader()
    wait_healthy(cluster, leader)
    result = hafailover(cluster, leader, "status")
    assert result.exit_code == 0
    assert f"VIP holder {leader}" in result.output


def test_switchover_moves_the_vip_and_reports_the_time(cluster: HaCluster) -> None:
    before = cluster.leader()
    target = next(n for n in cluster.lab.nodes if n != before)
    wait_healthy(cluster, before)
    # Run from a follower: the request is forwarded to the leader.
    origin = next(n for n in cluster.lab.nodes if n not in (before, target))
    result = hafailover(cluster, origin, "switchover", "--to", target, "--timeout", "5s")
    assert result.exit_code == 0, result.output
    assert f"VIP now held by {target}" in result.output
    assert cluster.wait_for_holder(timeout=5)[0] == target
    events = hafailover(cluster, before, "events", "--json", "-n", "50")
    reasons = [e["reason"] for e in json.loads(events.output)["events"]]
    assert "switchover" in reasons


def test_switchover_to_an_unknown_node_is_refused_with_exit_1(cluster: HaCluster) -> None:
    leader = cluster.leader()
    result = hafailover(cluster, leader, "switchover", "--to", "nosuchnode")
    assert result.exit_code == 1
    assert "target-unknown" in result.output
    assert cluster.leader() == leader


def test_maintenance_everywhere_leaves_no_holder_and_status_exits_2(cluster: HaCluster) -> None:
    nodes = cluster.lab.nodes
    try:
        for n in nodes:
            assert hafailover(cluster, n, "maintenance", "on").exit_code == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and cluster.holders():
            time.sleep(0.05)
        assert cluster.holders() == []
        # A follower keeps naming the last holder until its promise runs out (one failover
        # timeout after the last heartbeat), so poll for the settled answer.
        deadline = time.monotonic() + 3
        result = hafailover(cluster, nodes[0], "status")
        while result.exit_code != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            result = hafailover(cluster, nodes[0], "status")
        assert result.exit_code == 2, result.output
        assert "no node holds the VIP" in result.output
    finally:
        for n in nodes:
            hafailover(cluster, n, "maintenance", "off")
    cluster.wait_for_holder(timeout=10)


def test_status_exits_3_when_no_daemon_answers(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "status"])
    assert result.exit_code == 3
