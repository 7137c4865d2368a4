"""Durable state: the term/vote file and the bounded event history.

``StateStore`` holds what the protocol needs to survive a restart (``PersistentState``: term,
vote, maintenance flag). Losing or resetting it could let this node vote twice in one term - two
leaders holding the VIP - so an unreadable or corrupt file is a hard error (``StateError``), never
a silent fresh start. Only a *missing* file means "never ran here": fresh state.

Writes are atomic and durable: a temp file in the same directory, flushed and fsynced, renamed
over the old file, then the directory fsynced so the rename itself survives power loss. A crash at
any point leaves either the old or the new file, never a mix.

``EventLog`` keeps the recent decision history (``hafailover events``) as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hafailover.core.actions import PersistentState

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
STATE_VERSION = 1


class StateError(Exception):
    """The state file cannot be trusted or written; the message tells the operator what to do."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either old or new content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class StatePort(Protocol):
    def load(self) -> PersistentState: ...

    def save(self, state: PersistentState) -> None: ...

    async def asave(self, state: PersistentState) -> None: ...


class StateStore:
    """``<state_dir>/state.json``: ``{"version": 1, "term": int, "voted_for": str,
    "maintenance": bool}``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def _corrupt(self, problem: str) -> StateError:
        return StateError(
            f"state file {self.path} is {problem}. It records this node's election term and "
            "vote; starting from scratch could let this node vote twice in one term, so "
            "hafailover refuses to start. Restore the file from a backup, or - only while the "
            "other nodes are up and agree on a leader - move it aside and start again (this node "
            "will then rejoin as a follower at the cluster's current term)."
        )

    def load(self) -> PersistentState:
        """Read the state; a missing file is fresh state, anything unusable raises StateError."""
        self._remove_stale_temps()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return PersistentState()
        except OSError as e:
            raise StateError(
                f"cannot read state file {self.path}: {e.strerror or e}. Fix its permissions or "
                "the storage under it; hafailover will not start without its term and vote."
            ) from e
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(f"corrupt (not valid JSON: {e})") from e
        if not isinstance(doc, dict):
            raise self._corrupt("corrupt (not a JSON object)")
        version = doc.get("version")
        if version != STATE_VERSION:
            raise StateError(
                f"state file {self.path} has version {version!r}; this hafailover understands "
                f"version {STATE_VERSION}. Run the hafailover version that wrote it, or restore "
                "a compatible file."
            )
        term, voted_for, maintenance = (
            doc.get("term"),
            doc.get("voted_for"),
            doc.get("maintenance"),
        )
        # bool is an int subclass; a bool term would be a corrupt file, not term 0/1.
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            raise self._corrupt(f"corrupt (bad term {term!r})")
        if not isinstance(voted_for, str):
            raise self._corrupt(f"corrupt (bad voted_for {voted_for!r})")
        if not isinstance(maintenance, bool):
            raise self._corrupt(f"corrupt (bad maintenance {maintenance!r})")
        return PersistentState(term=term, voted_for=voted_for, maintenance=maintenance)

    def save(self, state: PersistentState) -> None:
        """Write atomically and durably (a few ms for the fsyncs). Raises StateError on failure:
        the caller must then not send anything that relies on this state."""
        doc = {
            "version": STATE_VERSION,
            "term": state.term,
            "voted_for": state.voted_for,
            "maintenance": state.maintenance,
        }
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.path, data)
        except OSError as e:
            raise StateError(
                f"cannot write state file {self.path}: {e.strerror or e}. Check free space, "
                "permissions and the storage under it."
            ) from e

    async def asave(self, state: PersistentState) -> None:
        """``save`` in a worker thread, so slow storage cannot stall the loop. Await it before
        executing any action that depends on the state (the core's ordering guarantee)."""
        await asyncio.to_thread(self.save, state)

    def _remove_stale_temps(self) -> None:
        # Left behind only by a crash mid-write; the real file is intact by construction.
        with contextlib.suppress(OSError):
            for stale in self.dir.glob(f".{STATE_FILE}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()


class FakeStateStore:
    """StatePort for daemon tests: in memory; ``fail_saves`` makes the next saves raise."""

    def __init__(self, state: PersistentState | None = None) -> None:
        self.state = state if state is not None else PersistentState()
        self.saves: list[PersistentState] = []
        self.fail_saves = 0

    def load(self) -> PersistentState:
        return self.state

    def save(self, state: PersistentState) -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            raise StateError("fake: save failed")
        self.state = state
        self.saves.append(state)

    async def asave(self, state: PersistentState) -> None:
        self.save(state)


class EventLogPort(Protocol):
    def append(self, entry: Mapping[str, Any]) -> None: ...

    def read(self, limit: int = ...) -> list[dict[str, Any]]: ...


class EventLog:
    """``<state_dir>/events.jsonl``: one JSON object per line, oldest first.

    Appends are plain (no fsync: the history is informational, unlike the vote). The file may
    grow to ``max_entries`` plus a 25% slack before it is rewritten atomically with the newest
    ``max_entries``; the slack keeps that rewrite rare instead of happening on every append. A
    truncated last line (crash mid-append) is skipped when reading and terminated before the next
    append so it cannot swallow the next entry.
    """

    def __init__(self, state_dir: str | os.PathLike[str], max_entries: int = 1000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.dir = Path(state_dir)
        self.path = self.dir / EVENTS_FILE
        self.max_entries = max_entries
        self._limit = max_entries + max(1, max_entries // 4)
        self._count: int | None = None  # lines on disk, learned on first append
        self._needs_newline = False

    def _scan(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        self._count = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        self._needs_newline = bool(data) and not data.endswith(b"\n")

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry; OSErrors are logged, not raised (history must not stop the node)."""
        line = json.dumps(dict(entry), default=str, separators=(",", ":")) + "\n"
        try:
            if self._count is None:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._scan()
            assert self._count is not None
            prefix = "\n" if self._needs_newline else ""
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(prefix + line)
            self._needs_newline = False
            self._count += 1
            if self._count > self._limit:
                self._rotate()
        except OSError as e:
            self._count = None  # rescan next time; the file may have changed under us
            log.warning("cannot append to event log %s: %s", self.path, e.strerror or e)

    def _rotate(self) -> None:
        keep = self._lines()[-self.max_entries :]
        atomic_write(self.path, "".join(line + "\n" for line in keep).encode())
        self._count = len(keep)

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def read(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` well-formed entries, oldest first. Unreadable -> []."""
        try:
            lines = self._lines()
        except OSError as e:
            log.warning("cannot read event log %s: %s", self.path, e.strerror or e)
            return []
        out: list[dict[str, Any]] = []
        for line in reversed(lines):
            if len(out) >= limit:
                break
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(entry, dict):
                out.append(entry)
        out.reverse()
        return out


@dataclass
class FakeEventLog:
    """EventLogPort for daemon tests."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def append(self, entry: Mapping[str, Any]) -> None:
        self.entries.append(dict(entry))

    def read(self, limit: int = 1000) -> list[dict[str, Any]]:
        return self.entries[-limit:] if limit > 0 else []
