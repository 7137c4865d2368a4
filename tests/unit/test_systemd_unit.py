"""systemd/hafailover.service: systemd accepts it, and it agrees with the daemon and the config.

`systemd-analyze verify` (Debian package `systemd`) does not need systemd running as PID 1. It
exits 0 even for unknown keys and unparsable values (it only logs them), so the test fails on any
line it prints about the unit.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hafailover.config.schema import Config
from hafailover.config.sections import ClusterConfig
from hafailover.core.spec import Timings
from hafailover.runtime.daemon import watchdog_gap
from hafailover.runtime.logs import JOURNAL_IDENTIFIER

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hafailover.service"
# Where the package (packaging/build-deb.sh) puts the runtime's console script and interpreter.
VENV_BIN = "/opt/hafailover/bin/hafailover"
VENV_PYTHON = "/opt/hafailover/bin/python"
CONTROL = REPO / "packaging" / "debian" / "control.in"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value given (a key may repeat). Enough for this unit's syntax."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line continuation not supported by this parser: {raw}"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {raw}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_timespan(text: str) -> float:
    """systemd time span ("500ms", "1s", "1min 30s", bare seconds) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * _SPAN_UNITS[u or "s"] for n, u in parts)


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is given {len(values)} times: {values}"
    return values[0]


# ------------------------------------------------------------------------------ systemd accepts it


def verify_problems(unit_text: str, tmp_path: Path) -> list[str]:
    """Lines `systemd-analyze verify` prints about this unit (after pointing ExecStart at an
    executable that exists here: verify rejects a missing one, and /opt/hafailover is not
    installed on a development machine)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: install the Debian package `systemd`")
    assert f"ExecStart={VENV_PYTHON} " in unit_text
    copy = tmp_path / "hafailover.service"
    for key in ("ExecStart", "ExecStopPost"):
        for installed in (VENV_BIN, VENV_PYTHON):
            unit_text = unit_text.replace(f"{key}={installed} ", f"{key}={sys.executable} ")
    copy.write_text(unit_text)
    r = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_LOG_COLOR": "0"},
    )
    lines = (r.stdout + r.stderr).splitlines()
    # Lines about other units (a container's odd system units) are not ours to fix.
    ours = [ln for ln in lines if str(copy) in ln or "hafailover.service" in ln]
    if r.returncode != 0 and not ours:
        ours = lines or [f"systemd-analyze verify exited {r.returncode}"]
    return ours


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    problems = verify_problems(UNIT.read_text(), tmp_path)
    assert problems == [], "systemd-analyze verify:\n" + "\n".join(problems)


def test_verify_check_catches_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    """The check above is not vacuous: verify exits 0 on these, but the test sees them."""
    bad = UNIT.read_text().replace(
        "[Service]\n", "[Service]\nWatchdogSecs=1s\nProtectSystem=very\n", 1
    )
    problems = "\n".join(verify_problems(bad, tmp_path))
    assert "WatchdogSecs" in problems
    assert "very" in problems or "ProtectSystem" in problems


# ----------------------------------------------------------------- it agrees with daemon and config


def test_type_notify_and_only_the_daemon_may_notify(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    # Check scripts and hooks are children: they must not be able to ping the watchdog.
    assert one(unit, "Service", "NotifyAccess") == "main"


def test_watchdog_is_shorter_than_the_default_failover_timeout(unit: Unit) -> None:
    watchdog = parse_timespan(one(unit, "Service", "WatchdogSec"))
    timings = Timings()
    # The daemon refuses WatchdogSec > failover_timeout; shorter means a hung leader is killed
    # before any follower's lease runs out.
    assert 0 < watchdog < timings.failover_timeout


def test_execstart_runs_the_daemon_by_the_short_path(unit: Unit) -> None:
    # `python -I -m hafailover run`: hafailover/__main__.py starts the daemon without the CLI
    # framework (the console script, /opt/hafailover/bin/hafailover, would import click first).
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv == [VENV_PYTHON, "-I", "-m", "hafailover", "run",
                    "-c", "/etc/hafailover/hafailover.yaml"]
    build = (REPO / "packaging" / "build-deb.sh").read_text()
    assert re.search(r"^PREFIX=/opt/hafailover$", build, re.M), "the package's runtime moved"


def test_printed_lines_carry_the_daemons_journal_identifier(unit: Unit) -> None:
    # The unit runs `python`: without this, an exit 78's reason would be tagged "python".
    assert one(unit, "Service", "SyslogIdentifier") == JOURNAL_IDENTIFIER


def test_watchdog_is_longer_than_the_gap_between_pings_of_a_daemon_on_time(unit: Unit) -> None:
    """A daemon pings on every lag tick that is at most max_loop_lag late: the default timings'
    longest gap between two such pings must be shorter than WatchdogSec, or systemd could kill
    a healthy daemon (the daemon warns about such a unit)."""
    watchdog = parse_timespan(one(unit, "Service", "WatchdogSec"))
    cluster = ClusterConfig(name="defaults")
    gap = watchdog_gap(watchdog / 2, cluster.timings.heartbeat_interval,
                       cluster.max_loop_lag_seconds)
    assert gap + 0.05 <= watchdog < cluster.timings.failover_timeout


def test_execstoppost_releases_the_vips_by_the_short_path(unit: Unit) -> None:
    # `python -I -m hafailover release-vips`: hafailover/__main__.py removes the daemon's
    # record without the CLI framework (the console script would import click first).
    argv = shlex.split(one(unit, "Service", "ExecStopPost"))
    assert argv == [VENV_PYTHON, "-I", "-m", "hafailover", "release-vips",
                    "-c", "/etc/hafailover/hafailover.yaml"]
    # The record is found through $STATE_DIRECTORY, which systemd sets from StateDirectory=.
    assert one(unit, "Service", "StateDirectory") == "hafailover"


def package_depends() -> set[str]:
    line = next(ln for ln in CONTROL.read_text().splitlines() if ln.startswith("Depends:"))
    return {dep.split()[0] for dep in line.removeprefix("Depends:").split(",") if dep.strip()}


def test_execreload_sends_sighup_with_a_kill_the_package_depends_on(unit: Unit) -> None:
    argv = shlex.split(one(unit, "Service", "ExecReload"))
    # /bin/kill is procps' (a minimal Debian has no procps: reload failed there with 203/EXEC).
    assert argv[0] == "/bin/kill"
    assert "procps" in package_depends()
    assert argv[1:] in (["-HUP", "$MAINPID"], ["-s", "HUP", "$MAINPID"], ["-1", "$MAINPID"])


def test_documentation_is_where_the_package_puts_it(unit: Unit) -> None:
    doc = one(unit, "Unit", "Documentation")
    assert doc == "file:///usr/share/doc/hafailover/operations.md"
    assert "/usr/local" not in UNIT.read_text()
    assert 'DOC=$STAGE/usr/share/doc/hafailover' in (REPO / "packaging/build-deb.sh").read_text()


def test_does_not_start_without_config_and_key(unit: Unit) -> None:
    assert unit["Unit"]["ConditionPathExists"] == [
        "/etc/hafailover/hafailover.yaml", "/etc/hafailover/cluster.key"]
    # The example config (the package's conffile) names the key the condition waits for.
    example = (REPO / "etc" / "hafailover" / "hafailover.yaml").read_text()
    assert re.search(r"^  key_file: /etc/hafailover/cluster\.key$", example, re.M)


def test_root_with_only_the_network_capabilities(unit: Unit) -> None:
    caps = set(one(unit, "Service", "CapabilityBoundingSet").split())
    assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    service = unit["Service"]
    assert "User" not in service, "runs as root on purpose (see the unit's comment)"
    # Ambient capabilities only matter for a non-root user; with root they would be noise.
    assert service.get("AmbientCapabilities", [""]) == [""]


def test_restart_policy(unit: Unit) -> None:
    assert one(unit, "Service", "Restart") == "on-failure"
    assert parse_timespan(one(unit, "Service", "RestartSec")) == 1.0
    assert parse_timespan(one(unit, "Service", "TimeoutStopSec")) == 10.0
    # 78 = EX_CONFIG from hafailover.runtime.daemon: restarting cannot fix a bad config.
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectHostname", "yes"),
        ("PrivateDevices", "yes"),
        ("UMask", "0027"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RuntimeDirectory", "hafailover"),
        ("RuntimeDirectoryMode", "0750"),
        ("StateDirectory", "hafailover"),
        ("ConfigurationDirectory", "hafailover"),
    ],
)
def test_hardening(unit: Unit, key: str, value: str) -> None:
    assert one(unit, "Service", key) == value


def test_address_families_cover_what_the_daemon_opens(unit: Unit) -> None:
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}


def test_directories_match_the_config_defaults(unit: Unit) -> None:
    """With the default config the daemon writes only where the sandbox lets it."""
    fields = Config.model_fields
    control_socket = fields["control_socket"].default
    state_dir = fields["state_dir"].default
    assert isinstance(control_socket, Path) and isinstance(state_dir, Path)
    runtime = Path("/run") / one(unit, "Service", "RuntimeDirectory")
    assert control_socket.parent == runtime
    assert state_dir == Path("/var/lib") / one(unit, "Service", "StateDirectory")
    # The daemon can only hand the socket to a group it is in (no CAP_CHOWN), and the group
    # must be able to enter the 0750 runtime directory.
    assert one(unit, "Service", "Group") == fields["control_group"].default


def test_installed_for_boot(unit: Unit) -> None:
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()


def test_parsers() -> None:
    assert parse_timespan("500ms") == 0.5
    assert parse_timespan("1min 30s") == 90.0
    assert parse_timespan("2") == 2.0
    parsed = parse_unit("[A]\n# c\nK=1\nK=2\n\n[B]\nX = y z\n")
    assert parsed == {"A": {"K": ["1", "2"]}, "B": {"X": ["y z"]}}
