"""One test per validation rule: the exact message and the line it points at."""

from __future__ import annotations

import textwrap

import pytest

from hafailover.config.loader import ConfigError, parse_config

BASE = """\
cluster:
  name: web
nodes:
  - {name: node1, address: 10.0.0.11}
  - {name: node2, address: 10.0.0.12}
  - {name: node3, address: 10.0.0.13}
vips:
  - {address: 10.0.0.100/24, interface: eth0}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    return [str(p) for p in caught.value.problems]


def with_cluster(*lines: str) -> str:
    return BASE.replace("name: web", "name: web" + "".join(f"\n  {line}" for line in lines))


def with_checks(*entries: str) -> str:
    return BASE + "checks:\n" + "".join(f"  - {e}\n" for e in entries)


# --- cluster timings (rules owned by the core's Timings.validate) ---------------------------


def test_failover_timeout_below_three_heartbeats() -> None:
    assert problems(with_cluster("failover_timeout: 250ms")) == [
        "t.yaml:3: cluster.failover_timeout: failover_timeout (0.25s) must be at least 3x "
        "heartbeat_interval (0.1s): raise failover_timeout or lower heartbeat_interval"
    ]


def test_zero_heartbeat_interval() -> None:
    assert problems(with_cluster("heartbeat_interval: 0")) == [
        "t.yaml:3: cluster.heartbeat_interval: heartbeat_interval must be positive: set "
        "heartbeat_interval to e.g. 100ms"
    ]


def test_lease_guard_above_heartbeat_points_at_the_key_the_file_sets() -> None:
    # lease_guard keeps its default here, so the error lands on heartbeat_interval.
    assert problems(with_cluster("heartbeat_interval: 20ms", "failover_timeout: 1s")) == [
        "t.yaml:3: cluster.heartbeat_interval: lease_guard must be between 0 and "
        "heartbeat_interval (0.02s): lower lease_guard or raise heartbeat_interval"
    ]


def test_lease_too_short_for_two_heartbeats() -> None:
    text = with_cluster("failover_timeout: 350ms", "clock_drift: 0.09", "lease_guard: 100ms")
    assert problems(text) == [
        "t.yaml:3: cluster.failover_timeout: the leader's lease (failover_timeout shortened by "
        "clock_drift and lease_guard) must cover at least two heartbeats: raise failover_timeout"
    ]


def test_clock_drift_range() -> None:
    assert problems(with_cluster("clock_drift: 0.1")) == [
        "t.yaml:3: cluster.clock_drift: 0.1 is out of range: use a fraction from 0 up to (not "
        "incl.) 0.1"
    ]


def test_max_loop_lag_is_a_fraction_not_a_duration() -> None:
    assert problems(with_cluster("max_loop_lag: 300ms")) == [
        "t.yaml:3: cluster.max_loop_lag: expected a fraction of failover_timeout such as 0.5, got "
        "the text '300ms'. max_loop_lag is not a duration: for 300ms with a 600ms "
        "failover_timeout write 0.5"
    ]


def test_max_loop_lag_range() -> None:
    assert problems(with_cluster("max_loop_lag: 1.5")) == [
        "t.yaml:3: cluster.max_loop_lag: 1.5 is out of range: use a fraction above 0 and at most 1"
    ]


# --- nodes ----------------------------------------------------------------------------------


def test_no_nodes_means_no_voters() -> None:
    assert problems("cluster: {name: web}\nnodes: []\n") == [
        "t.yaml:2: nodes: no nodes, so no voters: list every node of the cluster (the same list "
        "on all)"
    ]


def test_at_least_one_node_is_not_a_witness() -> None:
    text = "cluster: {name: web}\nnodes:\n  - {name: w, address: 10.0.0.20, witness: true}\n"
    assert problems(text) == [
        "t.yaml:2: nodes: every node is a witness, so none can hold the VIPs. Remove "
        "`witness: true` from at least one node"
    ]


def test_duplicate_node_name() -> None:
    assert problems(BASE.replace("name: node3", "name: node1")) == [
        "t.yaml:6: nodes[2].name: node name node1 is already used by entry [0]. Each must be unique"
    ]


def test_duplicate_node_address() -> None:
    assert problems(BASE.replace("10.0.0.13}", "10.0.0.12}")) == [
        "t.yaml:6: nodes[2].address: address 10.0.0.12 (port 5405) is already used by entry [1]. "
        "Each must be unique"
    ]


def test_duplicate_address_via_a_port_equal_to_the_cluster_port() -> None:
    text = BASE.replace("10.0.0.13}", "10.0.0.12, port: 5405}")
    assert problems(text) == [
        "t.yaml:6: nodes[2].address: address 10.0.0.12 (port 5405) is already used by entry [1]. "
        "Each must be unique"
    ]


def test_shared_address_with_distinct_ports_is_allowed() -> None:
    text = BASE.replace("10.0.0.12}", "127.0.0.1, port: 7001}").replace(
        "10.0.0.13}", "127.0.0.1, port: 7002}"
    )
    config = parse_config(text, "t.yaml").config
    assert [config.port_of(n) for n in config.nodes] == [5405, 7001, 7002]


def test_node_address_is_not_an_ip() -> None:
    assert problems(BASE.replace("10.0.0.12}", "node2.example.com}")) == [
        "t.yaml:5: nodes[1].address: 'node2.example.com' is not an IP address. Write an IPv4 "
        "(10.0.0.11) or IPv6 (fd00::11) address"
    ]


def test_node_address_with_prefix() -> None:
    assert problems(BASE.replace("10.0.0.12}", "10.0.0.12/24}")) == [
        "t.yaml:5: nodes[1].address: a node address takes no prefix length: write 10.0.0.12, "
        "not 10.0.0.12/24"
    ]


def test_node_address_multicast() -> None:
    assert problems(BASE.replace("10.0.0.12}", "224.0.0.18}")) == [
        "t.yaml:5: nodes[1].address: 224.0.0.18 cannot be a node address: use the node's own "
        "unicast address"
    ]


# --- vips -----------------------------------------------------------------------------------


def test_vip_needs_a_prefix() -> None:
    assert problems(BASE.replace("10.0.0.100/24", "10.0.0.100")) == [
        "t.yaml:8: vips[0].address: a VIP needs a prefix length: write 10.0.0.100/24 (or whatever "
        "prefix the subnet on the interface has)"
    ]


def test_vip_network_address() -> None:
    assert problems(BASE.replace("10.0.0.100/24", "10.0.0.255/24")) == [
        "t.yaml:8: vips[0].address: 10.0.0.255 is the network or broadcast address of "
        "10.0.0.0/24: pick a host address"
    ]


def test_vip_loopback() -> None:
    assert problems(BASE.replace("10.0.0.100/24", "127.0.0.5/8")) == [
        "t.yaml:8: vips[0].address: 127.0.0.5 cannot float between hosts: use a unicast address "
        "in a LAN subnet"
    ]


def test_vip_interface_name() -> None:
    assert problems(BASE.replace("eth0", "an-interface-name-too-long")) == [
        "t.yaml:8: vips[0].interface: 'an-interface-name-too-long' is not a network interface "
        "name (like eth0 or ens3)"
    ]


def test_duplicate_vip_even_with_another_prefix() -> None:
    text = BASE + "  - address: 10.0.0.100/16\n    interface: eth1\n"
    assert problems(text) == [
        "t.yaml:9: vips[1].address: VIP 10.0.0.100 is already used by entry [0]. Each must be "
        "unique"
    ]


def test_vip_equal_to_a_node_address() -> None:
    assert problems(BASE.replace("10.0.0.100/24", "10.0.0.12/24")) == [
        "t.yaml:8: vips[0].address: 10.0.0.12 is node node2's own address. A VIP must be an extra "
        "address that no node has permanently"
    ]


# --- checks ---------------------------------------------------------------------------------


def test_check_without_a_probe() -> None:
    assert problems(with_checks("{name: web, interval: 1s}")) == [
        "t.yaml:10: checks[0]: a check needs exactly one of script, http or tcp, but none is "
        "set. Split it into one check per probe"
    ]


def test_check_with_two_probes() -> None:
    assert problems(with_checks('{name: web, http: "http://x/", tcp: "x:80"}')) == [
        "t.yaml:10: checks[0]: a check needs exactly one of script, http or tcp, but http and "
        "tcp are set. Split it into one check per probe"
    ]


def test_script_string_needs_shell() -> None:
    assert problems(with_checks("{name: db, script: /usr/bin/check --deep}")) == [
        "t.yaml:10: checks[0].script: script is a single string. Give an argv list such as "
        "[/usr/local/bin/check-db, --deep], or set shell: true to run the string with /bin/sh -c"
    ]


def test_script_argv_must_be_text() -> None:
    assert problems(with_checks("{name: db, script: [/usr/bin/check, 3]}")) == [
        "t.yaml:10: checks[0].script: every argument must be non-empty text, got the number 3"
    ]


def test_script_argv_must_not_be_empty() -> None:
    assert problems(with_checks("{name: db, script: []}")) == [
        "t.yaml:10: checks[0].script: the list is empty: expected an argv list such as "
        "[/usr/local/bin/check-db, --deep]"
    ]


def test_shell_only_for_script_checks() -> None:
    assert problems(with_checks('{name: pg, tcp: "127.0.0.1:5432", shell: true}')) == [
        "t.yaml:10: checks[0].shell: shell applies only to script checks. Remove it"
    ]


def test_expect_fields_only_for_http_checks() -> None:
    text = with_checks('{name: pg, tcp: "127.0.0.1:5432", expect_status: 200, expect_body: ok}')
    assert problems(text) == [
        "t.yaml:10: checks[0].expect_body: expect_body applies only to http checks. Remove it",
        "t.yaml:10: checks[0].expect_status: expect_status applies only to http checks. Remove it",
    ]


def test_timeout_longer_than_fall_intervals() -> None:
    text = BASE + textwrap.dedent("""\
        checks:
          - name: web
            http: http://127.0.0.1/
            interval: 200ms
            timeout: 1s
        """)
    assert problems(text) == [
        "t.yaml:13: checks[0].timeout: timeout (1s) is longer than fall x interval (400ms): one "
        "hung probe would delay failover more than `fall` failed probes. Lower timeout or raise "
        "interval"
    ]


def test_zero_interval() -> None:
    assert problems(with_checks('{name: pg, tcp: "x:5432", interval: 0s}')) == [
        "t.yaml:10: checks[0].interval: must be longer than 0s"
    ]


def test_http_url() -> None:
    assert problems(with_checks('{name: web, http: "ftp://127.0.0.1/"}')) == [
        "t.yaml:10: checks[0].http: 'ftp://127.0.0.1/' is not an http(s) URL. Write e.g. "
        "http://127.0.0.1:8080/healthz"
    ]


def test_tcp_target_needs_a_port() -> None:
    assert problems(with_checks('{name: pg, tcp: "127.0.0.1"}')) == [
        "t.yaml:10: checks[0].tcp: '127.0.0.1' is not host:port with a port from 1 to 65535. "
        "Write host:port, e.g. 127.0.0.1:5432 or [::1]:5432"
    ]


def test_tcp_ipv6_needs_brackets() -> None:
    assert problems(with_checks('{name: pg, tcp: "::1:5432"}')) == [
        "t.yaml:10: checks[0].tcp: '::1:5432': put an IPv6 address in brackets. Write host:port, "
        "e.g. 127.0.0.1:5432 or [::1]:5432"
    ]


def test_expect_status_range() -> None:
    assert problems(with_checks('{name: web, http: "http://x/", expect_status: "399-200"}')) == [
        "t.yaml:10: checks[0].expect_status: 399-200 is not a valid status range (100-599, low "
        "first). Write a status code (200) or an inclusive range (200-399)"
    ]


def test_duplicate_check_name() -> None:
    assert problems(with_checks('{name: pg, tcp: "x:1"}', '{name: pg, tcp: "x:2"}')) == [
        "t.yaml:11: checks[1].name: check name pg is already used by entry [0]. Each must be unique"
    ]


# --- notify and the rest --------------------------------------------------------------------


def test_notify_path_with_arguments() -> None:
    assert problems(BASE + "notify:\n  leader: /etc/hafailover/on-leader --now\n") == [
        "t.yaml:10: notify.leader: '/etc/hafailover/on-leader --now' is not a single path. For a "
        "command with arguments write an argv list: [/etc/hafailover/on-leader, --verbose]"
    ]


def test_notify_timeout_positive() -> None:
    assert problems(BASE + "notify: {timeout: 0}\n") == [
        "t.yaml:9: notify.timeout: must be longer than 0s"
    ]


def test_announce_count_range() -> None:
    assert problems(BASE + "announce: {count: 0}\n") == [
        "t.yaml:9: announce.count: 0 is out of range: use a number from 1 to 100"
    ]


def test_unknown_log_level_suggests_the_closest() -> None:
    assert problems(BASE + "log_level: warn\n") == [
        "t.yaml:9: log_level: unknown log level 'warn'. Did you mean 'warning'? Use one of: "
        "debug, info, warning, error"
    ]


def test_control_group_name() -> None:
    assert problems(BASE + "control_group: ''\n") == ["t.yaml:9: control_group: must not be empty"]


# --- warnings -------------------------------------------------------------------------------


def warnings(text: str) -> list[str]:
    return [str(w) for w in parse_config(text, "t.yaml").warnings]


def test_even_number_of_voters_warns_and_suggests_a_witness() -> None:
    text = BASE.replace("  - {name: node3, address: 10.0.0.13}\n", "")
    assert warnings(text) == [
        "t.yaml:3: nodes: 2 voting nodes need 2 for a majority, so the cluster survives only 0 "
        "failure(s), as many as with 1. Add a witness node (`witness: true`, any small "
        "host) to make the number of voters odd"
    ]


def test_four_voters_warn() -> None:
    text = BASE.replace("10.0.0.13}\n", "10.0.0.13}\n  - {name: node4, address: 10.0.0.14}\n")
    assert warnings(text) == [
        "t.yaml:3: nodes: 4 voting nodes need 3 for a majority, so the cluster survives only 1 "
        "failure(s), as many as with 3. Add a witness node (`witness: true`, any small "
        "host) to make the number of voters odd"
    ]


def test_a_witness_making_voters_odd_silences_the_warning() -> None:
    text = BASE.replace(
        "{name: node3, address: 10.0.0.13}", "{name: w, address: 10.0.0.20, witness: true}"
    )
    assert warnings(text) == []


def test_single_node_warns() -> None:
    text = "cluster: {name: web}\nnodes: [{name: solo, address: 10.0.0.11}]\nvips: []\n"
    assert warnings(text) == [
        "t.yaml:2: nodes: only one node: there is nothing to fail over to. Add nodes",
        "t.yaml:3: vips: no VIPs: the leader only runs notify hooks. Add vips entries",
    ]
