"""The loader: reading the file, YAML structure, unknown keys, types, and where errors point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hafailover.config.loader import ConfigError, ConfigProblem, load_config, parse_config

# A valid minimal file; tests add or change lines and assert exact messages and lines.
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
DOCS = "(see docs/configuration.md)"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    return [str(p) for p in caught.value.problems]


def test_minimal_file_loads_with_defaults() -> None:
    loaded = parse_config(BASE, "t.yaml")
    assert loaded.warnings == ()
    assert loaded.file == "t.yaml"
    assert loaded.config.cluster.port == 5405
    assert loaded.config.log_level == "info"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: cannot read the configuration: No such file or directory. Check the path and "
        "its permissions, or pass another file with --config"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(BASE)
    path.chmod(0)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: cannot read the configuration: Permission denied. Check the path and its "
        "permissions, or pass another file with --config"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"cluster:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:2: not UTF-8 text (invalid continuation byte). Save it as UTF-8"
    )


def test_invalid_yaml_names_its_line() -> None:
    assert problems("cluster:\n  name: web\n nodes: [\n") == [
        "t.yaml:3: invalid YAML: while parsing a block mapping did not find expected key. Check "
        "indentation, quoting and colons around this line"
    ]


def test_empty_file() -> None:
    assert problems("# only a comment\n") == [
        "t.yaml:1: the file is empty. Start from the example etc/hafailover/hafailover.yaml"
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("\n- cluster\n- nodes\n") == [
        "t.yaml:2: the top level must be a mapping of sections (cluster:, nodes:, ...). Start "
        "from the example etc/hafailover/hafailover.yaml"
    ]


def test_duplicate_key() -> None:
    assert problems(BASE + "log_level: info\nlog_level: debug\n") == [
        "t.yaml:10: log_level: appears twice (first on line 9). Remove one: YAML would silently "
        "keep only the last"
    ]


def test_key_that_yaml_reads_as_a_boolean() -> None:
    assert problems(BASE + "notify:\n  on: /bin/true\n") == [
        "t.yaml:10: notify: key 'on' is not a name (YAML reads it as a number, boolean or "
        "collection). Quote it or fix it"
    ]


def test_unknown_key_suggests_the_closest() -> None:
    text = BASE.replace("name: web", "name: web\n  heartbeat_intervall: 100ms")
    assert problems(text) == [
        "t.yaml:3: cluster.heartbeat_intervall: unknown key 'heartbeat_intervall'. Did you mean "
        "'heartbeat_interval'?"
    ]


def test_unknown_top_level_key_suggests_the_closest() -> None:
    assert problems(BASE + "vip: []\n") == [
        "t.yaml:9: vip: unknown key 'vip'. Did you mean 'vips'?"
    ]


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    text = BASE.replace("10.0.0.12}", "10.0.0.12, colour: red}")
    assert problems(text) == [
        "t.yaml:5: nodes[1].colour: unknown key 'colour'. Known keys in nodes[1]: address, name, "
        "port, priority, witness"
    ]


def test_missing_required_key_points_at_its_section() -> None:
    text = "cluster:\n  port: 5405\nnodes:\n  - {address: 10.0.0.11}\n"
    assert problems(text) == [
        f"t.yaml:1: cluster.name: required key is missing. Add `name:` here {DOCS}",
        f"t.yaml:4: nodes[0].name: required key is missing. Add `name:` here {DOCS}",
    ]


def test_missing_top_level_section() -> None:
    assert problems("cluster: {name: web}\n") == [
        f"t.yaml:1: nodes: required key is missing. Add `nodes:` here {DOCS}"
    ]


def test_section_must_be_a_mapping() -> None:
    text = BASE.replace("cluster:\n  name: web\n", "cluster: web\n")
    assert problems(text) == [
        f"t.yaml:1: cluster: expected a mapping of keys, got the text 'web' {DOCS}"
    ]


def test_list_section_must_be_a_list() -> None:
    text = "cluster: {name: web}\nnodes: {name: node1, address: 10.0.0.11}\n"
    assert problems(text) == [
        "t.yaml:2: nodes: expected a list of entries (lines starting with '- '), got a mapping"
    ]


def test_quoted_number() -> None:
    text = BASE.replace("name: web", 'name: web\n  port: "5405"')
    assert problems(text) == [
        "t.yaml:3: cluster.port: expected a whole number, got the text '5405'. Remove the quotes"
    ]


def test_boolean_where_text_is_expected() -> None:
    assert problems(BASE.replace("name: web", "name: yes")) == [
        "t.yaml:2: cluster.name: expected text, got true (a boolean; quote it if you meant text)"
    ]


def test_text_where_a_boolean_is_expected() -> None:
    text = BASE.replace("name: web", 'name: web\n  preempt: "false"')
    assert problems(text) == [
        "t.yaml:3: cluster.preempt: expected true or false, got the text 'false'"
    ]


def test_invalid_name() -> None:
    assert problems(BASE.replace("name: node2", "name: node 2")) == [
        "t.yaml:5: nodes[1].name: 'node 2' is not a valid name. Use letters, digits, '.', '_' "
        "and '-' (at most 63, starting with a letter or digit)"
    ]


def test_bad_duration() -> None:
    text = BASE.replace("name: web", "name: web\n  preempt_delay: 30 seconds")
    assert problems(text) == [
        "t.yaml:3: cluster.preempt_delay: '30 seconds' is not a duration: write a number with a "
        "unit (100ms, 1.5s, 2m, 1h) or a plain number of seconds (0.1)"
    ]


def test_out_of_range_integer() -> None:
    text = BASE.replace("10.0.0.11}", "10.0.0.11, priority: 256}")
    assert problems(text) == [
        "t.yaml:4: nodes[0].priority: 256 is out of range: use a number from 0 to 255"
    ]


def test_problems_are_all_reported_in_line_order() -> None:
    text = (
        BASE.replace("name: web", "name: web\n  port: 0").replace("10.0.0.100/24", "10.0.0.300/24")
        + "log_level: loud\n"
    )
    assert problems(text) == [
        "t.yaml:3: cluster.port: 0 is out of range: use a number from 1 to 65535",
        "t.yaml:9: vips[0].address: '10.0.0.300/24' is not an address with prefix length. Write "
        "it like 10.0.0.100/24",
        "t.yaml:10: log_level: unknown log level 'loud'. Use one of: debug, info, warning, error",
    ]


def test_block_style_lines_point_at_the_key() -> None:
    text = BASE + "checks:\n  - name: web\n    http: http://127.0.0.1/\n\n    fall: 0\n"
    assert problems(text) == [
        "t.yaml:13: checks[0].fall: 0 is out of range: use a number from 1 to 100"
    ]


def test_problem_formatting() -> None:
    assert str(ConfigProblem("f.yaml", 3, "cluster.port", "bad")) == "f.yaml:3: cluster.port: bad"
    assert str(ConfigProblem("f.yaml", None, "", "gone")) == "f.yaml: gone"
    error = ConfigError([ConfigProblem("f", 1, "a", "x"), ConfigProblem("f", 2, "b", "y")])
    assert str(error) == "f:1: a: x\nf:2: b: y"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ha.yaml"
    path.write_text(BASE.replace("name: web", "name: web\n  key_file: cluster.key"))
    config = load_config(path).config
    assert config.cluster.key_file == tmp_path / "cluster.key"
    assert config.state_dir == Path("/var/lib/hafailover")


def test_empty_optional_sections_mean_their_defaults() -> None:
    config = parse_config(BASE + "checks:\nannounce:\nnotify:\n", "t.yaml").config
    assert config.checks == ()
    assert config.announce.count == 3
    assert config.notify.leader is None


def test_aliases_and_merge_keys_are_allowed() -> None:
    text = BASE + (
        "checks:\n"
        "  - &web {name: web, http: 'http://127.0.0.1/', interval: 2s}\n"
        "  - {<<: *web, name: web2}\n"
    )
    checks = parse_config(text, "t.yaml").config.checks
    assert [(c.name, c.interval) for c in checks] == [("web", 2.0), ("web2", 2.0)]
