"""The click CLI against a real ControlServer on a real Unix socket (in a background thread)."""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hafailover.cli import cli
from hafailover.control import protocol as p
from hafailover.control.server import ControlServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "etc" / "hafailover" / "hafailover.yaml"


def _node(name: str, role: str = "follower", **kw: Any) -> dict[str, Any]:
    base = dict(name=name, role=role, healthy=True, priority=100, maintenance=False)
    return {**base, "witness": False, "reachable": True, "last_heard_ms": 40, **kw}


def _event(seq: int, reason: str = "elected", node: str = "node1") -> dict[str, Any]:
    time_ = f"2024-05-01T12:00:{seq:02d}.000Z"
    return dict(
        seq=seq, time=time_, node=node, reason=reason, term=7, message=f"event number {seq}"
    )


def healthy_status(holder: str | None = "node1") -> dict[str, Any]:
    check = dict(name="nginx", kind="http", ok=True, critical=True, last_duration_ms=12)
    return {
        **dict(node="node1", cluster="test", role="leader", term=7, leader=holder),
        **dict(vip_holder=holder, holds_vip=holder == "node1", healthy=True, maintenance=False),
        **dict(quorum=True, lease_remaining_ms=420, uptime_s=3723.5),
        "vips": [{"address": "10.0.0.100/24", "interface": "eth0", "present": True}],
        "checks": [{**check, "output_tail": "", "last_change": None}],
        "nodes": [
            _node("node1", "leader", priority=150, last_heard_ms=None),
            _node("node2"),
            _node("node3", priority=50),
            _node("w1", witness=True, healthy=None, priority=0),
        ],
        "last_transitions": [_event(i) for i in range(1, 8)],
        "drops": {"bad-mac": 0, "replay": 2},
    }


# The documented schema (docs/cli.md), checked against what the CLI prints.
_OPT_STR, _OPT_INT = (str, type(None)), (int, type(None))
_TOP: dict[str, Any] = {
    **dict(node=str, cluster=str, role=str, term=int, leader=_OPT_STR, vip_holder=_OPT_STR),
    **dict(holds_vip=bool, healthy=bool, maintenance=bool, quorum=bool),
    **dict(lease_remaining_ms=_OPT_INT, uptime_s=float, vips=list, checks=list, nodes=list),
    **dict(last_transitions=list, drops=dict),
}
_ITEMS: dict[str, set[str]] = {
    "vips": {"address", "interface", "present"},
    "checks": {"name", "kind", "ok", "critical", "last_duration_ms", "output_tail", "last_change"},
    "nodes": {"name", "role", "healthy", "priority", "maintenance", "witness", "reachable"}
    | {"last_heard_ms"},
    "last_transitions": {"seq", "time", "node", "reason", "term", "message"},
}


def assert_status_schema(obj: dict[str, Any]) -> None:
    assert set(obj) == set(_TOP)
    for key, types in _TOP.items():
        assert isinstance(obj[key], types), key
    assert obj["role"] in {"leader", "follower", "pre-candidate", "candidate"}
    for key, fields in _ITEMS.items():
        for item in obj[key]:
            assert set(item) == fields, key
    assert all(isinstance(v, int) for v in obj["drops"].values())


class ScriptedHandler:
    """Plays the daemon: a status dict that tests edit, and scripted command outcomes."""

    def __init__(self) -> None:
        self.status = healthy_status()
        self.events = [_event(i) for i in range(1, 4)]
        self.requests: list[p.Request] = []
        self.switchover_accepts = True
        self.move_to: str | None = "node2"  # who takes the VIP after an accepted switchover
        self.move_delay = 0.1
        self.maintenance_accepts = True

    async def handle(self, request: p.Request) -> dict[str, object]:
        self.requests.append(request)
        if isinstance(request, p.StatusRequest):
            return copy.deepcopy(self.status)
        if isinstance(request, p.EventsRequest):
            after = request.after
            chosen = [e for e in self.events if after is None or e["seq"] > after]
            return {"events": chosen[-request.limit :]}
        if isinstance(request, p.SwitchoverRequest):
            if request.to == "refuse-me":
                raise p.ProtocolError(p.REFUSED, "target-unknown: no node refuse-me")
            if not self.switchover_accepts:
                detail = "node2 fails check nginx"
                return dict(
                    accepted=False, reason="target-unhealthy", detail=detail, leader="node1"
                )
            target = request.to or self.move_to
            if target is not None:
                asyncio.get_running_loop().call_later(self.move_delay, self._move, target)
            return {"accepted": True, "reason": "accepted", "detail": "", "leader": "node1"}
        if isinstance(request, p.MaintenanceRequest):
            if self.maintenance_accepts:
                return {"accepted": True, "reason": "accepted", "detail": ""}
            return {"accepted": False, "reason": "no-leader", "detail": "no leader to ask"}
        return {"pong": True}

    def _move(self, target: str) -> None:
        self.status["vip_holder"] = self.status["leader"] = target


class ServerThread:
    """A real ControlServer in its own thread and event loop, as the daemon would run it."""

    def __init__(self, path: Path, handler: ScriptedHandler) -> None:
        self.server = ControlServer(path, None, handler)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: AF_UNIX paths are limited to 107 bytes and tmp_path can be long.
    d = Path(tempfile.mkdtemp(prefix="hafcli-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def handler() -> ScriptedHandler:
    return ScriptedHandler()


@pytest.fixture
def daemon(sock_dir: Path, handler: ScriptedHandler) -> Iterator[Path]:
    path = sock_dir / "control.sock"
    with ServerThread(path, handler):
        yield path


def invoke(sock: Path, *args: str, **kw: Any) -> Result:
    return CliRunner().invoke(cli, ["--socket", str(sock), *args], **kw)


# --------------------------------------------------------------------------------------- status


def test_status_healthy(daemon: Path) -> None:
    result = invoke(daemon, "status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "cluster test" in out and "term 7" in out and "VIP holder node1" in out
    assert "quorum yes" in out and "healthy" in out
    for name in ["node1 *", "node2", "node3", "w1"]:
        assert name in out
    assert "10.0.0.100/24 on eth0: present" in out
    # Only the last five transitions, with their messages.
    assert "event number 7" in out and "event number 3" in out and "event number 2" not in out
    assert "Failing checks" not in out


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"nodes": {"node3": {"reachable": False, "healthy": None}}}, 1, "node3 unreachable"),
        ({"nodes": {"node2": {"healthy": False}}}, 1, "node2 unhealthy"),
        ({"nodes": {"node2": {"maintenance": True}}}, 1, "node2 in maintenance"),
        ({"vip_holder": None, "leader": None}, 2, "no node holds the VIP"),
    ],
)
def test_status_exit_codes(
    daemon: Path, handler: ScriptedHandler, change: dict[str, Any], code: int, words: str
) -> None:
    for key, value in change.items():
        if key == "nodes":
            for node in handler.status["nodes"]:
                node.update(value.get(node["name"], {}))
        else:
            handler.status[key] = value
    result = invoke(daemon, "status")
    assert result.exit_code == code, result.output
    assert words in result.stdout


def test_status_shows_failing_checks(daemon: Path, handler: ScriptedHandler) -> None:
    check = handler.status["checks"][0]
    check.update(ok=False, output_tail="line1\ncurl: (7) Failed to connect\n", last_change="now")
    handler.status["healthy"] = False
    handler.status["nodes"][0]["healthy"] = False
    result = invoke(daemon, "status")
    assert result.exit_code == 1
    assert "Failing checks on node1:" in result.stdout
    assert "| curl: (7) Failed to connect" in result.stdout


def test_status_unreachable(sock_dir: Path) -> None:
    result = invoke(sock_dir / "missing.sock", "status")
    assert result.exit_code == 3
    assert "no control socket" in result.stderr and "missing.sock" in result.stderr


def test_status_json_is_the_schema(daemon: Path, handler: ScriptedHandler) -> None:
    result = invoke(daemon, "status", "--json")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed == handler.status
    assert_status_schema(printed)


def test_status_json_exit_code_still_applies(daemon: Path, handler: ScriptedHandler) -> None:
    handler.status["vip_holder"] = None
    result = invoke(daemon, "status", "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["vip_holder"] is None


def test_status_watch_until_ctrl_c(daemon: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", fake_sleep)
    result = invoke(daemon, "status", "--watch", "--interval", "250ms")
    assert result.exit_code == 0
    assert sleeps == [0.25, 0.25, 0.25]
    assert result.stdout.count("VIP holder node1") == 3
    assert "every 0.25s, Ctrl-C to stop" in result.stdout


def test_status_watch_rejects_unbounded_interval(daemon: Path) -> None:
    for bad in ["0", "5ms", "2h", "soon"]:
        result = invoke(daemon, "status", "--watch", "--interval", bad)
        assert result.exit_code == 2, bad  # click usage error
        assert "--interval" in result.stderr


def test_socket_from_env_and_from_config(
    daemon: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(cli, ["status"], env={"HAFAILOVER_SOCKET": str(daemon)})
    assert result.exit_code == 0, result.output
    config = write_config(sock_dir, extra=f"control_socket: {daemon}\n")
    monkeypatch.delenv("HAFAILOVER_SOCKET", raising=False)
    result = CliRunner().invoke(cli, ["-c", str(config), "status"])
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------------- switchover


def test_switchover_waits_and_reports_time(daemon: Path, handler: ScriptedHandler) -> None:
    handler.move_delay = 0.15
    start = time.monotonic()
    result = invoke(daemon, "switchover")
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("VIP now held by node2 (switchover took ")
    took_ms = int(line.rsplit("took ", 1)[1].split(" ms")[0])
    assert 140 <= took_ms <= elapsed * 1000
    assert p.SwitchoverRequest(None) in handler.requests


def test_switchover_to_named_node(daemon: Path, handler: ScriptedHandler) -> None:
    result = invoke(daemon, "switchover", "--to", "node3")
    assert result.exit_code == 0, result.output
    assert "VIP now held by node3" in result.stdout
    assert p.SwitchoverRequest("node3") in handler.requests


def test_switchover_refused(daemon: Path, handler: ScriptedHandler) -> None:
    handler.switchover_accepts = False
    result = invoke(daemon, "switchover", "--to", "node2")
    assert result.exit_code == 1
    assert "switchover refused: target-unhealthy (node2 fails check nginx)" in result.stdout
    result = invoke(daemon, "switchover", "--to", "refuse-me")
    assert result.exit_code == 1 and "refused: target-unknown" in result.stderr


def test_switchover_timeout(daemon: Path, handler: ScriptedHandler) -> None:
    handler.move_to = None  # accepted, but nobody takes over
    start = time.monotonic()
    result = invoke(daemon, "switchover", "--timeout", "300ms")
    assert result.exit_code == 2
    assert 0.3 <= time.monotonic() - start < 2
    assert "timed out after 0.3s" in result.stdout and "still held by node1" in result.stdout


def test_switchover_unreachable(sock_dir: Path) -> None:
    assert invoke(sock_dir / "none.sock", "switchover").exit_code == 3


# ---------------------------------------------------------------------------------- maintenance


def test_maintenance(daemon: Path, handler: ScriptedHandler) -> None:
    result = invoke(daemon, "maintenance", "on", "--node", "node3")
    assert result.exit_code == 0 and "maintenance on for node3 accepted" in result.stdout
    assert handler.requests[-1] == p.MaintenanceRequest(True, "node3")
    result = invoke(daemon, "maintenance", "off")
    assert result.exit_code == 0 and handler.requests[-1] == p.MaintenanceRequest(False, None)
    handler.maintenance_accepts = False
    result = invoke(daemon, "maintenance", "on")
    assert result.exit_code == 1 and "refused: no-leader" in result.stdout
    assert invoke(daemon, "maintenance", "maybe").exit_code == 2  # usage error


# --------------------------------------------------------------------------------------- events


def test_events(daemon: Path, handler: ScriptedHandler) -> None:
    result = invoke(daemon, "events", "-n", "2")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and "#2 node1 term 7 elected: event number 2" in lines[0]
    result = invoke(daemon, "events", "--json")
    assert json.loads(result.stdout) == {"events": handler.events}


def test_events_follow(
    daemon: Path, handler: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = 0

    def fake_sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 1:
            handler.events.append(_event(4, "lease-expired", "node2"))
        if polls == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", fake_sleep)
    result = invoke(daemon, "events", "--follow", "--json")
    assert result.exit_code == 0
    printed = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [e["seq"] for e in printed] == [1, 2, 3, 4]  # no repeats
    follow_ups = [r for r in handler.requests if isinstance(r, p.EventsRequest)][1:]
    assert follow_ups and all(r.after is not None for r in follow_ups)


# --------------------------------------------------------------------------------------- genkey


def test_genkey_prints_key() -> None:
    result = CliRunner().invoke(cli, ["genkey"])
    assert result.exit_code == 0
    assert len(base64.b64decode(result.stdout.strip(), validate=True)) == 32


def test_genkey_writes_private_file(tmp_path: Path) -> None:
    from hafailover.wire.keys import load_key

    out = tmp_path / "cluster.key"
    result = CliRunner().invoke(cli, ["genkey", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    first = load_key(out)
    result = CliRunner().invoke(cli, ["genkey", "--out", str(out)])
    assert result.exit_code == 1 and "--force" in result.stderr
    assert load_key(out) == first
    result = CliRunner().invoke(cli, ["genkey", "--out", str(out), "--force"])
    assert result.exit_code == 0 and load_key(out) != first
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cluster.key"]  # no temp left


# --------------------------------------------------------------------------------- check-config


def write_config(
    directory: Path,
    *,
    extra: str = "",
    interface: str = "eth0",
    address: str = "10.0.0.1",
    vip: str = "10.0.0.100/24",
    port: int = 5405,
) -> Path:
    key = directory / "cluster.key"
    if not key.exists():
        CliRunner().invoke(cli, ["genkey", "--out", str(key)])
    path = directory / "hafailover.yaml"
    path.write_text(
        f"cluster:\n  name: test\n  key_file: cluster.key\n  port: {port}\n"
        f"nodes:\n  - {{name: node1, address: {address}}}\n"
        "  - {name: node2, address: 10.0.0.2}\n  - {name: node3, address: 10.0.0.3}\n"
        f"vips:\n  - {{address: {vip}, interface: {interface}}}\n" + extra
    )
    return path


def test_check_config_good_no_host(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = CliRunner().invoke(cli, ["check-config", "-c", str(config), "--no-host"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK") and "cluster test, 3 nodes, 1 VIPs" in result.stdout


def test_check_config_bad_prints_file_and_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace("address: 10.0.0.2", "address: not-an-ip")
    config.write_text(text + "bogus_key: 1\n")
    result = CliRunner().invoke(cli, ["check-config", "-c", str(config), "--no-host"])
    assert result.exit_code == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) >= 2
    assert all(f"{config}:" in line for line in fails)
    line_no = text.splitlines().index("  - {name: node2, address: not-an-ip}") + 1
    assert any(f"{config}:{line_no}:" in line for line in fails)


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config", "-c", str(tmp_path / "no.yaml")])
    assert result.exit_code == 1 and "FAIL" in result.stdout


@pytest.mark.skipif(not EXAMPLE_CONFIG.exists(), reason="etc/hafailover/hafailover.yaml not there")
def test_check_config_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config", "-c", str(EXAMPLE_CONFIG), "--no-host"])
    assert result.exit_code == 0, result.output


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def _host_lan() -> tuple[str, ipaddress.IPv4Interface] | None:
    """A real interface with an IPv4 LAN address (VIPs cannot live on loopback)."""
    if shutil.which("ip") is None:
        return None
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True).stdout or "[]")
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            iface = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
            if not iface.ip.is_loopback and iface.network.num_addresses >= 8:
                return link["ifname"], iface
    return None


@pytest.fixture
def lan() -> tuple[str, ipaddress.IPv4Interface]:
    found = _host_lan()
    if found is None:
        pytest.skip("needs iproute2 and an interface with an IPv4 LAN address (/29 or larger)")
    return found


def lan_config(directory: Path, lan: tuple[str, ipaddress.IPv4Interface], **kw: Any) -> Path:
    ifname, iface = lan
    vip = next(h for h in reversed(list(iface.network.hosts())[-4:]) if h != iface.ip)
    return write_config(
        directory,
        address=str(iface.ip),
        vip=f"{vip}/{iface.network.prefixlen}",
        **{"interface": ifname, "port": _free_udp_port(str(iface.ip)), **kw},
    )


def test_check_config_host_checks_pass(tmp_path: Path, lan: tuple[str, Any]) -> None:
    config = lan_config(tmp_path, lan)
    result = CliRunner().invoke(cli, ["check-config", "-c", str(config), "--node", "node1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "this host is node node1" in out and f"interface {lan[0]} exists" in out
    assert "inside a subnet" in out and "key file" in out and " is free" in out
    assert "FAIL" not in out


def test_check_config_host_checks_fail(tmp_path: Path, lan: tuple[str, Any]) -> None:
    config = lan_config(tmp_path, lan, interface="nosuch0")
    (tmp_path / "cluster.key").chmod(0o644)
    port = int(config.read_text().split("port: ")[1].split()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((str(lan[1].ip), port))  # someone else holds the port, no daemon answers
        args = ["--socket", str(tmp_path / "none.sock"), "check-config", "-c", str(config)]
        result = CliRunner().invoke(cli, [*args, "--node", "node1"])
    assert result.exit_code == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any("no interface nosuch0" in line for line in fails)
    assert any("chmod 600" in line for line in fails)
    assert any("in use by another program" in line for line in fails)


def test_check_config_port_held_by_daemon(
    tmp_path: Path, sock_dir: Path, lan: tuple[str, Any]
) -> None:
    config = lan_config(tmp_path, lan)
    port = int(config.read_text().split("port: ")[1].split()[0])
    sock = sock_dir / "control.sock"
    with (
        ServerThread(sock, ScriptedHandler()),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held,
    ):
        held.bind((str(lan[1].ip), port))
        args = ["--socket", str(sock), "check-config", "-c", str(config), "--node", "node1"]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "held by the running hafailover daemon" in result.stdout


# ------------------------------------------------------------------------------------ help etc.


@pytest.mark.parametrize(
    "command",
    ["run", "status", "switchover", "maintenance", "events", "check-config", "genkey"],
)
def test_every_command_has_help_with_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"hafailover {command}" in result.stdout


def test_version_and_usage_errors() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "hafailover" in result.stdout
    assert CliRunner().invoke(cli, ["nonsense"]).exit_code == 2
    assert CliRunner().invoke(cli, ["switchover", "--timeout", "x"]).exit_code == 2


def test_run_calls_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys
    import types

    calls: list[tuple[Path, str | None]] = []

    def fake_run(config_path: Path, node: str | None) -> int:
        calls.append((config_path, node))
        return 7

    module = types.ModuleType("hafailover.runtime.daemon")
    module.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hafailover.runtime.daemon", module)
    result = CliRunner().invoke(cli, ["run", "-c", str(tmp_path / "x.yaml"), "--node", "n1"])
    assert result.exit_code == 7
    assert calls == [(tmp_path / "x.yaml", "n1")]
