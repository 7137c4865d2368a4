"""VIP groups: the shape from the design, the default group, per-group specs, the rules that
relate groups to nodes and checks, and the fingerprint of the cluster-wide settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hafailover.config.groups import DEFAULT_GROUP, FINGERPRINT_SECTIONS
from hafailover.config.loader import ConfigError, parse_config
from hafailover.config.schema import Config
from hafailover.core.spec import ClusterSpec, NodeSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "hafailover" / "hafailover.yaml"

# The configuration shape of the design, verbatim.
DESIGN = """\
nodes:
  - {name: node1, address: 10.0.0.11}
  - {name: node2, address: 10.0.0.12}
  - {name: node3, address: 10.0.0.13}
checks:
  - {name: nginx, http: "http://127.0.0.1/healthz"}
  - {name: pg, tcp: "127.0.0.1:5432"}
groups:
  - name: web
    vips: [{address: 10.0.0.100/24, interface: eth0}]
    priority: {node1: 150, node2: 100, node3: 50}   # nodes left out use nodes[].priority
    checks: [nginx]              # default: every critical check
    preempt: true                # default: cluster.preempt
    preempt_delay: 5s            # default: cluster.preempt_delay
    track_interfaces: [eth1]     # optional; a group's VIP interfaces are always tracked
    notify: {leader: /etc/hafailover/web-up}   # optional, overrides the top-level hooks
  - name: db
    vips: [{address: 10.0.0.101/24, interface: eth0}]
    priority: {node2: 150, node1: 100, node3: 50}
    checks: [pg]
"""
CLUSTER = "cluster: {name: c, preempt_delay: 20s}\n"
SINGLE = """\
cluster: {name: c, preempt: true}
nodes:
  - {name: node1, address: 10.0.0.11, priority: 150}
  - {name: node2, address: 10.0.0.12}
  - {name: node3, address: 10.0.0.13, witness: true}
vips:
  - {address: 10.0.0.100/24, interface: eth0}
checks:
  - {name: a, tcp: "127.0.0.1:1"}
  - {name: b, tcp: "127.0.0.1:2", critical: false}
notify: {leader: /bin/true}
"""


def load(text: str) -> Config:
    return parse_config(text, "t.yaml").config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_design_shape_loads_with_every_default_resolved() -> None:
    loaded = parse_config(CLUSTER + DESIGN, "t.yaml")
    assert loaded.warnings == ()
    web, db = loaded.config.groups
    assert web.name == "web"
    assert [str(v.address) for v in web.vips] == ["10.0.0.100/24"]
    assert dict(web.priorities) == {"node1": 150, "node2": 100, "node3": 50}
    assert (web.checks, web.preempt, web.preempt_delay) == (("nginx",), True, 5.0)
    assert web.track_interfaces == ("eth1",)
    assert web.interfaces == ("eth0", "eth1")
    assert web.notify.leader == ("/etc/hafailover/web-up",)
    assert db.name == "db"
    assert dict(db.priorities) == {"node1": 100, "node2": 150, "node3": 50}
    # Unset keys take the cluster's values.
    assert (db.checks, db.preempt, db.preempt_delay) == (("pg",), False, 20.0)
    assert (db.track_interfaces, db.interfaces) == ((), ("eth0",))
    assert db.notify.leader is None
    # The top-level vips stay empty; every VIP is reachable through the groups.
    assert loaded.config.vips == ()
    assert [str(v.ip) for v in loaded.config.all_vips] == ["10.0.0.100", "10.0.0.101"]


def test_group_spec_carries_the_group_ranking_and_preemption() -> None:
    config = load(CLUSTER + DESIGN)
    spec = config.group_spec("db")
    assert spec.nodes == (NodeSpec("node1", 100), NodeSpec("node2", 150), NodeSpec("node3", 50))
    assert spec.preempt is False
    assert spec.timings.preempt_delay == 20.0
    web = config.group_spec("web")
    assert (web.preempt, web.timings.preempt_delay) == (True, 5.0)
    assert web.timings.failover_timeout == config.cluster.failover_timeout
    with pytest.raises(KeyError):
        config.group_spec("nope")


def test_groups_follow_a_copy_with_changed_fields() -> None:
    config = load(CLUSTER + DESIGN)
    assert [g.name for g in config.groups] == ["web", "db"]
    copied = config.model_copy(update={"group_entries": config.group_entries[1:]})
    assert [g.name for g in copied.groups] == ["db"]
    assert [g.name for g in config.groups] == ["web", "db"]


def test_top_level_vips_are_one_group_named_default() -> None:
    config = load(SINGLE)
    (group,) = config.groups
    assert group.name == DEFAULT_GROUP == "default"
    assert group.vips == config.vips == config.all_vips
    assert dict(group.priorities) == {"node1": 150, "node2": 100, "node3": 100}
    assert group.checks == ("a",)  # every critical check
    assert (group.preempt, group.preempt_delay) == (True, 30.0)
    assert group.notify == config.notify
    # The default group's spec is the cluster spec of a file without groups.
    assert config.group_spec("default") == config.cluster_spec()


def test_the_default_group_has_the_cores_name() -> None:
    from hafailover.core import groups

    assert DEFAULT_GROUP == groups.DEFAULT_GROUP


def test_no_vips_and_no_groups_is_a_default_group_without_vips() -> None:
    config = load(SINGLE.replace("vips:\n  - {address: 10.0.0.100/24, interface: eth0}\n", ""))
    assert [(g.name, g.vips) for g in config.groups] == [("default", ())]


def test_group_notify_overrides_only_the_hooks_it_sets() -> None:
    text = SINGLE.replace("vips:\n  - {address: 10.0.0.100/24, interface: eth0}\n", "").replace(
        "notify: {leader: /bin/true}", "notify: {leader: /bin/true, stop: /bin/stop, timeout: 3s}"
    )
    text += (
        "groups:\n"
        "  - name: g\n"
        "    vips: [{address: 10.0.0.100/24, interface: eth0}]\n"
        "    notify: {leader: [/bin/g-up, x]}\n"
    )
    (group,) = load(text).groups
    assert group.notify.leader == ("/bin/g-up", "x")
    assert (group.notify.stop, group.notify.timeout) == (("/bin/stop",), 3.0)


def test_groups_and_top_level_vips_together_are_an_error() -> None:
    assert problems(SINGLE + "groups:\n  - {name: g}\n") == [
        "t.yaml:12: groups: groups and top-level vips are both set. Move the top-level vips into "
        "a group (or remove groups: to keep the single group named default)"
    ]


GROUPED = CLUSTER + DESIGN.split("groups:")[0] + "groups:\n"


def test_duplicate_group_names() -> None:
    text = GROUPED + (
        "  - {name: web, vips: [{address: 10.0.0.100/24, interface: eth0}]}\n"
        "  - {name: web, vips: [{address: 10.0.0.101/24, interface: eth0}]}\n"
    )
    assert problems(text) == [
        "t.yaml:11: groups[1].name: group name web is already used by entry [0]. Each must be "
        "unique"
    ]


def test_unknown_node_and_check_names_in_a_group_are_placed_on_their_line() -> None:
    text = GROUPED + (
        "  - name: web\n"
        "    vips: [{address: 10.0.0.100/24, interface: eth0}]\n"
        "    priority:\n"
        "      node1: 150\n"
        "      nod2: 100\n"
        "    checks:\n"
        "      - nginx\n"
        "      - ngnix\n"
    )
    assert problems(text) == [
        "t.yaml:14: groups[0].priority.nod2: no node is named 'nod2'. Did you mean 'node2'? "
        "Known nodes: node1, node2, node3",
        "t.yaml:17: groups[0].checks[1]: no check is named 'ngnix'. Did you mean 'nginx'? "
        "Known checks: nginx, pg",
    ]


def test_a_vip_in_two_groups() -> None:
    text = GROUPED + (
        "  - {name: web, vips: [{address: 10.0.0.100/24, interface: eth0}]}\n"
        "  - name: db\n"
        "    vips:\n"
        "      - {address: 10.0.0.101/24, interface: eth0}\n"
        "      - {address: 10.0.0.100/24, interface: eth1}\n"
    )
    assert problems(text) == [
        "t.yaml:14: groups[1].vips[1].address: VIP 10.0.0.100 is already in group web "
        "(groups[0].vips[0]). A VIP belongs to one group"
    ]


def test_a_group_vip_that_is_a_node_address() -> None:
    text = GROUPED + "  - {name: web, vips: [{address: 10.0.0.12/24, interface: eth0}]}\n"
    assert problems(text) == [
        "t.yaml:10: groups[0].vips[0].address: 10.0.0.12 is node node2's own address. A VIP must "
        "be an extra address that no node has permanently"
    ]


def test_group_field_types() -> None:
    text = GROUPED + (
        "  - name: bad name\n"
        "    priority: {node1: 300}\n"
        "    checks: nginx\n"
        "    preempt: yes please\n"
        "    track_interfaces: [eth0, 'a/b']\n"
    )
    assert problems(text) == [
        "t.yaml:10: groups[0].name: 'bad name' is not a valid name. Use letters, digits, '.', "
        "'_' and '-' (at most 63, starting with a letter or digit)",
        "t.yaml:11: groups[0].priority.node1: 300 is out of range: use a number from 0 to 255",
        "t.yaml:12: groups[0].checks: expected a list of names, got the text 'nginx'",
        "t.yaml:13: groups[0].preempt: expected true or false, got the text 'yes please'",
        "t.yaml:14: groups[0].track_interfaces[1]: 'a/b' is not a network interface name (like "
        "eth0 or ens3)",
    ]


def test_unknown_key_in_a_group_lists_the_group_keys() -> None:
    text = GROUPED + "  - {name: web, prio: 3}\n"
    assert problems(text) == [
        "t.yaml:10: groups[0].prio: unknown key 'prio'. Did you mean 'priority'?"
    ]


def test_group_warnings() -> None:
    text = GROUPED.replace(
        "- {name: node3, address: 10.0.0.13}", "- {name: w, address: 10.0.0.13, witness: true}"
    )
    text += "  - {name: web, priority: {w: 10}}\n"
    loaded = parse_config(text, "t.yaml")
    assert [str(w) for w in loaded.warnings] == [
        "t.yaml:10: groups[0].vips: group web has no VIPs: its leader only runs notify hooks. "
        "Add vips entries",
        "t.yaml:10: groups[0].priority.w: w is a witness and never holds VIPs: its priority has "
        "no effect. Remove it",
    ]


def test_example_groups_block_loads_when_uncommented() -> None:
    text = EXAMPLE.read_text()
    block = re.search(r"^# groups:\n(?:^#  .*\n)+", text, re.MULTILINE)
    assert block is not None
    uncommented = "".join(line[2:] + "\n" for line in block.group(0).splitlines())
    text = re.sub(r"^vips:\n(?:  - .*\n)+", "", text, flags=re.MULTILINE) + uncommented
    loaded = parse_config(text, "example.yaml")
    assert loaded.warnings == ()
    assert [g.name for g in loaded.config.groups] == ["web", "db"]


# --- metrics, vip_lifetime, link_settle, recover ---------------------------------------------


def test_metrics_is_off_unless_listen_is_given() -> None:
    assert load(SINGLE).metrics is None
    metrics = load(SINGLE + "metrics: {listen: '[::]:9405'}\n").metrics
    assert metrics is not None and metrics.listen == ("::", 9405)
    assert load(SINGLE + "metrics: {listen: 'localhost:9405'}\n").metrics is not None
    assert problems(SINGLE + "metrics: {listen: 'example.com:9405'}\n") == [
        "t.yaml:12: metrics.listen: 'example.com' is not an IP address to listen on. Write an "
        "address of this host, e.g. 127.0.0.1:9405, 0.0.0.0:9405 or [::]:9405"
    ]
    assert problems(SINGLE + "metrics: {}\n") == [
        "t.yaml:12: metrics.listen: required key is missing. Add `listen:` here (see "
        "docs/configuration.md)"
    ]


@pytest.mark.parametrize(
    ("written", "seconds"), [(None, 2.0), ("5s", 5.0), ("false", None), ("0", None), ("0s", None)]
)
def test_vip_lifetime(written: str | None, seconds: float | None) -> None:
    text = (
        SINGLE if written is None else SINGLE.replace("preempt: true", f"vip_lifetime: {written}")
    )
    assert load(text).cluster.vip_lifetime == seconds


def test_vip_lifetime_is_whole_seconds_and_longer_than_two_heartbeats() -> None:
    text = SINGLE.replace("preempt: true", "vip_lifetime: 1500ms")
    assert problems(text) == [
        "t.yaml:1: cluster.vip_lifetime: 1500ms is not a whole number of seconds: the kernel "
        "counts address lifetimes in seconds. Write e.g. 2s, or false to turn it off"
    ]
    text = SINGLE.replace(
        "preempt: true", "vip_lifetime: 1s, heartbeat_interval: 600ms, failover_timeout: 3s"
    )
    assert problems(text) == [
        "t.yaml:1: cluster.vip_lifetime: vip_lifetime (1s) is shorter than two heartbeats "
        "(1.2s): the leader could not renew its VIPs in time. Raise vip_lifetime or lower "
        "heartbeat_interval"
    ]


def test_startup_settle_reaches_every_group_spec() -> None:
    config = load(CLUSTER.replace("name: c,", "name: c, startup_settle: 3s,") + DESIGN)
    assert config.cluster.startup_settle == 3.0
    assert {config.group_spec(g.name).timings.startup_settle for g in config.groups} == {3.0}
    assert load(SINGLE).cluster_spec().timings.startup_settle == 1.0
    assert problems(SINGLE.replace("preempt: true", "startup_settle: 2m")) == [
        "t.yaml:1: cluster.startup_settle: startup_settle must be between 0 and 60 seconds: use "
        "e.g. 1s"
    ]


def test_link_settle_and_recover() -> None:
    config = load(SINGLE)
    assert config.cluster.link_settle == 1.0
    assert (config.checks[0].recover, config.checks[0].recover_timeout) == (None, 30.0)
    text = SINGLE.replace("preempt: true", "link_settle: 250ms").replace(
        '{name: a, tcp: "127.0.0.1:1"}',
        '{name: a, tcp: "127.0.0.1:1", recover: [systemctl, restart, a], recover_timeout: 5s}',
    )
    config = load(text)
    assert config.cluster.link_settle == 0.25
    assert config.checks[0].recover == ("systemctl", "restart", "a")
    assert config.checks[0].recover_timeout == 5.0
    text = SINGLE.replace(
        '{name: a, tcp: "127.0.0.1:1"}', '{name: a, tcp: "127.0.0.1:1", recover_timeout: 5s}'
    )
    assert problems(text) == [
        "t.yaml:9: checks[0].recover_timeout: recover_timeout applies only with recover. Remove it"
    ]


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_has_a_digest_per_section() -> None:
    fp = load(CLUSTER + DESIGN).fingerprint()
    assert tuple(fp) == FINGERPRINT_SECTIONS == ("cluster", "nodes", "groups", "timings")
    assert all(re.fullmatch(r"[0-9a-f]{16}", d) for d in fp.values())
    assert re.fullmatch(r"[0-9a-f]{16}", fp.digest)


def test_fingerprint_ignores_key_order_formatting_and_per_host_settings() -> None:
    base = load(CLUSTER + DESIGN).fingerprint()
    reordered = (
        "checks:\n"
        "  - {tcp: '127.0.0.1:5432', name: pg}\n"
        "  - {name: nginx, http: 'http://127.0.0.1/healthz'}\n"
    )
    text = (
        "nodes:\n"
        "  - {address: 10.0.0.13, name: node3}\n"
        "  - name: node1\n    address: 10.0.0.11\n"
        "  - {name: node2, address: 10.0.0.12}\n" + reordered + "groups:\n"
        "  - name: db\n"
        "    priority: {node1: 100, node3: 50, node2: 150}\n"
        "    vips: [{interface: eth0, address: 10.0.0.101/24}]\n"
        "  - name: web\n"
        "    priority: {node3: 50, node1: 150, node2: 100}\n"
        "    vips: [{address: 10.0.0.100/24, interface: eth0}]\n"
        "    preempt_delay: 5000ms\n"
        "    preempt: true\n"
        "    notify: {leader: /other/hook}\n"
        "log_level: debug\n"
        "state_dir: /elsewhere\n"
        "cluster: {preempt_delay: 20s, name: c, key_file: /other.key, max_loop_lag: 0.2}\n"
    )
    assert load(text).fingerprint() == base


def test_a_default_group_written_out_has_the_same_fingerprint() -> None:
    implicit = load(SINGLE)
    explicit = load(
        SINGLE.replace(
            "vips:\n  - {address: 10.0.0.100/24, interface: eth0}\n",
            "groups:\n  - {name: default, vips: [{address: 10.0.0.100/24, interface: eth0}]}\n",
        )
    )
    assert explicit.fingerprint() == implicit.fingerprint()


@pytest.mark.parametrize(
    ("change", "sections"),
    [
        (("name: c,", "name: d,"), ["cluster"]),
        # Every node's effective port changes with it.
        (("name: c,", "name: c, port: 5406,"), ["cluster", "nodes"]),
        (("name: c,", "name: c, failover_timeout: 1s,"), ["timings"]),
        (("address: 10.0.0.13}", "address: 10.0.0.14}"), ["nodes"]),
        (("node3: 50}", "node3: 60}"), ["groups"]),
        (("preempt_delay: 5s", "preempt_delay: 6s"), ["groups"]),
        (("preempt_delay: 20s", "preempt_delay: 21s"), ["groups"]),  # db inherits it
        (("10.0.0.101/24", "10.0.0.102/24"), ["groups"]),
        (
            (
                "- {name: node3, address: 10.0.0.13}",
                "- {name: node3, address: 10.0.0.13, priority: 99}",
            ),
            ["nodes"],
        ),
    ],
)
def test_fingerprint_names_the_section_that_differs(
    change: tuple[str, str], sections: list[str]
) -> None:
    base = load(CLUSTER + DESIGN).fingerprint()
    changed = load((CLUSTER + DESIGN).replace(*change)).fingerprint()
    assert changed.differing(base) == sections
    assert changed.digest != base.digest


def test_fingerprint_differing_counts_missing_sections() -> None:
    fp = load(SINGLE).fingerprint()
    other = dict(fp, extra="00")
    del other["nodes"]
    assert fp.differing(other) == ["nodes", "extra"]
    assert fp.differing(dict(fp)) == []


def test_cluster_spec_is_unchanged_for_group_files() -> None:
    # The cluster-wide spec (membership, timings) stays available; groups only add rankings.
    spec = load(CLUSTER + DESIGN).cluster_spec()
    assert isinstance(spec, ClusterSpec)
    assert spec.names == ("node1", "node2", "node3")
