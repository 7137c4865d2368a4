"""Health checks: the hung-node detector.

Each configured check runs on its own interval in its own asyncio task; a node is healthy when
every *critical* check passes. Three kinds:

* ``script`` - a program run in its own process group (exit status 0 = healthy). On timeout the
  whole group is SIGKILLed, so a check that forked helpers cannot leave them behind holding
  resources, and the run counts as a failure at that instant.
* ``http``   - a minimal HTTP/1.0 GET on a raw connection (no extra dependencies).
* ``tcp``    - a TCP connect.

Hysteresis: a check flips to failing after ``fall`` consecutive failures and back to passing
after ``rise`` consecutive successes.

Initial state: every check starts *unknown* (``CheckStatus.ok is None``), and unknown counts as
passing, so the node is healthy at start-up until some critical check has failed ``fall`` times.
The alternative (unhealthy until every check has risen) would make a freshly started node refuse
leadership - and a whole cluster restarted together refuse to elect anyone - for
``rise * interval`` seconds even though nothing is known to be wrong. A node that really is
broken is caught after ``fall`` runs, the same delay as for a node that breaks later.

``on_health(healthy, detail)`` is called only when the aggregate verdict changes; ``detail``
names the failing check(s) with their error and output tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CheckKind = Literal["script", "http", "tcp"]

# How much of a check's combined stdout+stderr is kept for status/logs.
OUTPUT_TAIL_CHARS = 400
# Raw bytes kept while reading; more than OUTPUT_TAIL_CHARS so multi-byte text decodes cleanly.
_KEEP_BYTES = 4096
# After SIGKILL, how long a background task waits for the kernel to let the process go. A process
# in uninterruptible sleep (D state) can ignore SIGKILL indefinitely; we log and stop waiting.
REAP_BOUND = 5.0
# After the main process exits, how long to keep reading output that is still in the pipe. A
# background grandchild may hold the pipe open forever, so this must be short and bounded.
_EXIT_DRAIN = 0.2
# HTTP responses are read up to this size; the body match only looks at this prefix.
_HTTP_MAX_BYTES = 65536


@dataclass(frozen=True)
class CheckSpec:
    """One configured check (filled by the daemon from the config).

    ``shell=True`` runs ``/bin/sh -c argv[0] argv[1:]...`` (so ``argv[0]`` is a shell command
    line and any further elements become ``$0``, ``$1``...); otherwise ``argv`` is executed
    directly. ``url`` must be ``http://host[:port]/path``. ``expect_status`` is an inclusive
    range; ``expect_body`` (if non-empty) must occur in the first 64 KiB of the body.
    ``interval`` is start-to-start; a run never overlaps the previous run of the same check.
    """

    name: str
    kind: CheckKind
    argv: tuple[str, ...] = ()
    shell: bool = False
    url: str = ""
    host: str = ""
    port: int = 0
    interval: float = 2.0
    timeout: float = 1.0
    fall: int = 3
    rise: int = 2
    critical: bool = True
    expect_status: tuple[int, int] = (200, 399)
    expect_body: str = ""
    # Run once when the check turns failing, after this node has handed its groups over
    # (the daemon decides when); () for none.
    recover: tuple[str, ...] = ()
    recover_timeout: float = 30.0

    def __post_init__(self) -> None:
        where = f"check {self.name!r}"
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError(f"{where}: interval and timeout must be positive")
        if self.fall < 1 or self.rise < 1:
            raise ValueError(f"{where}: fall and rise must be at least 1")
        if self.kind == "script":
            if not self.argv:
                raise ValueError(f"{where}: script check needs argv")
        elif self.kind == "http":
            parts = urlsplit(self.url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"{where}: http check needs an http://host/... url")
        elif self.kind == "tcp":
            if not self.host or not 0 < self.port < 65536:
                raise ValueError(f"{where}: tcp check needs host and port")
        else:
            raise ValueError(f"{where}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class CheckStatus:
    """A snapshot of one check for ``status`` output.

    ``ok`` is None until the check has either failed ``fall`` or passed ``rise`` times in a row.
    ``last_change_wall`` is wall-clock (time.time()) of the last flip of ``ok``, None if never.
    """

    name: str
    kind: CheckKind
    critical: bool
    ok: bool | None = None
    last_duration: float | None = None
    output_tail: str = ""
    last_change_wall: float | None = None
    consecutive_ok: int = 0
    consecutive_fail: int = 0
    last_error: str = ""


class HealthPort(Protocol):
    """What the daemon needs from a health source (real: CheckRunner, fake: FakeHealth)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def statuses(self) -> list[CheckStatus]: ...

    @property
    def healthy(self) -> bool: ...


# --- running a process with a hard bound ------------------------------------------------------


@dataclass(frozen=True)
class ProcessResult:
    """``returncode`` is None when the run timed out (its process group was SIGKILLed)."""

    returncode: int | None
    output_tail: str
    timed_out: bool


def _tail(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")[-OUTPUT_TAIL_CHARS:]


class _OutputCapture:
    """A pipe for the child's stdout+stderr that we read and close on our own terms.

    asyncio's own subprocess pipes stay open until every writer is gone; a background grandchild
    holding the pipe would then pin them. With our own pipe we can simply close the read end.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._buf = bytearray()
        self._eof = asyncio.Event()
        self._closed = False
        self._loop.add_reader(self.read_fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(self.read_fd)
            self._eof.set()
            return
        self._buf += data
        if len(self._buf) > _KEEP_BYTES:
            del self._buf[:-_KEEP_BYTES]

    def child_started(self) -> None:
        # Only the child may hold the write end, or we would never see EOF.
        os.close(self.write_fd)
        self.write_fd = -1

    async def wait_eof(self, timeout: float) -> None:
        # `asyncio.timeout`, not `wait_for`: Python 3.11's `wait_for` returns the result when it
        # is cancelled just as the awaited future completes, and the cancellation is lost.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._eof.wait()

    def tail(self) -> str:
        return _tail(self._buf)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.read_fd)
        os.close(self.read_fd)
        if self.write_fd >= 0:
            os.close(self.write_fd)


# Strong references to background reapers (the loop only keeps weak ones).
_reapers: set[asyncio.Task[None]] = set()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # start_new_session=True made the child a session and group leader: pgid == pid. Only while
    # the child is unreaped is that id guaranteed not to have been reused.
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process, what: str) -> None:
    try:
        await asyncio.wait_for(proc.wait(), REAP_BOUND)
    except TimeoutError:
        log.error(
            "%s (pid %d) has not exited %.0fs after SIGKILL; it is probably stuck in "
            "uninterruptible sleep (D state, e.g. hung storage). Giving up waiting for it.",
            what,
            proc.pid,
            REAP_BOUND,
        )


def _reap_later(proc: asyncio.subprocess.Process, what: str) -> None:
    task = asyncio.get_running_loop().create_task(_reap(proc, what))
    _reapers.add(task)
    task.add_done_callback(_reapers.discard)


async def run_bounded(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None, what: str = ""
) -> ProcessResult:
    """Run ``argv`` in a new process group; return no later than ``timeout`` (+ a short drain).

    On timeout (or cancellation) the whole process group is SIGKILLed and the result returned
    at once; reaping continues in a background task that waits at most REAP_BOUND, so a process
    stuck in D state can never hold up the caller or the loop. Raises OSError if the program
    cannot be started.
    """
    what = what or f"process {argv[0]!r}"
    out = _OutputCapture()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=out.write_fd,
            stderr=out.write_fd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except BaseException:
        out.close()
        raise
    out.child_started()
    try:
        try:
            async with asyncio.timeout(timeout):
                returncode = await proc.wait()
        except TimeoutError:
            _kill_group(proc)
            _reap_later(proc, what)
            return ProcessResult(None, out.tail(), True)
        except BaseException:
            # Cancelled (daemon stopping): never leave the group running unsupervised.
            _kill_group(proc)
            _reap_later(proc, what)
            raise
        # The exit status is known; only pick up output still in flight.
        await out.wait_eof(_EXIT_DRAIN)
        return ProcessResult(returncode, out.tail(), False)
    finally:
        out.close()


# --- the runner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One run of one check: ``output`` is the tail of what it printed, ``error`` why it failed."""

    ok: bool
    output: str
    error: str


async def _run_script(spec: CheckSpec) -> CheckResult:
    argv = ("/bin/sh", "-c", *spec.argv) if spec.shell else spec.argv
    try:
        res = await run_bounded(argv, spec.timeout, what=f"check {spec.name!r}")
    except OSError as e:
        return CheckResult(False, "", f"cannot run {argv[0]!r}: {e.strerror or e}")
    if res.timed_out:
        return CheckResult(False, res.output_tail, f"timed out after {spec.timeout:g}s (killed)")
    rc = res.returncode
    if rc == 0:
        return CheckResult(True, res.output_tail, "")
    if rc is not None and rc < 0:
        try:
            signame = signal.Signals(-rc).name
        except ValueError:
            signame = str(-rc)
        return CheckResult(False, res.output_tail, f"killed by signal {signame}")
    return CheckResult(False, res.output_tail, f"exit status {rc}")


def _http_request(spec: CheckSpec) -> tuple[str, int, bytes]:
    parts = urlsplit(spec.url)
    host = parts.hostname or ""
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "User-Agent: hafailover-check\r\nConnection: close\r\n\r\n"
    )
    return host, parts.port or 80, request.encode("latin-1")


async def _http_exchange(spec: CheckSpec) -> tuple[str, bytes]:
    host, port, request = _http_request(spec)
    reader, writer = await asyncio.open_connection(host, port, limit=_HTTP_MAX_BYTES)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        if spec.expect_body:
            # Read until EOF (HTTP/1.0 without keep-alive: the server closes), capped.
            while len(body) < _HTTP_MAX_BYTES:
                chunk = await reader.read(_HTTP_MAX_BYTES - len(body))
                if not chunk:
                    break
                body += chunk
        return head.decode("latin-1"), body
    finally:
        # No wait_closed(): after a timeout we must not await anything unbounded.
        writer.close()


async def _run_http(spec: CheckSpec) -> CheckResult:
    try:
        async with asyncio.timeout(spec.timeout):
            head, body = await _http_exchange(spec)
    except TimeoutError:
        return CheckResult(False, "", f"GET {spec.url} timed out after {spec.timeout:g}s")
    except asyncio.IncompleteReadError:
        return CheckResult(False, "", f"GET {spec.url}: connection closed before end of headers")
    except asyncio.LimitOverrunError:
        return CheckResult(False, "", f"GET {spec.url}: response headers too large")
    except OSError as e:
        return CheckResult(False, "", f"GET {spec.url} failed: {e.strerror or e}")
    status_line = head.split("\r\n", 1)[0]
    text = body.decode("utf-8", errors="replace")
    output = (status_line + ("\n" + text if text else ""))[-OUTPUT_TAIL_CHARS:]
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        return CheckResult(False, output, f"GET {spec.url}: malformed status line {status_line!r}")
    status = int(fields[1])
    lo, hi = spec.expect_status
    if not lo <= status <= hi:
        return CheckResult(False, output, f"GET {spec.url}: status {status} not in {lo}-{hi}")
    if spec.expect_body and spec.expect_body not in text:
        return CheckResult(False, output, f"GET {spec.url}: body lacks {spec.expect_body!r}")
    return CheckResult(True, output, "")


async def _run_tcp(spec: CheckSpec) -> CheckResult:
    where = f"{spec.host}:{spec.port}"
    try:
        async with asyncio.timeout(spec.timeout):
            _, writer = await asyncio.open_connection(spec.host, spec.port)
    except TimeoutError:
        return CheckResult(False, "", f"connect to {where} timed out after {spec.timeout:g}s")
    except OSError as e:
        return CheckResult(False, "", f"connect to {where} failed: {e.strerror or e}")
    writer.close()
    return CheckResult(True, f"connected to {where}", "")


_RUNNERS = {"script": _run_script, "http": _run_http, "tcp": _run_tcp}


async def run_check(spec: CheckSpec) -> CheckResult:
    """Run one check once, bounded by its timeout (also usable for a CLI "test my checks")."""
    return await _RUNNERS[spec.kind](spec)


class CheckRunner:
    """Runs every check concurrently and reports the aggregate verdict on change."""

    def __init__(
        self,
        specs: Sequence[CheckSpec],
        on_health: Callable[[bool, str], None],
        clock: Callable[[], float] = time.monotonic,
        on_check: Callable[[CheckStatus, float, bool], None] | None = None,
    ) -> None:
        """`on_health`: the aggregate verdict over the critical checks, on change.
        `on_check(status, duration, flipped)`: after every run of any check, with its status
        then, the run's duration and whether its verdict changed."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate check names in {names}")
        self._specs = list(specs)
        self._status = {s.name: CheckStatus(s.name, s.kind, s.critical) for s in specs}
        self._on_health = on_health
        self._on_check = on_check
        self._clock = clock
        self._healthy = True
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def healthy(self) -> bool:
        """The current aggregate verdict (True at start, see the module docstring)."""
        return self._healthy

    async def start(self, *, healthy: bool = True) -> None:
        """Start every check. ``healthy`` is the verdict to start from, and ``on_health`` is only
        called when the verdict moves away from it: a fresh daemon starts healthy (see the module
        docstring); a runner that replaces another on reload starts from the old one's final
        verdict, which is what the engine holds, so a node made unhealthy by the old checks stays
        unhealthy until the new ones pass (not for good, and not healthy at once)."""
        if self._tasks:
            return
        self._stopping = False
        self._healthy = healthy
        for spec in self._specs:
            self._tasks.append(asyncio.create_task(self._loop(spec), name=f"check:{spec.name}"))
        if not healthy and not any(s.critical for s in self._specs):
            self._reevaluate("")  # no critical check is left that could clear the old verdict

    async def stop(self) -> None:
        """Cancel every check; a running script has its process group killed. A check whose
        cancellation got lost on its way (an awaitable that swallows it) still ends: each loop
        also stops at its next turn once stopping."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def statuses(self) -> list[CheckStatus]:
        return list(self._status.values())

    async def _loop(self, spec: CheckSpec) -> None:
        next_start = self._clock()
        while not self._stopping:
            delay = next_start - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            started = self._clock()
            # Start-to-start interval; a run longer than the interval is followed immediately.
            next_start = started + spec.interval
            try:
                outcome = await run_check(spec)
            except Exception as e:  # a bug in a checker must not silently stop checking
                log.exception("check %r crashed", spec.name)
                outcome = CheckResult(False, "", f"internal error: {e!r}")
            if self._stopping:
                return  # stopped meanwhile: no verdict after stop()
            self._record(spec, outcome, self._clock() - started)

    def _record(self, spec: CheckSpec, outcome: CheckResult, duration: float) -> None:
        old = self._status[spec.name]
        n_ok = old.consecutive_ok + 1 if outcome.ok else 0
        n_fail = 0 if outcome.ok else old.consecutive_fail + 1
        ok = old.ok
        if outcome.ok and n_ok >= spec.rise:
            ok = True
        elif not outcome.ok and n_fail >= spec.fall:
            ok = False
        flipped = ok != old.ok
        new = self._status[spec.name] = replace(
            old,
            ok=ok,
            last_duration=duration,
            output_tail=outcome.output,
            last_change_wall=time.time() if flipped else old.last_change_wall,
            consecutive_ok=n_ok,
            consecutive_fail=n_fail,
            last_error=outcome.error,
        )
        if self._on_check is not None:
            try:
                self._on_check(new, duration, flipped)
            except Exception:
                log.exception("on_check callback failed")
        if not flipped:
            return
        if ok:
            log.info("check %r passing after %d successes", spec.name, n_ok)
        else:
            log.warning("check %r failing after %d failures: %s", spec.name, n_fail, new.last_error)
        self._reevaluate(recovered=spec.name if ok else "")

    def _reevaluate(self, recovered: str) -> None:
        failing = [st for st in self._status.values() if st.critical and st.ok is False]
        healthy = not failing
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            detail = "all critical checks passing" + (
                f" (check {recovered!r} recovered)" if recovered else ""
            )
        else:
            detail = "; ".join(_describe_failure(st) for st in failing)
        try:
            self._on_health(healthy, detail)
        except Exception:
            log.exception("on_health callback failed")


def _describe_failure(st: CheckStatus) -> str:
    text = f"check {st.name!r} failed {st.consecutive_fail} times: {st.last_error}"
    if st.output_tail.strip():
        text += f"; output: {st.output_tail.strip()}"
    return text


class FakeHealth:
    """HealthPort for daemon tests: the test sets the verdict by hand."""

    def __init__(
        self, on_health: Callable[[bool, str], None] | None = None, healthy: bool = True
    ) -> None:
        self.on_health = on_health
        self._healthy = healthy
        self._statuses: list[CheckStatus] = []
        self.started = False
        self.stopped = False

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def statuses(self) -> list[CheckStatus]:
        return list(self._statuses)

    def set_statuses(self, statuses: Sequence[CheckStatus]) -> None:
        self._statuses = list(statuses)

    def set_verdict(self, healthy: bool, detail: str = "") -> None:
        """Change the verdict; like the real runner, calls on_health only on a change."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if self.on_health is not None:
            self.on_health(healthy, detail)
