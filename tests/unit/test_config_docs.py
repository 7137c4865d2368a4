"""The reference and the example cannot drift from the schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import create_model

from hafailover.config.loader import load_config, parse_config
from hafailover.config.schema import SECTION_MODELS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "etc" / "hafailover" / "hafailover.yaml"
LIST_SECTIONS = {"nodes", "vips", "checks", "groups"}
# A table row: | `key` | type | default | meaning |
ROW = re.compile(r"^\| `(?P<key>[a-z_.\[\]]+)` \| [^|]+ \| (?P<default>[^|]+?) \|", re.MULTILINE)


def schema_keys() -> dict[str, Any]:
    """Documented key spelling -> pydantic FieldInfo, for every key of every section."""
    keys = {}
    for path, model in SECTION_MODELS.items():
        # A section repeated inside another (groups[].vips[] are vips[]) is documented once.
        if any(m is model and len(p) < len(path) for p, m in SECTION_MODELS.items()):
            continue
        prefix = "".join(f"{p}[]." if p in LIST_SECTIONS else f"{p}." for p in path)
        for name, field in model.model_fields.items():
            keys[prefix + (field.alias or name)] = field
    return keys


def documented() -> dict[str, str]:
    rows = {m["key"]: m["default"].strip() for m in ROW.finditer(DOCS.read_text())}
    assert rows, "no key tables found in docs/configuration.md"
    return rows


def test_every_schema_key_is_documented_and_nothing_else() -> None:
    assert sorted(documented()) == sorted(schema_keys())


@pytest.mark.parametrize("key", sorted(schema_keys()))
def test_documented_default_matches_the_schema(key: str) -> None:
    field = schema_keys()[key]
    cell = documented()[key]
    if field.is_required():
        assert cell == "required"
    elif field.default is None:
        assert cell == "unset"
    else:
        assert cell.startswith("`") and cell.endswith("`"), f"{key}: default {cell!r}"
        # Parse the documented default as if it were written in the file.
        probe = create_model("Probe", value=(field.annotation, field))
        parsed = probe.model_validate({"value": yaml.safe_load(cell.strip("`"))})
        assert getattr(parsed, "value") == field.default  # noqa: B009


@pytest.mark.parametrize("key", sorted(schema_keys()))
def test_every_key_appears_in_the_example(key: str) -> None:
    name = key.rsplit(".", 1)[-1]
    assert re.search(rf"\b{name}:", EXAMPLE.read_text()), f"{key} missing from the example"


def test_example_loads_without_errors_or_warnings() -> None:
    loaded = load_config(EXAMPLE)
    assert loaded.warnings == ()
    config = loaded.config
    assert [n.name for n in config.nodes] == ["node1", "node2", "node3"]
    assert all(str(n.address).startswith("10.0.0.") for n in config.nodes)
    assert str(config.vips[0].address) == "10.0.0.100/24"
    assert [c.kind.value for c in config.checks] == ["http", "script", "tcp"]
    config.cluster_spec().timings.validate()


def test_example_round_trips() -> None:
    config = load_config(EXAMPLE).config
    # Dumping to plain data and validating again gives the same object.
    again = type(config).model_validate(dump(config))
    assert again == config


def dump(value: Any) -> Any:
    """Plain YAML-like data from a model: the keys a file with the same settings would set."""
    if hasattr(value, "model_fields_set"):
        fields = type(value).model_fields
        return {
            fields[k].alias or k: dump(getattr(value, k)) for k in sorted(value.model_fields_set)
        }
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # HostPort
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        if len(value) == 2 and all(isinstance(v, int) for v in value):  # expect_status
            return f"{value[0]}-{value[1]}"
        return [dump(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)  # Path, ip_address, ip_interface


BRIEF = """\
cluster:
  name: web
  key_file: /etc/hafailover/cluster.key
  port: 5405
  heartbeat_interval: 100ms
  failover_timeout: 600ms
  preempt: false
  preempt_delay: 30s
  clock_drift: 0.01          # optional, default 0.01
  max_loop_lag: 0.5          # optional fraction of failover_timeout; lag beyond it = unhealthy
  watchdog: true             # optional
nodes:
  - {name: node1, address: 10.0.0.11, priority: 150}
  - {name: node2, address: 10.0.0.12, priority: 100}
  - {name: node3, address: 10.0.0.13, priority: 50}
  # - {name: tiebreak, address: 10.0.0.20, witness: true}
vips:
  - {address: 10.0.0.100/24, interface: eth0}
announce: {count: 3, interval: 100ms, refresh: 0s}   # optional section; refresh 0 = off
checks:
  - {name: web, http: "http://127.0.0.1:8080/healthz", interval: 1s, timeout: 1s, fall: 2, rise: 2}
  - {name: db, script: [/usr/local/bin/check-db, --deep], interval: 2s, timeout: 3s}
  - {name: port, tcp: "127.0.0.1:5432", interval: 1s, timeout: 500ms}
notify:
  leader: /etc/hafailover/on-leader
  follower: /etc/hafailover/on-follower
  # also: unhealthy, maintenance, stop; each a path or an argv list; `timeout: 10s`
control_socket: /run/hafailover/control.sock
control_group: hafailover
state_dir: /var/lib/hafailover
log_level: info
"""


def test_the_design_shape_loads_as_written() -> None:
    loaded = parse_config(BRIEF, "brief.yaml")
    assert loaded.warnings == ()
    # The example also turns the metrics endpoint on for localhost (issue 11); the brief has none.
    example = load_config(EXAMPLE).config
    assert example.metrics is not None and str(example.metrics.listen.port) == "9405"
    assert loaded.config == example.model_copy(update={"metrics": None})


def test_the_keepalived_mapping_example_loads_as_described() -> None:
    text = DOCS.read_text().split("## From keepalived", 1)[1]
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = parse_config(block, "lb.yaml")
    assert loaded.warnings == ()
    web, db = loaded.config.groups
    assert max(web.priorities, key=lambda n: web.priorities[n]) == "lb1"
    assert max(db.priorities, key=lambda n: db.priorities[n]) == "lb2"
    assert (web.checks, db.checks) == (("chk_nginx",), ())
    assert (web.preempt, db.preempt, db.preempt_delay) == (True, True, 5.0)
    assert web.notify.leader == ("/etc/keepalived/web-up.sh",)
