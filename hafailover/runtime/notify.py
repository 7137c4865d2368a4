"""Notify hooks: operator programs run when this node's role changes.

``submit`` never blocks the event loop: it puts the event on a queue. One worker runs the hooks
strictly one after another in submission order - never two at once - so a "follower" hook can
never race the "leader" hook that preceded it. Each hook runs in its own process group under a
timeout; on timeout the whole group is SIGKILLed and the next hook runs. Hook failures are
logged, never raised: a broken hook must not take the daemon (and the VIP) down with it.

Hook environment: the daemon's own environment plus

==================  ====================================================================
HAFAILOVER_EVENT    the event kind: leader, follower, unhealthy, maintenance, stop
HAFAILOVER_NODE     this node's name
HAFAILOVER_ROLE     this node's role after the change (follower, candidate, leader, ...)
HAFAILOVER_TERM     the election term (decimal)
HAFAILOVER_LEADER   the current leader's name, empty when none is known
HAFAILOVER_VIPS     the group's floating addresses, space separated ("10.0.0.10/24 fd00::10/64")
HAFAILOVER_GROUP    the VIP group whose role changed (``default`` without ``groups:``)
==================  ====================================================================

Each group has its own notifier (its hooks, the top-level ones with the group's own laid over
them); the daemon drains them all at exit.

The caller supplies the values (``hook_env`` builds them); HAFAILOVER_EVENT is set here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from hafailover.runtime.checks import run_bounded

log = logging.getLogger(__name__)

# Events waiting beyond this are dropped (and logged): a hook hanging until its timeout on every
# flap must not make memory grow without bound.
QUEUE_LIMIT = 256


def hook_env(
    *, node: str, role: str, term: int, leader: str, vips: Sequence[str], group: str = "default"
) -> dict[str, str]:
    """The HAFAILOVER_* variables (all but HAFAILOVER_EVENT) for ``submit``."""
    return {
        "HAFAILOVER_NODE": node,
        "HAFAILOVER_ROLE": str(getattr(role, "value", role)),
        "HAFAILOVER_TERM": str(term),
        "HAFAILOVER_LEADER": leader,
        "HAFAILOVER_VIPS": " ".join(vips),
        "HAFAILOVER_GROUP": group,
    }


def _kind_name(kind: str) -> str:
    # NotifyKind is a str Enum; str() of it would be "NotifyKind.LEADER", not "leader".
    return str(kind.value) if isinstance(kind, Enum) else kind


class NotifierPort(Protocol):
    def submit(self, kind: str, env: Mapping[str, str]) -> None: ...

    async def drain(self, timeout: float) -> bool: ...


class Notifier:
    """Runs ``hooks[kind]`` (an argv, no shell) for each submitted event, in order."""

    def __init__(self, hooks: Mapping[str, Sequence[str]], timeout: float) -> None:
        for kind, argv in hooks.items():
            if not argv:
                raise ValueError(f"notify hook for {kind!r} has an empty command")
        if timeout <= 0:
            raise ValueError("notify hook timeout must be positive")
        self._hooks = {_kind_name(k): tuple(v) for k, v in hooks.items()}
        self._timeout = timeout
        self._queue: asyncio.Queue[tuple[str, tuple[str, ...], dict[str, str]]] = asyncio.Queue(
            QUEUE_LIMIT
        )
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def submit(self, kind: str, env: Mapping[str, str]) -> None:
        """Queue the hook for ``kind`` (no-op if none is configured); call from the loop."""
        name = _kind_name(kind)
        argv = self._hooks.get(name)
        if argv is None:
            return
        if self._closed:
            log.warning("notify hook %r not run: notifier is shutting down", name)
            return
        full_env = {**os.environ, **env, "HAFAILOVER_EVENT": name}
        try:
            self._queue.put_nowait((name, argv, full_env))
        except asyncio.QueueFull:
            log.error("notify hook %r dropped: %d hooks already waiting", name, QUEUE_LIMIT)
            return
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="notify-hooks")

    async def drain(self, timeout: float) -> bool:
        """For shutdown: stop accepting events and wait up to ``timeout`` for queued hooks.

        Returns True if every hook finished; otherwise kills the running one, drops the rest
        (logged) and returns False.
        """
        self._closed = True
        worker = self._worker
        if worker is None:
            return True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except TimeoutError:
            dropped = self._queue.qsize()
            log.error(
                "notify hooks still running after %.1fs at shutdown: killed the running hook, "
                "dropped %d queued",
                timeout,
                dropped,
            )
            return False
        finally:
            worker.cancel()
            # Cancellation kills the running hook's process group and returns promptly.
            await asyncio.gather(worker, return_exceptions=True)
            self._worker = None

    async def _work(self) -> None:
        while True:
            name, argv, env = await self._queue.get()
            try:
                await self._run(name, argv, env)
            except Exception:
                log.exception("notify hook %r crashed", name)
            finally:
                self._queue.task_done()

    async def _run(self, name: str, argv: tuple[str, ...], env: dict[str, str]) -> None:
        started = time.monotonic()
        try:
            res = await run_bounded(argv, self._timeout, env, what=f"notify hook {name!r}")
        except OSError as e:
            log.error("notify hook %r: cannot run %r: %s", name, argv[0], e.strerror or e)
            return
        took = time.monotonic() - started
        output = res.output_tail.strip()
        if res.timed_out:
            log.error(
                "notify hook %r timed out after %gs; process group killed. Output: %s",
                name,
                self._timeout,
                output or "(none)",
            )
        elif res.returncode != 0:
            log.warning(
                "notify hook %r exited with status %s after %.2fs. Output: %s",
                name,
                res.returncode,
                took,
                output or "(none)",
            )
        else:
            log.info("notify hook %r done in %.2fs", name, took)


@dataclass
class FakeNotifier:
    """NotifierPort for daemon tests: records what would have run."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    drained: bool = False

    def submit(self, kind: str, env: Mapping[str, str]) -> None:
        name = _kind_name(kind)
        self.calls.append((name, {**env, "HAFAILOVER_EVENT": name}))

    async def drain(self, timeout: float) -> bool:
        self.drained = True
        return True

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]
