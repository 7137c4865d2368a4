"""`-c/--config` and `--socket` on either side of the subcommand, and which one wins.

No daemon runs: each configuration names a control socket that does not exist, and the command's
exit 3 message names the socket it tried, which tells which option was used.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hafailover.cli import cli


def config_for(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "cluster: {name: c}\n"
        "nodes:\n  - {name: node1, address: 10.0.0.11}\n"
        f"control_socket: {tmp_path / name}.sock\n"
    )
    return path


def tried(result: Result) -> str:
    """The socket the command tried to reach."""
    assert result.exit_code == 3, result.output
    return result.stderr.split("no control socket at ", 1)[1].split(":", 1)[0]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("HAFAILOVER_SOCKET", raising=False)
    return CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["events", "-n", "5"],
        ["switchover", "--to", "node1"],
        ["maintenance", "on"],
    ],
)
def test_config_before_or_after_the_command(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    config = config_for(tmp_path, "a")
    before = runner.invoke(cli, ["-c", str(config), *args])
    after = runner.invoke(cli, [*args, "-c", str(config)])
    long_after = runner.invoke(cli, [*args, "--config", str(config)])
    assert tried(before) == tried(after) == tried(long_after) == f"{tmp_path}/a.sock"


@pytest.mark.parametrize("args", [["status"], ["events"], ["maintenance", "off"]])
def test_socket_before_or_after_the_command(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    sock = str(tmp_path / "s.sock")
    assert tried(runner.invoke(cli, ["--socket", sock, *args])) == sock
    assert tried(runner.invoke(cli, [*args, "--socket", sock])) == sock


def test_the_option_after_the_command_wins(runner: CliRunner, tmp_path: Path) -> None:
    a, b = config_for(tmp_path, "a"), config_for(tmp_path, "b")
    result = runner.invoke(cli, ["-c", str(a), "status", "-c", str(b)])
    assert tried(result) == f"{tmp_path}/b.sock"
    result = runner.invoke(cli, ["--socket", "/x/one.sock", "status", "--socket", "/x/two.sock"])
    assert tried(result) == "/x/two.sock"


def test_socket_beats_config_on_either_side(runner: CliRunner, tmp_path: Path) -> None:
    a = config_for(tmp_path, "a")
    result = runner.invoke(cli, ["status", "-c", str(a), "--socket", "/x/s.sock"])
    assert tried(result) == "/x/s.sock"
    result = runner.invoke(cli, ["--socket", "/x/s.sock", "status", "-c", str(a)])
    assert tried(result) == "/x/s.sock"


def test_the_environment_does_not_override_an_option_before_the_command(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        cli, ["--socket", "/x/opt.sock", "status"], env={"HAFAILOVER_SOCKET": "/x/env.sock"}
    )
    assert tried(result) == "/x/opt.sock"
    result = CliRunner().invoke(cli, ["status"], env={"HAFAILOVER_SOCKET": "/x/env.sock"})
    assert tried(result) == "/x/env.sock"


def test_check_config_takes_socket_after_the_command(runner: CliRunner, tmp_path: Path) -> None:
    config = config_for(tmp_path, "a")
    result = runner.invoke(
        cli, ["check-config", "-c", str(config), "--socket", "/x/s.sock", "--no-host"]
    )
    assert result.exit_code == 0, result.output


def test_an_invalid_config_given_after_the_command_exits_3(
    runner: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: {name: c}\nnodes: []\n")
    result = runner.invoke(cli, ["status", "-c", str(bad)])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"hafailover: cannot find the control socket in {bad}:",
        f"{bad}:2: nodes: no nodes, so no voters: list every node of the cluster (the same list "
        "on all)",
    ]


@pytest.mark.parametrize("command", ["genkey", "import-keepalived"])
def test_standalone_commands_do_not_take_the_options(runner: CliRunner, command: str) -> None:
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--socket" not in result.output
    assert "-c, --config FILE" not in result.output


@pytest.mark.parametrize("command", ["run", "release-vips"])
def test_commands_that_talk_to_no_daemon_take_no_socket(runner: CliRunner, command: str) -> None:
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--socket" not in result.output
    assert "-c, --config FILE" in result.output


def test_check_config_places_a_missing_group_interface_on_its_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text(
        "cluster: {name: c, key_file: nokey}\n"
        "nodes:\n  - {name: node1, address: 10.213.250.1, port: 1}\n"
        "groups:\n"
        "  - name: web\n"
        "    vips: [{address: 10.213.251.1/24, interface: lo}]\n"
        "    track_interfaces: [lo, nosuch9]\n"
        "  - name: db\n"
        "    vips: [{address: 10.213.251.2/24, interface: lo}]\n"
    )
    result = runner.invoke(cli, ["check-config", "-c", str(path), "--node", "node1"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("OK") and line.endswith("interface lo exists (groups web, db)")
        for line in lines
    ), lines
    assert any(
        line.startswith("FAIL")
        and line.endswith(
            f"{path}:7: groups[0].track_interfaces[1]: this host has no interface nosuch9 "
            "(it has: " + line.split("(it has: ", 1)[-1].split(")", 1)[0] + "), needed by "
            "group web. Fix the name, or name the interfaces the same on every node"
        )
        for line in lines
    ), lines
    # lo carries no 10.213.251.0/24 address: each group's VIP is placed on its own line.
    assert any(f"{path}:6: groups[0].vips[0].address: 10.213.251.1/24 on lo" in x for x in lines)
    assert any(f"{path}:9: groups[1].vips[0].address: 10.213.251.2/24 on lo" in x for x in lines)


def test_check_config_prints_the_fingerprint_to_compare_across_nodes(
    runner: CliRunner, tmp_path: Path
) -> None:
    from hafailover.config import load_config

    path = config_for(tmp_path, "a")
    fp = load_config(path).config.fingerprint()
    result = runner.invoke(cli, ["check-config", "-c", str(path), "--no-host"])
    assert result.exit_code == 0, result.output
    sections = ", ".join(f"{k} {v}" for k, v in fp.items())
    assert (
        f"OK    cluster-wide fingerprint {fp.digest}, must be the same on every node ({sections})"
        in result.stdout.splitlines()
    )
