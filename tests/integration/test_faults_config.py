"""Configuration faults on real daemons: SIGHUP reloads and start-up refusals (exit 78)."""

from __future__ import annotations

import re
import time

import pytest

from lab.cluster import HaCluster
from lab.netns import Lab
from tests.integration.faultlab import figure, running_cluster, wait_for

EX_CONFIG = 78


def _check_names(status: dict[str, object]) -> list[str]:
    checks = status["checks"]
    assert isinstance(checks, list)
    return [str(c["name"]) for c in checks]


@pytest.mark.netns
def test_sighup_reload_of_checks_keeps_the_vip_and_membership_change_is_refused() -> None:
    with running_cluster() as rig:
        cluster, leader = rig.cluster, rig.first_holder
        path = cluster.config_path(leader)
        original = path.read_text()
        term = rig.term(leader)

        # A changed check (new name, new interval) applies live; the VIP never moves.
        changed = original.replace("name: service,", "name: service2,").replace(
            "interval: 200ms", "interval: 250ms")
        assert changed != original
        path.write_text(changed)
        t_reload = cluster.reload(leader)
        wait_for(lambda: "reloaded:" in cluster.log(leader), 5.0, "the reload to be logged")
        status = cluster.wait_status(leader, lambda s: _check_names(s) == ["service2"], 5.0)
        time.sleep(1.5)  # several runs of the new check
        status = cluster.status(leader)
        assert status["holds_vip"] and status["healthy"] and status["term"] == term
        assert [c["ok"] for c in status["checks"]] == [True]
        assert not rig.changes(leader, present=False, after=t_reload)
        assert not rig.events(leader, after=t_reload), rig.events(leader, after=t_reload)

        # Membership cannot change on the fly: refused, logged, the old config stays.
        extra = "  - {name: node4, address: 10.213.0.14, priority: 10}\n"
        refused = re.sub(r"(nodes:\n(?:  - .*\n)+)", lambda m: m.group(1) + extra, changed)
        refused = refused.replace("name: service2,", "name: service3,")
        assert "node4" in refused
        path.write_text(refused)
        t_refused = cluster.reload(leader)
        wait_for(lambda: "reload refused" in cluster.log(leader), 5.0, "the refusal")
        line = next(x for x in cluster.log(leader).splitlines() if "reload refused" in x)
        print("log:", line)
        assert "membership (nodes)" in line and "old configuration stays in force" in line
        time.sleep(0.5)
        status = cluster.status(leader)
        assert [n["name"] for n in status["nodes"]] == rig.nodes
        assert _check_names(status) == ["service2"]  # the refused file's check was not taken
        assert status["holds_vip"] and status["term"] == term
        assert not rig.changes(leader, present=False, after=t_refused)
        path.write_text(original)
        rig.assert_no_dual()


@pytest.mark.netns
def test_reload_that_fixes_a_failing_check_makes_the_node_healthy_again() -> None:
    with running_cluster() as rig:
        cluster = rig.cluster
        follower = next(n for n in rig.nodes if n != rig.first_holder)
        cluster.set_check(follower, "fail")
        cluster.wait_status(follower, lambda s: not s["healthy"], timeout=5.0)
        # The operator replaces the broken check with one that passes, and reloads.
        path = cluster.config_path(follower)
        path.write_text(re.sub(r"script: \[[^]]*\]", "script: [/bin/true]", path.read_text()))
        t_reload = cluster.reload(follower)
        status = cluster.wait_status(follower, lambda s: bool(s["healthy"]), timeout=5.0)
        figure("reload_to_healthy", (time.monotonic() - t_reload) * 1000)
        assert status["healthy"]
        assert rig.events(follower, "healthy", after=t_reload)


@pytest.mark.netns
def test_daemon_refuses_to_start_with_an_open_key_file_or_a_corrupt_state_file() -> None:
    # A one-node lab: whatever the daemon might touch is inside the lab's namespace.
    with Lab(1) as lab:
        cluster = HaCluster(lab)
        node = lab.nodes[0]
        cluster.key.chmod(0o644)
        proc = cluster.start(node)
        assert proc.wait(20.0) == EX_CONFIG, cluster.log(node)
        err = cluster.log(node)
        print("key file:", err.strip().splitlines()[-1])
        assert str(cluster.key) in err and "accessible by group or others" in err

        cluster.key.chmod(0o600)
        state = cluster.node_dir(node) / "state" / "state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text('{"version": 1, "term": ')  # torn write: not JSON
        proc = cluster.start(node)
        assert proc.wait(20.0) == EX_CONFIG, cluster.log(node)
        err = cluster.log(node)
        print("state file:", err.strip().splitlines()[-1])
        assert str(state) in err
        assert lab.vip_holders("10.213.0.100") == []
