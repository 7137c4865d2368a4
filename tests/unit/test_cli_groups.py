"""The CLI with VIP groups, against a real control server playing the daemon (test_cli's
ScriptedHandler): per-group status verdict and table, switchover --group, events --group,
check-config against the peers' configuration fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hafailover.cli import Settings, _compare_with_peers
from hafailover.cli import format as fmt
from hafailover.config import parse_config
from hafailover.control import protocol as p
from tests.unit.test_cli import (  # noqa: F401 - fixtures
    ScriptedHandler,
    daemon,
    handler,
    invoke,
    sock_dir,
)

CONFIG = """\
cluster: {name: web, key_file: /nonexistent/key}
nodes:
  - {name: node1, address: 10.213.0.11}
  - {name: node2, address: 10.213.0.12}
  - {name: node3, address: 10.213.0.13}
vips: [{address: 10.213.0.100/24, interface: eth0}]
"""


def _group(name: str, holder: str | None, eligible: bool = True) -> dict[str, Any]:
    return {
        "name": name, "role": "follower", "term": 3, "leader": holder, "holder": holder,
        "holds_vip": False, "preferred": "node1", "priority": 100, "lease_remaining_ms": None,
        "quorum": True, "eligible": eligible,
        "not_eligible": [] if eligible else ["link eth1: link eth1 is down"], "vips": [],
    }


def test_the_worst_group_decides_the_status_exit_code(
    daemon: Path, handler: ScriptedHandler  # noqa: F811
) -> None:
    handler.status["groups"] = [_group("web", "node1"), _group("db", None, eligible=False)]
    result = invoke(daemon, "status")
    assert result.exit_code == 2, result.output
    assert "no node holds group db" in result.stdout
    assert "link eth1: link eth1 is down" in result.stdout  # why this node is not eligible
    handler.status["groups"] = [_group("web", "node1"), _group("db", "node2")]
    handler.status["drift"] = [{"node": "node3", "sections": ["nodes"]}]
    result = invoke(daemon, "status")
    assert result.exit_code == 1 and "node3 has a different configuration (nodes)" in result.stdout



def test_a_group_without_quorum_degrades_the_status_verdict() -> None:
    status: dict[str, Any] = {"node": "node2", "quorum": True, "nodes": [],
                              "groups": [_group("web", "node1"), _group("db", "node2")]}
    assert fmt.status_verdict(status) == (0, "healthy")
    status["groups"][1]["quorum"] = False
    assert fmt.status_verdict(status) == (1, "degraded: node2 has no quorum for db")

def test_status_header_with_groups_names_no_single_leader(
    daemon: Path, handler: ScriptedHandler  # noqa: F811
) -> None:
    web, db = _group("web", "node1"), _group("db", "node2")
    web["holds_vip"] = True  # this node (node1) holds web, node2 holds db
    db["quorum"] = False
    handler.status["groups"] = [web, db]
    handler.status["drift"] = [{"node": "node3", "sections": ["nodes"]}]
    out = invoke(daemon, "status").stdout
    header, local = out.splitlines()[:2]
    assert header == "cluster test  2 groups, 2 held  quorum NO (db)  config drift node3"
    assert local.startswith("this node: node1 (holds web, up ")
    assert "VIP holder" not in out and "leader node1" not in out
    web["holds_vip"] = False
    db.update(holder=None, quorum=True)
    handler.status["drift"] = []
    header, local = invoke(daemon, "status").stdout.splitlines()[:2]
    assert header == "cluster test  2 groups, 1 held  quorum yes  config drift none"
    assert local.startswith("this node: node1 (holds no group, up ")


def test_status_with_one_group_keeps_the_election_header(
    daemon: Path, handler: ScriptedHandler  # noqa: F811
) -> None:
    handler.status["groups"] = [_group("default", "node1")]
    out = invoke(daemon, "status").stdout
    assert out.startswith("cluster test  term 7  leader node1  VIP holder node1  quorum yes")


def test_switchover_names_the_group_and_waits_for_its_holder(
    daemon: Path, handler: ScriptedHandler  # noqa: F811
) -> None:
    handler.status["groups"] = [_group("web", "node1"), _group("db", "node1")]
    orig = handler._move

    def move(target: str) -> None:
        orig(target)
        handler.status["groups"][1]["holder"] = target  # only db moves

    handler._move = move  # type: ignore[method-assign]
    result = invoke(daemon, "switchover", "--group", "db", "--to", "node2")
    assert result.exit_code == 0, result.output
    assert "VIP now held by node2" in result.stdout
    sent = [r for r in handler.requests if isinstance(r, p.SwitchoverRequest)]
    assert sent == [p.SwitchoverRequest(to="node2", group="db")]


def test_events_of_one_group(daemon: Path, handler: ScriptedHandler) -> None:  # noqa: F811
    assert invoke(daemon, "events", "--group", "web").exit_code == 0
    sent = [r for r in handler.requests if isinstance(r, p.EventsRequest)]
    assert sent and sent[0].group == "web"


def test_check_config_compares_with_the_peers_fingerprints(
    daemon: Path, handler: ScriptedHandler, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    config = parse_config(CONFIG).config
    ours = dict(config.fingerprint())
    handler.status["fingerprint"] = ours
    handler.status["peer_fingerprints"] = {
        "node2": ours,
        "node3": {**ours, "nodes": "0" * 16},
        "node4": {**ours, "timings": "0" * 16},
    }
    report = fmt.Report()
    _compare_with_peers(config, Settings(socket=daemon, config=None), report)
    out = capsys.readouterr().out
    assert report.failed
    assert "node2 has the same cluster-wide configuration" in out
    assert "node3 differs in nodes" in out and "refuse each other's votes" in out
    assert "node4 differs in timings" in out


def test_check_config_without_a_daemon_says_it_did_not_compare(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    report = fmt.Report()
    _compare_with_peers(parse_config(CONFIG).config,
                        Settings(socket=sock_dir / "none.sock", config=None), report)
    assert not report.failed
    assert "not compared with the peers" in capsys.readouterr().out
