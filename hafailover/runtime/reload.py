"""Reading the configuration for a SIGHUP reload, off the event loop, bounded in time and memory.

Parsing a file runs Python code for as long as the file makes it: on the event loop that is a
stall (heartbeats and lease timing stop; a blocked leader keeps its VIP while the others elect a
new one), and a worker thread would hold the GIL the same way. So the file is read and parsed by
a child process (`python -c ... child_main`): it runs at a lower priority under an address-space
limit (`RELOAD_MEMORY_BYTES`) and a CPU-time limit for the parse (`RELOAD_CPU_S`; CPU time, so a
busy machine does not make a normal file fail), is killed if it has not answered after
`RELOAD_TIMEOUT_S` (a file on a hung mount), and sends back the parsed `LoadedConfig` pickled on
its stdout (at most `MAX_RESULT_BYTES`). The loop only waits on pipes, so it keeps its timing
throughout; the result comes back to it as one event.

`Reloader` is what the daemon's SIGHUP handler drives: one reload at a time; a SIGHUP during a
reload reads the file once more when that one ends (the latest edit wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hafailover.config import ConfigError, LoadedConfig, load_config
from hafailover.errors import LocalError
from hafailover.text import printable

log = logging.getLogger("hafailover.reload")

# A real configuration parses in well under a second of CPU time.
RELOAD_CPU_S: Final = 5.0
# Wall-clock bound on the whole reload (start-up included), for a reader that hangs.
RELOAD_TIMEOUT_S: Final = 30.0
# The child's address-space limit: far above a real configuration (~50 MiB with the runtime).
RELOAD_MEMORY_BYTES: Final = 512 * 1024 * 1024
# The pickled result; a real configuration's is a few KiB, and unpickling it runs in the daemon.
MAX_RESULT_BYTES: Final = 256 * 1024
# What is kept of the child's stderr for the log (a traceback's tail).
MAX_STDERR_BYTES: Final = 2048
# The loader's problems as logged: the first few say what is wrong.
MAX_PROBLEM_TEXT: Final = 4096

_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from hafailover.runtime.reload import child_main; child_main(sys.argv[2:])"
)


class ReloadError(LocalError):
    """The reload is refused; the message is one sentence for the log (then the loader's list)."""


def _package_root() -> str:
    # The directory holding the `hafailover` package: the child imports this very code.
    return str(Path(__file__).resolve().parents[2])


async def load_config_off_loop(
    path: Path,
    *,
    cpu_seconds: float = RELOAD_CPU_S,
    timeout: float = RELOAD_TIMEOUT_S,
    memory: int = RELOAD_MEMORY_BYTES,
) -> LoadedConfig:
    """Read and validate `path` in a child process; ReloadError says why if that fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            _package_root(),
            os.fspath(path),
            str(memory),
            str(cpu_seconds),
            str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group: a signal meant for the daemon's group (a second SIGHUP,
            # Ctrl-C) does not kill the reader; the daemon kills it when it gives up on it.
            start_new_session=True,
        )
    except OSError as e:
        raise ReloadError(f"cannot start the configuration reader: {e.strerror or e}") from e
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr

    def too_large() -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # no point in reading the rest

    try:
        async with asyncio.timeout(timeout):
            (out, overflow), (err, _) = await asyncio.gather(
                _read_capped(stdout, MAX_RESULT_BYTES, too_large),
                _read_capped(stderr, MAX_STDERR_BYTES, lambda: None),
            )
            status = await proc.wait()
    except TimeoutError:
        raise ReloadError(
            f"reading {path} did not finish within {timeout:g}s (the limit): is the file far "
            "larger than it should be, or on a mount that hangs?"
        ) from None
    finally:
        if proc.returncode is None:  # timed out, or the daemon is stopping
            await _kill(proc, stdout, stderr)
    if overflow:
        raise ReloadError(
            f"the parsed configuration is larger than {MAX_RESULT_BYTES // 1024} KiB (the "
            "limit; a real one is a few KiB): is the file far larger than it should be?"
        )
    if status != 0 or not out:
        raise ReloadError(_child_failure(path, status, err, memory, cpu_seconds))
    # Unpickled in a thread: bounded in size, but the loop need not wait for it either.
    verdict, value = await asyncio.to_thread(pickle.loads, out)
    if verdict == "ok":
        assert isinstance(value, LoadedConfig)
        return value
    if verdict == "memory":
        raise ReloadError(
            f"reading {path} needed more than {memory // (1024 * 1024)} MiB (the limit): "
            "is the file far larger than it should be?"
        )
    text = str(value)
    if len(text) > MAX_PROBLEM_TEXT:
        text = text[:MAX_PROBLEM_TEXT] + "\n... (more problems not shown)"
    raise ReloadError(f"configuration invalid:\n{text}")


async def _read_capped(
    stream: asyncio.StreamReader, cap: int, overflow: Callable[[], None]
) -> tuple[bytes, bool]:
    """The first `cap` bytes `stream` delivers, and whether there were more; reads to the end
    regardless (calling `overflow` once), because asyncio reports a child's exit only after its
    pipes are closed and read: a pipe left full would make `wait()` hang."""
    data = bytearray()
    over = False
    while chunk := await stream.read(65536):
        if not over and len(data) + len(chunk) > cap:
            over = True
            overflow()
        if not over:
            data += chunk
    return bytes(data), over


async def _kill(proc: asyncio.subprocess.Process, *streams: asyncio.StreamReader) -> None:
    """Kill the reader and reap it (its pipes read to the end: see `_read_capped`)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()

    async def drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    try:
        async with asyncio.timeout(5.0):
            await asyncio.gather(*(drain(s) for s in streams))
            await proc.wait()
    except TimeoutError:  # unkillable for now (D state): asyncio reaps it when it exits
        log.warning("the configuration reader (pid %d) does not exit after SIGKILL", proc.pid)


def _child_failure(path: Path, status: int, err: bytes, memory: int, cpu_seconds: float) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if -status in (signal.SIGPROF, signal.SIGXCPU):  # the CPU timer, the rlimit backstop
            return (
                f"reading {path} took more than {cpu_seconds:g}s of CPU time (the limit; a real "
                "configuration takes well under a second): is the file far larger than it "
                "should be?"
            )
        how = f"was killed by {name}"
    else:
        how = f"exited with status {status}"
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
    detail = f" ({printable(tail[0])})" if tail else ""
    if b"MemoryError" in err:
        return (
            f"reading {path} needed more than {memory // (1024 * 1024)} MiB (the limit): is "
            "the file far larger than it should be?"
        )
    return f"the configuration reader for {path} {how}{detail}"


def child_main(args: list[str]) -> None:
    """In the child: limit itself, load the file, write the pickled verdict to stdout."""
    import resource

    path, memory, cpu_seconds, parent = args[0], int(args[1]), float(args[2]), int(args[3])
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.nice(5)  # the daemon, not its reader, gets the CPU when both want it
    # Set after the imports, so that they bound the parse only. The profiling timer counts
    # this process's CPU time; its SIGPROF (not handled) ends the process. RLIMIT_CPU (whole
    # seconds since the start) is a backstop: SIGXCPU, then SIGKILL.
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(usage.ru_utime + usage.ru_stime + cpu_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    result: tuple[str, object]
    try:
        result = ("ok", load_config(path))
    except ConfigError as e:
        # As text: ConfigError's problems do not survive pickling.
        result = ("invalid", str(e))
    except MemoryError:
        result = ("memory", None)
    except RecursionError:
        result = ("invalid", f"{path}: the file nests too deeply")
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: a reader whose daemon was killed does not parse on for nobody."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the call took effect
        os._exit(1)


class Reloader:
    """Runs one off-loop reload at a time and hands each result to `apply` on the loop.

    `apply(loaded)` gets the new configuration; `refuse(reason)` the ReloadError's text.
    """

    def __init__(
        self,
        path: Path,
        apply: Callable[[LoadedConfig], None],
        refuse: Callable[[str], None],
        *,
        cpu_seconds: float = RELOAD_CPU_S,
        timeout: float = RELOAD_TIMEOUT_S,
        memory: int = RELOAD_MEMORY_BYTES,
    ) -> None:
        self.path = path
        self._apply = apply
        self._refuse = refuse
        self._cpu_seconds, self._timeout, self._memory = cpu_seconds, timeout, memory
        self._task: asyncio.Task[None] | None = None
        self._again = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def request(self) -> None:
        """SIGHUP: start a reload, or read the file once more when the running one ends."""
        if self.running:
            if not self._again:
                log.info("reload already running; %s will be read again when it ends", self.path)
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait(self) -> None:
        """Until no reload runs (tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def cancel(self) -> None:
        """Stop a running reload (its child is killed) and forget a pending one."""
        self._again = False
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._again = False
            log.info("reloading %s", self.path)
            try:
                loaded = await load_config_off_loop(
                    self.path,
                    cpu_seconds=self._cpu_seconds,
                    timeout=self._timeout,
                    memory=self._memory,
                )
                if self._again:  # edited again meanwhile: this result is already stale
                    continue
                self._apply(loaded)
            except ReloadError as e:
                self._refuse(str(e))
            except Exception:  # a bug here must not end in "Task exception never retrieved"
                log.exception("reload of %s failed", self.path)
            if not self._again:
                return
