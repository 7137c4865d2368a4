"""`hafailover import-keepalived` on the 17 real keepalived.conf files and on small own ones.

The real files live outside the repository (../shared/keepalived-configs, see its SOURCES.md);
every import must load with the real configuration loader.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafailover.cli import cli
from hafailover.config import Config, load_config
from hafailover.config.keepalived import (
    ImportResult,
    KeepalivedReadError,
    KeepalivedSyntaxError,
    import_files,
    import_texts,
)
from hafailover.config.keepalived.parse import parse_file

SAMPLES = Path(__file__).parents[2].parent / "shared" / "keepalived-configs"
SAMPLE_FILES = sorted(SAMPLES.glob("*.conf")) if SAMPLES.is_dir() else []
needs_samples = pytest.mark.skipif(
    not SAMPLE_FILES and os.environ.get("CI") != "true",
    reason="../shared/keepalived-configs is not here (CI has it)",
)


def load(result: ImportResult, tmp_path: Path) -> Config:
    path = tmp_path / "hafailover.yaml"
    path.write_text(result.yaml)
    return load_config(path).config


def keepalived_vips(path: Path) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address in a virtual_ipaddress(_excluded) block, read straight from the tree."""
    found = set()
    for stmt in parse_file(path).statements:
        if stmt.key != "vrrp_instance":
            continue
        for block in stmt.children or ():
            if block.key.startswith("virtual_ipaddress"):
                for item in block.children or ():
                    found.add(ipaddress.ip_interface(item.key).ip)
    return found


def notes_text(result: ImportResult) -> str:
    return "\n".join(str(n) for n in result.notes)


# --- the 17 real configurations ---------------------------------------------------------------


@needs_samples
def test_all_seventeen_samples_are_there() -> None:
    assert len(SAMPLE_FILES) == 17


@needs_samples
@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_imports_loads_and_keeps_every_vip(sample: Path, tmp_path: Path) -> None:
    result = import_files([sample])
    config = load(result, tmp_path)
    imported = {v.ip for v in config.all_vips}
    assert keepalived_vips(sample) <= imported
    instances = len(re.findall(r"^\s*vrrp_instance\s", sample.read_text(), re.MULTILINE))
    assert 1 <= len(config.groups) <= instances
    # Every note that names a place names one in the input.
    for note in result.notes:
        if note.where is not None:
            assert Path(note.where.file).name.endswith(".conf")
            assert note.where.line >= 1


@needs_samples
@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("acassen-sample-lvs", ["LVS `virtual_server 10.10.10.2 1358`"]),
        ("acassen-lvs-syncd", ["LVS `virtual_server 192.168.200.19 80`", "pre-1.2 form"]),
        ("vincentbernat-snmp-lvs", ["LVS `virtual_server group VS_GROUP_IPv4`"]),
        ("acassen-conditional", ["conditional on `@high`", "weight 20"]),
        ("acassen-vrrp", ["written twice", "label eth0:1", "hafailover genkey"]),
        ("acassen-vrrp-localcheck", ["weight -4", "weight 2", "shell: true"]),
        ("frylion007-nginx", ["include /etc/rules/*.conf matches no file"]),
        ("relix42-kaiju-sync", ["shell syntax", "lvs_sync_daemon_inteface"]),
        ("zillow-linuxgateway", ["use_vmac", "one after the other"]),
        ("vincentbernat-unicast-K1", ["same node as 192.0.2.2"]),
    ],
)
def test_sample_reports_what_is_not_carried_over(stem: str, expected: list[str]) -> None:
    text = notes_text(import_files([SAMPLES / f"{stem}.conf"]))
    for fragment in expected:
        assert fragment in text


@needs_samples
def test_sync_group_members_become_one_group(tmp_path: Path) -> None:
    config = load(import_files([SAMPLES / "acassen-vrrp-sync.conf"]), tmp_path)
    assert [g.name for g in config.groups] == ["G1", "G2"]
    g1 = config.groups[0]
    assert len(g1.vips) == 7
    assert {v.interface for v in g1.vips} == {"eth0", "eth1"}
    assert g1.notify.leader == ("/usr/local/bin/vrrp.mast", "arg1", "arg2")


@needs_samples
def test_unicast_peers_become_nodes_over_both_families(tmp_path: Path) -> None:
    result = import_files(
        [SAMPLES / "vincentbernat-unicast-K1.conf"], node_names={"192.0.2.2": "k2"}
    )
    config = load(result, tmp_path)
    assert [(n.name, str(n.address)) for n in config.nodes] == [
        ("vincentbernat-unicast-K1", "192.0.2.1"),
        ("k2", "192.0.2.2"),
    ]
    assert {str(v.address) for v in config.all_vips} == {"192.0.2.255/32", "2001:db8::ff/128"}


@needs_samples
def test_scripts_become_checks_and_notify_becomes_hooks(tmp_path: Path) -> None:
    config = load(import_files([SAMPLES / "joetanx-cyberark-master.conf"]), tmp_path)
    check = config.checks[0]
    assert (check.name, check.script, check.interval, check.fall) == (
        "check_vip_health",
        ("/usr/libexec/keepalived/nginx-ha-check.sh",),
        10.0,
        1,
    )
    group = config.groups[0]
    assert group.notify.leader == (
        "/usr/libexec/keepalived/nginx-ha-notify.sh",
        "INSTANCE",
        "VI_1",
        "MASTER",
    )
    assert len(group.vips) == 5
    assert str(config.nodes[1].address) == "192.168.0.92"


@needs_samples
def test_conditional_lines_with_a_config_id_per_host(tmp_path: Path) -> None:
    sample = SAMPLES / "acassen-conditional.conf"
    result = import_files([sample, sample], config_ids=["high", "low"])
    config = load(result, tmp_path)
    assert [n.name for n in config.nodes][:2] == ["high", "low"]
    group = config.groups[0]
    assert dict(group.priorities) == {"high": 170, "low": 85}
    check = config.checks[0]
    assert check.script == ("/etc/keepalived/scripts/check_high_VI_0.sh",)
    # keepalived's timeout 10 is longer than fall x interval (3s): lowered, with a note.
    assert check.timeout == 3.0
    text = notes_text(result)
    assert "check_low_VI_0.sh" in text and "lowered to that" in text
    assert "net_namespace" in text


@needs_samples
def test_two_hosts_active_active_priorities(tmp_path: Path) -> None:
    one = SAMPLES / "acassen-vrrp.conf"
    other = tmp_path / "lb2.conf"
    text = one.read_text()
    other.write_text(
        text.replace("priority 100", "priority X")
        .replace("priority 50", "priority 100")
        .replace("priority X", "priority 50")
    )
    first = tmp_path / "lb1.conf"
    first.write_text(text)
    result = import_files(
        [first, other], node_names={"10.0.0.1": "lb1", "10.0.0.2": "lb2", "10.0.0.3": "w"}
    )
    config = load(result, tmp_path)
    prio = {g.name: dict(g.priorities) for g in config.groups}
    assert prio["VI_1"] == {"lb1": 100, "lb2": 50, "w": 100 + 50 - 100}
    assert prio["VI_2"]["lb1"] == 50 and prio["VI_2"]["lb2"] == 100
    assert [str(n.address) for n in config.nodes] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


@needs_samples
def test_include_tree_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub" / "parts").mkdir(parents=True)
    (tmp_path / "main.conf").write_text("include sub/all.conf\n")
    (tmp_path / "sub" / "all.conf").write_text("include parts/*.conf\n")
    for name in ("acassen-vrrp-localcheck.conf", "patrikthedev-bivdc.conf"):
        (tmp_path / "sub" / "parts" / name).write_bytes((SAMPLES / name).read_bytes())
    config = load(import_files([tmp_path / "main.conf"]), tmp_path)
    direct = keepalived_vips(SAMPLES / "acassen-vrrp-localcheck.conf") | keepalived_vips(
        SAMPLES / "patrikthedev-bivdc.conf"
    )
    assert {v.ip for v in config.all_vips} == direct


# --- own small configurations -----------------------------------------------------------------

CLEAN = """
vrrp_instance web {{
    interface eth0
    virtual_router_id 51
    priority {prio}
    advert_int 0.1
    unicast_src_ip 10.0.0.{me}
    unicast_peer {{
{peers}
    }}
    virtual_ipaddress {{
        10.0.0.100/24
    }}
}}
"""


def cluster_texts() -> list[tuple[str, str]]:
    out = []
    for me, prio in ((11, 150), (12, 100), (13, 50)):
        peers = "\n".join(f"        10.0.0.{p}" for p in (11, 12, 13) if p != me)
        out.append((f"lb{me}.conf", CLEAN.format(prio=prio, me=me, peers=peers)))
    return out


def test_three_host_files_import_cleanly_with_faster_timings(tmp_path: Path) -> None:
    result = import_texts(cluster_texts())
    assert result.notes == ()
    config = load(result, tmp_path)
    assert [n.name for n in config.nodes] == ["lb11", "lb12", "lb13"]
    assert dict(config.groups[0].priorities) == {"lb11": 150, "lb12": 100, "lb13": 50}
    # advert_int 0.1: keepalived notices a dead master after >= 300 ms; so does hafailover.
    assert config.cluster.heartbeat_interval == pytest.approx(0.1)
    assert config.cluster.failover_timeout == pytest.approx(0.3)


def test_nopreempt_preempt_delay_track_interface_notify_stop(tmp_path: Path) -> None:
    texts = cluster_texts()
    name, text = texts[0]
    extra = (
        "    nopreempt\n    preempt_delay 7\n    track_interface {\n        eth9\n    }\n"
        '    notify_stop "/usr/bin/logger stopped"\n'
    )
    texts[0] = (name, text.replace("    advert_int", extra + "    advert_int"))
    config = load(import_texts(texts), tmp_path)
    group = config.groups[0]
    assert group.preempt is False
    assert group.preempt_delay == 7.0
    assert "eth9" in group.track_interfaces
    assert group.notify.stop == ("/usr/bin/logger", "stopped")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("vrrp_instance A {\n  interface eth0\n", 1, "never closed"),
        ("vrrp_instance A {\n}\n}\n", 3, "closes no block"),
        ('vrrp_script s {\n  script "unterminated\n}\n', 2, "never closed"),
        ("vrrp_instance A {\n virtual_ipaddress {\n  10.0.0.300\n }\n}\n", 3, "not an address"),
        ("vrrp_instance A {\n virtual_ipaddress {\n  10.0.0.5/24\n }\n}\n", 3, "no interface"),
        (
            "vrrp_instance A {\n interface eth0\n virtual_ipaddress {\n  10.0.0.0/24\n }\n}\n",
            4,
            "network or broadcast",
        ),
        ("vrrp_instance A {\n priority high\n}\n", 2, "expected a number"),
    ],
)
def test_unusable_input_names_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(KeepalivedSyntaxError) as caught:
        import_texts([("bad.conf", text)])
    assert caught.value.where is not None
    assert (caught.value.where.file, caught.value.where.line) == ("bad.conf", line)
    assert fragment in str(caught.value)


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("include b.conf\n")
    (tmp_path / "b.conf").write_text("\n\ninclude a.conf\n")
    with pytest.raises(KeepalivedSyntaxError, match="include loop") as caught:
        import_files([tmp_path / "a.conf"])
    assert caught.value.where is not None and caught.value.where.line == 3


def test_binary_and_huge_input_fail_fast(tmp_path: Path) -> None:
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\0\0\0" * 100)
    with pytest.raises(KeepalivedSyntaxError, match="binary"):
        import_files([binary])
    huge = tmp_path / "huge.conf"
    with open(huge, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(KeepalivedSyntaxError, match="over the"):
        import_files([huge])
    assert time.monotonic() - started < 1.0
    with pytest.raises(KeepalivedReadError):
        import_files([tmp_path / "missing.conf"])


def test_many_instances_import_in_bounded_time(tmp_path: Path) -> None:
    parts = []
    for i in range(300):
        parts.append(
            f"vrrp_instance v{i} {{\n interface eth0\n virtual_router_id {i % 255}\n"
            f" virtual_ipaddress {{\n  10.{i // 250}.{i % 250}.9/16\n }}\n}}\n"
        )
    started = time.monotonic()
    result = import_texts([("big.conf", "".join(parts))])
    assert time.monotonic() - started < 20
    assert len(load(result, tmp_path).groups) == 300


# --- the command ------------------------------------------------------------------------------


def test_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    for name, text in cluster_texts():
        (tmp_path / name).write_text(text)
    files = [str(tmp_path / n) for n, _ in cluster_texts()]
    clean = runner.invoke(cli, ["import-keepalived", *files])
    assert clean.exit_code == 0, clean.output
    assert "groups:" in clean.stdout and clean.stderr == ""
    noted = runner.invoke(cli, ["import-keepalived", files[0]])
    assert noted.exit_code == 1
    assert "guessed" in noted.stderr and "groups:" in noted.stdout
    (tmp_path / "bad.conf").write_text("vrrp_instance A {\n")
    bad = runner.invoke(cli, ["import-keepalived", str(tmp_path / "bad.conf")])
    assert bad.exit_code == 65 and "bad.conf:1:" in bad.stderr
    missing = runner.invoke(cli, ["import-keepalived", str(tmp_path / "none.conf")])
    assert missing.exit_code == 66
    usage = runner.invoke(cli, ["import-keepalived", "--node-name", "lb1", files[0]])
    assert usage.exit_code == 2
    ids = runner.invoke(cli, ["import-keepalived", "--config-id", "a", "--config-id", "b", *files])
    assert ids.exit_code == 2
    bad_name = runner.invoke(cli, ["import-keepalived", "--cluster-name", "no good", *files])
    assert bad_name.exit_code == 2 and "--cluster-name" in bad_name.stderr


@pytest.mark.parametrize(
    "text",
    [
        "eth0",
        "yes",
        "No",
        "1.5",
        "10.0.0.1",
        "10.0.0.0/24",
        "2001:db8::1/64",
        "-0",
        "a: b",
        "#x",
        "'q'",
        '"d"',
        "~",
        "null",
        "1e3",
        "0x10",
        "12:30",
        "/bin/sh",
        "ünï",
        "a b",
        "",
    ],
)
def test_yaml_scalars_read_back_as_the_same_text(text: str) -> None:
    import yaml

    from hafailover.config.keepalived.emit import scalar

    assert yaml.safe_load(f"key: {scalar(text)}") == {"key": text}


def test_the_migration_guides_worked_example_is_what_the_importer_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "migration.md").read_text()
    lb1 = doc.split("This is lb1's `keepalived.conf`:\n\n```\n", 1)[1].split("```", 1)[0]
    shown_yaml = doc.split("stdout, `hafailover.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    shown_notes = doc.split("stderr, what was not carried over:\n\n```\n", 1)[1].split("```")[0]
    # lb2 as the guide describes it: priorities and states reversed, addresses swapped.
    swaps = [
        ("router_id lb1", "router_id lb2"),
        ("state MASTER", "state @B"),
        ("state BACKUP", "state MASTER"),
        ("state @B", "state BACKUP"),
        ("priority 150", "priority @1"),
        ("priority 100", "priority 150"),
        ("priority @1", "priority 100"),
        ("unicast_src_ip 10.0.0.11", "unicast_src_ip @2"),
        ("        10.0.0.12\n", "        10.0.0.11\n"),
        ("unicast_src_ip @2", "unicast_src_ip 10.0.0.12"),
    ]
    lb2 = lb1
    for old, new in swaps:
        lb2 = lb2.replace(old, new)
    (tmp_path / "lb1.conf").write_text(lb1)
    (tmp_path / "lb2.conf").write_text(lb2)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["import-keepalived", "lb1.conf", "lb2.conf"])
    assert result.exit_code == 1
    assert result.stdout == shown_yaml
    assert result.stderr == shown_notes


def test_parameters_braces_on_the_next_line_and_comments(tmp_path: Path) -> None:
    text = (
        "$IF=eth7\n"
        "vrrp_instance A   # the web VIP\n"
        "{\n"
        "  interface $IF ! keepalived's other comment\n"
        "  virtual_ipaddress { 10.0.0.5/24 }\n"
        "}\r\n"
    )
    config = load(import_texts([("a.conf", text)]), tmp_path)
    assert [(str(v.address), v.interface) for v in config.all_vips] == [("10.0.0.5/24", "eth7")]


def test_a_weight_that_could_not_move_the_group_is_called_out() -> None:
    script = 'vrrp_script chk {\n  script "/bin/true"\n  weight -30\n}\n'
    texts = [
        (
            name,
            script
            + text.replace(
                "    virtual_ipaddress", "    track_script {\n chk\n }\n    virtual_ipaddress"
            ),
        )
        for name, text in cluster_texts()
    ]
    # 150/100/50: -30 never crosses another node's priority.
    assert "had no effect on failover" in notes_text(import_texts(texts))
    # 150/100/50 with -60: lb11 failing (90) falls below lb12 (100).
    moving = [(n, t.replace("weight -30", "weight -60")) for n, t in texts]
    text = notes_text(import_texts(moving))
    assert "weight -60" in text and "had no effect" not in text


def test_a_vip_in_two_instances_is_imported_once_with_a_note(tmp_path: Path) -> None:
    text = "".join(
        f"vrrp_instance {name} {{\n interface eth0\n virtual_ipaddress {{\n  10.0.0.5/24\n"
        f"  10.0.0.{n}/24\n }}\n}}\n"
        for name, n in (("A", 6), ("B", 7))
    )
    result = import_texts([("two.conf", text)])
    config = load(result, tmp_path)
    assert [[str(v.ip) for v in g.vips] for g in config.groups] == [
        ["10.0.0.5", "10.0.0.6"],
        ["10.0.0.7"],
    ]
    assert "two.conf:11: VIP 10.0.0.5 is also in A" in notes_text(result)


_ADDRESSES = ["10.0.0.5/24", "10.0.0.6", "10.0.0.0/24", "127.0.0.2", "fd00::5/64", "10.0.1.7/16"]
_LINES = [
    "interface {ifname}",
    "priority {prio}",
    "advert_int {adv}",
    "state MASTER",
    "nopreempt",
    "preempt_delay 3",
    "dont_track_primary",
    "smtp_alert",
    "use_vmac",
    "virtual_router_id {prio}",
    "virtual_ipaddress {{\n {addr} \n {addr} dev {ifname}\n}}",
    "virtual_ipaddress_excluded {{\n {addr} label x:1\n}}",
    "track_script {{\n {script}\n {script} weight {weight}\n}}",
    "track_interface {{\n {ifname} weight {weight}\n}}",
    "unicast_src_ip 10.9.0.{n}",
    "unicast_peer {{\n 10.9.0.{n}\n fd09::{n}\n}}",
    'notify_master "/bin/up {ifname}"',
    "notify /bin/any ; /bin/other",
    'notify_fault "/bin/x"',
    "authentication {{\n auth_type PASS\n auth_pass x\n}}",
    "@id priority 200",
]


@st.composite
def keepalived_conf(draw: st.DrawFn) -> str:
    def line() -> str:
        return draw(st.sampled_from(_LINES)).format(
            ifname=draw(st.sampled_from(["eth0", "eth1", "lo"])),
            prio=draw(st.integers(1, 255)),
            adv=draw(st.sampled_from(["0.05", "0.1", "1", "3"])),
            addr=draw(st.sampled_from(_ADDRESSES)),
            script=draw(st.sampled_from(["chk", "other", "missing"])),
            weight=draw(st.integers(-50, 50)),
            n=draw(st.integers(1, 4)),
        )

    parts = []
    for name in draw(st.lists(st.sampled_from(["chk", "other"]), max_size=2, unique=True)):
        body = draw(st.sampled_from(['script "/bin/true"', "script </dev/tcp/x/1", "interval 2"]))
        parts.append(f"vrrp_script {name} {{\n {body}\n timeout 9\n weight -2\n}}")
    names = draw(st.lists(st.sampled_from(["A", "B", "C", "a-b"]), min_size=1, max_size=3))
    for name in names:
        body = "\n".join(line() for _ in range(draw(st.integers(0, 8))))
        parts.append(f"vrrp_instance {name} {{\n{body}\n}}")
    if draw(st.booleans()):
        members = " ".join(draw(st.lists(st.sampled_from(["A", "B", "C", "Z"]), max_size=3)))
        parts.append(f"vrrp_sync_group G {{\n group {{\n {members}\n }}\n notify /bin/g\n}}")
    return "\n".join(parts) + "\n"


@given(keepalived_conf(), keepalived_conf(), st.booleans())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_configurations_import_and_load_or_fail_with_a_place(
    one: str, other: str, two_hosts: bool
) -> None:
    texts = [("h1.conf", one), ("h2.conf", other)] if two_hosts else [("h1.conf", one)]
    try:
        result = import_texts(texts)
    except KeepalivedSyntaxError as exc:
        assert exc.where is not None and exc.where.file in ("h1.conf", "h2.conf")
        return
    # The importer ran the loader on its output (KeepalivedImportError would be a bug); every
    # address it was given is in it or in a note.
    for name, text in texts:
        for address in re.findall(r"\b(?:10\.0\.[01]\.\d+|fd00::5)\b", text):
            assert address in result.yaml or address in notes_text(result), (name, address)


def test_two_files_claiming_one_address_is_an_error() -> None:
    texts = cluster_texts()
    with pytest.raises(KeepalivedSyntaxError, match="two files claim the same host address"):
        import_texts([texts[0], ("copy.conf", texts[0][1])])
