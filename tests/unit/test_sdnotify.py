"""sd_notify against real AF_UNIX datagram sockets (filesystem path and abstract namespace)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafailover.runtime.sdnotify import FakeSystemdNotifier, SdNotifyPort, SystemdNotifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(1.0)
    yield sock, path
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_reach_a_path_socket(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = SystemdNotifier.from_env()
    assert n.enabled
    assert n.ready() and recv(sock) == "READY=1"
    assert n.status("leader, term 7\nsecond line") and recv(sock) == (
        "STATUS=leader, term 7 second line"
    )
    assert n.watchdog() and recv(sock) == "WATCHDOG=1"
    assert n.stopping() and recv(sock) == "STOPPING=1"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"hafailover-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert recv(sock) == "READY=1"
        n.close()
    finally:
        sock.close()


def test_no_socket_is_a_noop() -> None:
    n = SystemdNotifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False
    assert n.watchdog_interval() is None


def test_watchdog_interval_is_half_watchdog_usec(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
    assert SystemdNotifier.from_env(env).watchdog_interval() == 1.5
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_env(mine).watchdog_interval() == 1.5
    # The watchdog is for another process (e.g. we were exec'd by a wrapper): not ours.
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier.from_env(other).watchdog_interval() is None
    assert SystemdNotifier.from_env({**env, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "3000000"}).watchdog_interval() is None


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="hafailover.runtime.sdnotify")
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.ready() is False
    assert n.watchdog() is False
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING", "DEBUG"]


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert any("not a unix socket" in r.getMessage() for r in caplog.records)


def test_unset_hides_variables_from_children(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    n = SystemdNotifier.from_env(unset=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.watchdog_interval() == 1.0
    assert n.ready() and recv(sock) == "READY=1"


def test_fake_notifier() -> None:
    fake = FakeSystemdNotifier(watchdog_interval=0.5)
    port: SdNotifyPort = fake
    port.ready()
    port.status("a\nb")
    assert fake.messages == ["READY=1", "STATUS=a b"]
    assert port.watchdog_interval() == 0.5
