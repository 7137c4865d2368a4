"""CheckRunner: real processes, sockets and timeouts, each test bounded to a couple of seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hafailover.runtime import checks
from hafailover.runtime.checks import (
    CheckRunner,
    CheckSpec,
    FakeHealth,
    run_bounded,
    run_check,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


def gone(pid: int) -> bool:
    """True once pid no longer runs. A zombie counts as gone: it holds no resources and only
    waits for a parent (here possibly a non-reaping container init) to collect it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped between the open and the read
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def eventually(pred: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


def script(name: str, cmd: str, **kw: Any) -> CheckSpec:
    return CheckSpec(name=name, kind="script", argv=(cmd,), shell=True, **kw)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, str, float]] = []

    def __call__(self, healthy: bool, detail: str) -> None:
        self.calls.append((healthy, detail, time.monotonic()))


def test_hung_script_group_killed_at_timeout_and_verdict_flips_then(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = f"sleep 30 & echo $$ $! > {pids}; echo started; sleep 30"
    spec = script("hung", cmd, timeout=0.5, interval=30, fall=1)
    rec = Recorder()

    async def main() -> None:
        runner = CheckRunner([spec], rec)
        t0 = time.monotonic()
        await runner.start()
        try:
            assert await eventually(lambda: bool(rec.calls), within=2.0)
            healthy, detail, at = rec.calls[0]
            assert healthy is False
            # The verdict arrives at timeout expiry, not after any reaping.
            assert 0.45 <= at - t0 < 1.5
            assert "'hung'" in detail and "timed out" in detail and "started" in detail
            leader, grandchild = (int(p) for p in pids.read_text().split())
            assert await eventually(lambda: gone(leader) and gone(grandchild))
            st = runner.statuses()[0]
            assert st.ok is False and st.consecutive_fail == 1 and st.last_duration is not None
            assert "timed out" in st.last_error
        finally:
            await runner.stop()

    run(main())


def test_fall_rise_hysteresis(tmp_path: Path) -> None:
    # Each run consumes the next exit status from a list; the counter file numbers the runs.
    seq = [1, 0, 1, 1, 0, 1, 0, 0] + [0] * 500
    (tmp_path / "seq").write_text("\n".join(map(str, seq)) + "\n")
    (tmp_path / "n").write_text("0")
    # The counter is replaced atomically (mv) because the test polls it concurrently.
    cmd = (
        f"cd {tmp_path}; n=$(cat n); n=$((n+1)); echo $n > n.tmp; mv n.tmp n; "
        'exit "$(sed -n "${n}p" seq)"'
    )
    spec = script("seq", cmd, timeout=1, interval=0.02, fall=2, rise=2)
    seen: list[tuple[bool, int]] = []

    def on_health(healthy: bool, detail: str) -> None:
        seen.append((healthy, int((tmp_path / "n").read_text())))

    async def main() -> None:
        runner = CheckRunner([spec], on_health)
        assert runner.healthy is True and runner.statuses()[0].ok is None
        await runner.start()
        try:
            assert await eventually(lambda: int((tmp_path / "n").read_text()) >= 10)
        finally:
            await runner.stop()
        st = runner.statuses()[0]
        assert st.ok is True and st.consecutive_fail == 0 and st.last_change_wall is not None

    run(main())
    # Run 1 failed alone (no flip); runs 3-4 are the 2nd consecutive failure; runs 7-8 rise.
    assert seen == [(False, 4), (True, 8)]


def test_only_critical_checks_decide_and_unknown_counts_healthy() -> None:
    bad = script("advisory", "echo nope; exit 3", critical=False, interval=0.05, fall=1)
    good = script("good", "exit 0", interval=0.05, rise=1)
    rec = Recorder()

    async def main() -> None:
        runner = CheckRunner([bad, good], rec)
        await runner.start()
        try:
            assert await eventually(lambda: all(s.ok is not None for s in runner.statuses()))
            await asyncio.sleep(0.1)
        finally:
            await runner.stop()
        adv, ok = runner.statuses()
        assert adv.ok is False and adv.last_error == "exit status 3"
        assert adv.output_tail.strip() == "nope"
        assert ok.ok is True
        assert runner.healthy is True

    run(main())
    assert rec.calls == []


def test_missing_program_is_a_failure() -> None:
    spec = CheckSpec(name="x", kind="script", argv=("/nonexistent/hafailover-check",))
    res = run(run_check(spec))
    assert not res.ok and "cannot run" in res.error


def test_output_tail_is_bounded_and_keeps_the_end() -> None:
    spec = script("loud", "head -c 100000 /dev/zero | tr '\\0' x; echo END; exit 1")
    res = run(run_check(spec))
    assert not res.ok and res.error == "exit status 1"
    assert len(res.output) <= checks.OUTPUT_TAIL_CHARS
    assert res.output.endswith("END\n")


def test_background_child_holding_the_pipe_does_not_delay_the_result(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    spec = script("bg", f"sleep 20 & echo $! > {pidfile}; echo hi; exit 0", timeout=2)
    t0 = time.monotonic()
    try:
        res = run(run_check(spec))
        assert res.ok and "hi" in res.output
        assert time.monotonic() - t0 < 1.0
    finally:
        with contextlib.suppress(Exception):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_unkillable_process_never_blocks_the_caller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stand-in for a process in D state: SIGKILL is "sent" but has no effect.
    real_killpg = os.killpg
    spared: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: spared.append(pgid))
    monkeypatch.setattr(checks, "REAP_BOUND", 0.3)

    async def main() -> None:
        t0 = time.monotonic()
        res = await run_bounded(["sleep", "30"], 0.2)
        assert res.timed_out and res.returncode is None
        assert time.monotonic() - t0 < 0.5
        (reaper,) = checks._reapers
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        await asyncio.wait_for(reaper, 1.0)  # the reaper gives up after its bound
        tick.cancel()
        assert ticks > 10  # and the loop kept running meanwhile

    try:
        run(main())
    finally:
        for pgid in spared:
            with contextlib.suppress(ProcessLookupError):
                real_killpg(pgid, signal.SIGKILL)
    assert len(spared) == 1
    assert any("has not exited" in r.getMessage() for r in caplog.records)


def test_stop_kills_a_running_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    spec = script("slow", f"echo $$ > {pidfile}; sleep 30", timeout=20)

    async def main() -> None:
        runner = CheckRunner([spec], Recorder())
        await runner.start()
        assert await eventually(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        await runner.stop()
        pid = int(pidfile.read_text())
        assert await eventually(lambda: gone(pid))

    run(main())


async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _http_handler(
    response: bytes,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        assert request.startswith(b"GET /health?x=1 HTTP/1.0\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("response", "expect_body", "ok", "error"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall good\n", "good", True, ""),
        (b"HTTP/1.0 200 OK\r\n\r\nall good\n", "", True, ""),
        (b"HTTP/1.0 200 OK\r\n\r\ndegraded\n", "good", False, "body lacks"),
        (b"HTTP/1.1 503 Service Unavailable\r\n\r\ndown\n", "", False, "status 503 not in"),
        (b"garbage\r\n\r\n", "", False, "malformed status line"),
    ],
)
def test_http_check(response: bytes, expect_body: str, ok: bool, error: str) -> None:
    async def main() -> checks.CheckResult:
        server, port = await _serve(_http_handler(response))
        async with server:
            url = f"http://127.0.0.1:{port}/health?x=1"
            spec = CheckSpec(name="web", kind="http", url=url, expect_body=expect_body)
            return await run_check(spec)

    res = run(main())
    assert res.ok is ok
    assert error in res.error
    assert res.output.startswith(response.split(b"\r\n")[0].decode())


def test_http_check_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> tuple[checks.CheckResult, float]:
        server, port = await _serve(silent)
        spec = CheckSpec(name="web", kind="http", url=f"http://127.0.0.1:{port}/", timeout=0.3)
        t0 = time.monotonic()
        res = await run_check(spec)
        elapsed = time.monotonic() - t0
        server.close()
        return res, elapsed

    res, elapsed = run(main())
    assert not res.ok and "timed out" in res.error
    assert elapsed < 1.0


def test_tcp_check() -> None:
    async def main() -> tuple[checks.CheckResult, checks.CheckResult]:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server, port = await _serve(accept)
        async with server:
            up = await run_check(CheckSpec(name="t", kind="tcp", host="127.0.0.1", port=port))
        down = await run_check(CheckSpec(name="t", kind="tcp", host="127.0.0.1", port=port))
        return up, down

    up, down = run(main())
    assert up.ok
    assert not down.ok and "failed" in down.error


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        CheckSpec(name="a", kind="script")
    with pytest.raises(ValueError):
        CheckSpec(name="a", kind="http", url="https://x/")
    with pytest.raises(ValueError):
        CheckSpec(name="a", kind="tcp", host="h", port=0)
    with pytest.raises(ValueError):
        CheckSpec(name="a", kind="script", argv=("true",), fall=0)
    spec = CheckSpec(name="a", kind="script", argv=("true",))
    with pytest.raises(ValueError):
        CheckRunner([spec, spec], Recorder())


def test_fake_health_reports_changes_only() -> None:
    rec = Recorder()
    fake = FakeHealth(rec)
    fake.set_verdict(True)
    fake.set_verdict(False, "db down")
    fake.set_verdict(False, "still down")
    fake.set_verdict(True, "ok")
    assert [(h, d) for h, d, _ in rec.calls] == [(False, "db down"), (True, "ok")]
    assert fake.healthy is True
    port: checks.HealthPort = fake
    run(port.start())
    assert fake.started and port.statuses() == []


def test_runner_started_unhealthy_reports_only_when_the_new_checks_clear_it() -> None:
    # A reload starts the new runner from the old verdict: it must report recovery once its
    # checks pass, stay silent while they fail, and with no critical check clear it at once.
    passing, failing = Recorder(), Recorder()
    nothing_critical = Recorder()

    async def main() -> None:
        runners = [
            CheckRunner([script("ok", "exit 0", interval=0.05, rise=1)], passing),
            CheckRunner([script("bad", "exit 1", interval=0.05, fall=1)], failing),
            CheckRunner([script("adv", "exit 1", interval=0.05, critical=False)],
                        nothing_critical),
        ]
        for r in runners:
            await r.start(healthy=False)
        try:
            assert await eventually(lambda: bool(passing.calls))
            await asyncio.sleep(0.2)
        finally:
            for r in runners:
                await r.stop()
        assert [c[0] for c in passing.calls] == [True]
        assert runners[0].healthy is True
        assert failing.calls == [] and runners[1].healthy is False
        assert [c[:2] for c in nothing_critical.calls] == [(True, "all critical checks passing")]

    run(main())


def test_stop_ends_a_check_whose_cancellation_was_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python 3.11's `asyncio.wait_for`, cancelled just as its future completes, returns the
    # result and the cancellation is lost: the check's loop must still end at stop(), and
    # record nothing after it.
    started: list[str] = []

    async def swallowing(spec: CheckSpec) -> checks.CheckResult:
        started.append(spec.name)
        if len(started) > 1:  # only the first cancellation is lost, as in the race
            await asyncio.sleep(10)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        return checks.CheckResult(True, "", "")

    monkeypatch.setattr(checks, "run_check", swallowing)
    recorder = Recorder()

    async def main() -> tuple[float, int]:
        runner = CheckRunner([script("s", "exit 0", interval=0.05)], recorder)
        await runner.start()
        assert await eventually(lambda: bool(started))
        t0 = time.monotonic()
        await asyncio.wait_for(runner.stop(), 2.0)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.2)
        (status,) = runner.statuses()
        return elapsed, status.consecutive_ok

    elapsed, recorded = run(main())
    assert elapsed < 1.0
    assert recorded == 0 and len(started) == 1 and recorder.calls == []
