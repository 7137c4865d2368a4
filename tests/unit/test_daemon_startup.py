"""`hafailover run`: it refuses, before touching the network, what this runtime cannot run; and
it tells systemd it is ready before the VIP manager opens, but starts the engine only after."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hafailover.control.client import ControlClient

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, body: str, env: dict[str, str] | None = None,
        key_text: str = "k" * 44 + "\n") -> subprocess.CompletedProcess[str]:
    key = tmp_path / "cluster.key"
    key.write_text(key_text)
    key.chmod(0o600)
    config = tmp_path / "hafailover.yaml"
    config.write_text(
        "cluster:\n  name: lab\n"
        f"  key_file: {key}\n"
        + body
        + "nodes:\n"
        "  - {name: node1, address: 10.213.0.11, priority: 150}\n"
        "  - {name: node2, address: 10.213.0.12, priority: 100}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"control_socket: {tmp_path / 'control.sock'}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "hafailover", "run", "-c", str(config), "--node", "node1"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_a_lifetime_too_short_for_the_lease_is_refused_with_exit_78(tmp_path: Path) -> None:
    r = run(tmp_path, "  failover_timeout: 2s\n  vip_lifetime: 2s\n"
                      "vips:\n  - {address: 10.213.0.100/24, interface: eth0}\n")
    assert r.returncode == 78, r.stderr
    assert "vip_lifetime (2s) is too short" in r.stderr and "3s or more" in r.stderr


@pytest.mark.parametrize(("watchdog_usec", "warned"), [(350_000, True), (450_000, False)])
def test_a_watchdog_shorter_than_the_gap_between_pings_on_time_is_warned_about(
    tmp_path: Path, watchdog_usec: int, warned: bool,
) -> None:
    """Default timings: a tick every 100 ms, on time up to 300 ms late, so pings of a daemon on
    time may be 400 ms apart; a shorter WatchdogSec gets a warning (the start goes on, here to
    the key file's refusal: nothing touches the network)."""
    r = run(tmp_path, "", env={"NOTIFY_SOCKET": str(tmp_path / "no-notify.sock"),
                               "WATCHDOG_USEC": str(watchdog_usec)}, key_text="short\n")
    assert r.returncode == 78 and "key" in r.stderr.splitlines()[-1], r.stderr
    assert ("longest gap between two watchdog pings" in r.stderr) is warned, r.stderr
    if warned:
        assert "WatchdogSec (0.35s)" in r.stderr and "(0.4s: a tick every 0.1s" in r.stderr


STARTING = "STATUS=starting: opening the VIP manager"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare (a private network namespace)")
def test_ready_once_the_control_socket_answers_and_the_engine_only_after(tmp_path: Path) -> None:
    """READY=1 comes with the control socket answering and a "starting" status; the engine's
    first status line (it has started: it may vote, and take a VIP) only after it. Run in a
    private network namespace with only its loopback."""
    key = tmp_path / "cluster.key"
    key.write_text("k" * 44 + "\n")
    key.chmod(0o600)
    config = tmp_path / "hafailover.yaml"
    control = tmp_path / "control.sock"
    config.write_text(
        f"cluster: {{name: lab, key_file: {key}}}\n"
        "nodes:\n"
        "  - {name: node1, address: 127.0.0.1, priority: 150}\n"
        "  - {name: node2, address: 127.0.0.2, priority: 100}\n"
        f"state_dir: {tmp_path / 'state'}\ncontrol_socket: {control}\n"
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.5)
    argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            sys.executable, "-m", "hafailover", "run", "-c", str(config), "--node", "node1"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
             "WATCHDOG_USEC": "500000"},
    )
    deadline = time.monotonic() + 60
    messages: list[str] = []

    def receive() -> None:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                messages.extend(notify.recv(4096).decode().splitlines())
                return
            except TimeoutError:
                continue
        raise AssertionError(f"no notification (daemon exit status {proc.poll()}): {messages}")

    status: dict[str, object] | None = None
    try:
        while "READY=1" not in messages:
            receive()
        # At READY=1 the control socket answers.
        status = ControlClient(control, timeout=5).status()
        while not any(m.startswith("STATUS=") and m != STARTING for m in messages):
            receive()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        notify.close()
        print(err, file=sys.stderr)  # shown if the test fails
    assert status is not None and status["role"] == "follower"
    assert proc.returncode == 0, err
    ready = messages.index("READY=1")
    assert messages.index(STARTING) < ready, messages
    engine_line = next(i for i, m in enumerate(messages)
                       if m.startswith("STATUS=") and m != STARTING)
    assert engine_line > ready and messages[engine_line].startswith("STATUS=follower, term 0")
    # The watchdog waits longer while the VIP manager opens, WatchdogSec again once the engine
    # has started (systemd's WATCHDOG_USEC=).
    assert messages.index("WATCHDOG_USEC=10000000") < ready, messages
    assert ready < messages.index("WATCHDOG_USEC=500000") < engine_line, messages
    log = err.splitlines()
    assert [ln for ln in log if "engine: started" in ln], err
