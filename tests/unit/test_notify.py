"""Notifier: hooks run in order, one at a time, bounded, with the documented environment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hafailover.core.actions import NotifyKind
from hafailover.core.reasons import Role
from hafailover.runtime.notify import FakeNotifier, Notifier, NotifierPort, hook_env

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


def sh(cmd: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", cmd)


def gone(pid: int) -> bool:
    # A zombie counts as gone (the container's init may not reap orphans).
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


ENV = hook_env(node="n1", role=Role.LEADER, term=7, leader="n1", vips=["10.0.0.10/24", "fd00::10"])


def test_hooks_run_in_order_never_concurrently_with_env(tmp_path: Path) -> None:
    log = tmp_path / "log"
    # Each hook logs start/end around a sleep; any overlap would interleave the lines.
    cmd = (
        f'echo "start $HAFAILOVER_EVENT" >> {log}; sleep 0.05; '
        f'echo "end $HAFAILOVER_EVENT $HAFAILOVER_NODE $HAFAILOVER_ROLE $HAFAILOVER_TERM '
        f'$HAFAILOVER_LEADER $HAFAILOVER_VIPS $HAF_TEST_INHERITED" >> {log}'
    )
    hooks = {k: sh(cmd) for k in ("leader", "follower", "stop")}

    async def main() -> tuple[bool, float]:
        n = Notifier(hooks, timeout=2)
        t0 = time.monotonic()
        n.submit(NotifyKind.LEADER, ENV)
        n.submit("follower", ENV)
        n.submit("maintenance", ENV)  # no hook configured: ignored
        n.submit(NotifyKind.STOP, ENV)
        submit_time = time.monotonic() - t0
        return await n.drain(5), submit_time

    os.environ["HAF_TEST_INHERITED"] = "inherited"
    try:
        ok, submit_time = run(main())
    finally:
        del os.environ["HAF_TEST_INHERITED"]
    assert ok
    assert submit_time < 0.05  # submit only queues
    tail = "n1 leader 7 n1 10.0.0.10/24 fd00::10 inherited"
    assert log.read_text().splitlines() == [
        "start leader",
        f"end leader {tail}",
        "start follower",
        f"end follower {tail}",
        "start stop",
        f"end stop {tail}",
    ]


def test_hung_hook_is_killed_with_its_group_and_next_hook_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids, after = tmp_path / "pids", tmp_path / "after"
    hooks = {
        "leader": sh(f"sleep 30 & echo $$ $! > {pids}; sleep 30"),
        "follower": sh(f"touch {after}"),
    }

    async def main() -> float:
        n = Notifier(hooks, timeout=0.3)
        t0 = time.monotonic()
        n.submit("leader", ENV)
        n.submit("follower", ENV)
        assert await n.drain(3)
        return time.monotonic() - t0

    elapsed = run(main())
    assert elapsed < 1.0
    assert after.exists()
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 2
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone(pid), pid
    assert any("timed out" in r.getMessage() for r in caplog.records)


def test_failures_are_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "ran"
    hooks = {
        "leader": sh("echo boom >&2; exit 2"),
        "follower": ("/nonexistent/hook",),
        "stop": sh(f"touch {marker}"),
    }

    async def main() -> bool:
        n = Notifier(hooks, timeout=1)
        for kind in ("leader", "follower", "stop"):
            n.submit(kind, ENV)
        return await n.drain(3)

    assert run(main())
    assert marker.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("status 2" in m and "boom" in m for m in messages)
    assert any("cannot run" in m for m in messages)


def test_drain_timeout_kills_running_hook_and_drops_rest(tmp_path: Path) -> None:
    pidfile, never = tmp_path / "pid", tmp_path / "never"
    hooks = {"leader": sh(f"echo $$ > {pidfile}; sleep 30"), "stop": sh(f"touch {never}")}

    async def main() -> tuple[bool, float]:
        n = Notifier(hooks, timeout=20)
        n.submit("leader", ENV)
        n.submit("stop", ENV)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        ok = await n.drain(0.2)
        n.submit("stop", ENV)  # after drain: refused, not run
        await asyncio.sleep(0.05)
        return ok, time.monotonic() - t0

    ok, elapsed = run(main())
    assert not ok and elapsed < 1.0
    assert not never.exists()
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(pid)


def test_drain_with_nothing_submitted() -> None:
    assert run(Notifier({}, timeout=1).drain(0.1))


def test_rejects_empty_command() -> None:
    with pytest.raises(ValueError):
        Notifier({"leader": ()}, timeout=1)


def test_fake_notifier_records() -> None:
    fake = FakeNotifier()
    port: NotifierPort = fake
    port.submit(NotifyKind.FOLLOWER, ENV)
    assert run(port.drain(1))
    assert fake.kinds() == ["follower"] and fake.drained
    assert fake.calls[0][1]["HAFAILOVER_TERM"] == "7"
    assert fake.calls[0][1]["HAFAILOVER_EVENT"] == "follower"
