"""Durable state: the term/vote file and the bounded event history.

``StateStore`` holds what the protocol needs to survive a restart: for every VIP group its
election term and vote, and the node's maintenance flag (``GroupsState``). Losing or resetting
it could let this node vote twice in one term of a group - two holders of that group's VIPs -
so an unreadable or corrupt file is a hard error (``StateError``), never a silent fresh start.
Only a *missing* file means "never ran here": fresh state.

Writes are atomic and durable: a temp file in the same directory, flushed and fsynced, renamed
over the old file, then the directory fsynced so the rename itself survives power loss. A crash at
any point leaves either the old or the new file, never a mix. All groups live in one file, so the
``Persist`` actions of every group in one step cost one write (see ``hafailover.core.groups``).

File format, version 2 (written since VIP groups)::

    {"version": 2, "maintenance": false,
     "groups": {"web": {"term": 7, "voted_for": "node1"}, "db": {"term": 3, "voted_for": ""}}}

A version-1 file (``{"version": 1, "term", "voted_for", "maintenance"}``, one election) is read
as the group ``default`` - the group of a configuration without ``groups:`` - and rewritten as
version 2 at the next save; a hafailover older than groups then refuses the new file with a
clear version message rather than guess. A group that leaves the configuration keeps its entry:
if it comes back it must remember the votes it cast in terms its peers may still be in.

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
from typing import Any, Protocol, TextIO

from hafailover.core.actions import PersistentState
from hafailover.core.groups import DEFAULT_GROUP, GroupsState, GroupVote
from hafailover.errors import LocalError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
STATE_VERSION = 2
_MAX_GROUP = 64  # bytes of a group name, as on the wire


class StateError(LocalError):
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

    def load_groups(self) -> GroupsState: ...

    def save_groups(self, state: GroupsState) -> None: ...

    async def asave_groups(self, state: GroupsState) -> None: ...


def _merge(known: GroupsState, new: GroupsState) -> GroupsState:
    """``new`` over ``known``: groups ``new`` does not mention keep their last saved vote."""
    return GroupsState(new.maintenance, {**known.votes, **new.votes})


def _single(state: GroupsState) -> PersistentState:
    return state.for_group(DEFAULT_GROUP)


def _grouped(known: GroupsState, state: PersistentState) -> GroupsState:
    vote = {DEFAULT_GROUP: GroupVote(state.term, state.voted_for)}
    return _merge(known, GroupsState(state.maintenance, vote))


class StateStore:
    """``<state_dir>/state.json``, the format in the module docstring.

    ``load_groups``/``save_groups`` are the interface of a multi-group node; ``load``/``save``
    read and write the group ``default`` alone (a single-group node), keeping the others."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self._known: GroupsState | None = None

    def _corrupt(self, problem: str) -> StateError:
        return StateError(
            f"state file {self.path} is {problem}. It records this node's election terms and "
            "votes; starting from scratch could let this node vote twice in one term, so "
            "hafailover refuses to start. Restore the file from a backup, or - only while the "
            "other nodes are up and agree on a leader - move it aside and start again (this node "
            "will then rejoin as a follower at the cluster's current terms)."
        )

    def load(self) -> PersistentState:
        """The group ``default``; see ``load_groups``."""
        return _single(self.load_groups())

    def save(self, state: PersistentState) -> None:
        """Write ``state`` as the group ``default`` (the other groups are kept); see
        ``save_groups``."""
        self.save_groups(_grouped(self._current(), state))

    async def asave(self, state: PersistentState) -> None:
        await asyncio.to_thread(self.save, state)

    def load_groups(self) -> GroupsState:
        """Read the state; a missing file is fresh state, anything unusable raises StateError."""
        self._remove_stale_temps()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._known = GroupsState()
            return self._known
        except OSError as e:
            raise StateError(
                f"cannot read state file {self.path}: {e.strerror or e}. Fix its permissions or "
                "the storage under it; hafailover will not start without its terms and votes."
            ) from e
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(f"corrupt (not valid JSON: {e})") from e
        if not isinstance(doc, dict):
            raise self._corrupt("corrupt (not a JSON object)")
        version = doc.get("version")
        if isinstance(version, bool):  # an int subclass: `true` is no version
            version = repr(version)
        if version == 1:
            state = GroupsState(
                self._flag(doc.get("maintenance")), {DEFAULT_GROUP: self._vote(doc, "")}
            )
        elif version == STATE_VERSION:
            groups = doc.get("groups")
            if not isinstance(groups, dict):
                raise self._corrupt(f"corrupt (bad groups {groups!r})")
            votes = {self._group(g): self._vote(v, f" of group {g!r}") for g, v in groups.items()}
            state = GroupsState(self._flag(doc.get("maintenance")), votes)
        else:
            raise StateError(
                f"state file {self.path} has version {version!r}; this hafailover understands "
                f"versions 1 and {STATE_VERSION}. Run the hafailover version that wrote it, or "
                "restore a compatible file."
            )
        self._known = state
        return state

    def _flag(self, maintenance: object) -> bool:
        if not isinstance(maintenance, bool):
            raise self._corrupt(f"corrupt (bad maintenance {maintenance!r})")
        return maintenance

    def _group(self, name: str) -> str:
        if not 1 <= len(name.encode("utf-8", "surrogatepass")) <= _MAX_GROUP:
            raise self._corrupt(f"corrupt (bad group name {name!r})")
        return name

    def _vote(self, doc: object, where: str) -> GroupVote:
        if not isinstance(doc, dict):
            raise self._corrupt(f"corrupt (bad entry{where} {doc!r})")
        term, voted_for = doc.get("term"), doc.get("voted_for")
        # bool is an int subclass; a bool term would be a corrupt file, not term 0/1.
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            raise self._corrupt(f"corrupt (bad term{where} {term!r})")
        if not isinstance(voted_for, str):
            raise self._corrupt(f"corrupt (bad voted_for{where} {voted_for!r})")
        return GroupVote(term, voted_for)

    def _current(self) -> GroupsState:
        return self._known if self._known is not None else self.load_groups()

    def save_groups(self, state: GroupsState) -> None:
        """Write atomically and durably (a few ms for the fsyncs). Groups that ``state`` does
        not name keep their last saved entry. Raises StateError on failure: the caller must then
        not send anything that relies on this state."""
        merged = _merge(self._current(), state)
        doc = {
            "version": STATE_VERSION,
            "maintenance": merged.maintenance,
            "groups": {
                g: {"term": v.term, "voted_for": v.voted_for} for g, v in merged.votes.items()
            },
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
        self._known = merged

    async def asave_groups(self, state: GroupsState) -> None:
        """``save_groups`` in a worker thread, so slow storage cannot stall the loop. Await it
        before executing any action that depends on the state (the core's ordering guarantee)."""
        await asyncio.to_thread(self.save_groups, state)

    def _remove_stale_temps(self) -> None:
        # Left behind only by a crash mid-write; the real file is intact by construction.
        with contextlib.suppress(OSError):
            for stale in self.dir.glob(f".{STATE_FILE}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()


class FakeStateStore:
    """StatePort for daemon tests: in memory; ``fail_saves`` makes the next saves raise."""

    def __init__(self, state: PersistentState | GroupsState | None = None) -> None:
        if isinstance(state, PersistentState):
            state = _grouped(GroupsState(), state)
        self.groups = state if state is not None else GroupsState()
        self.saves: list[PersistentState] = []
        self.group_saves: list[GroupsState] = []
        self.fail_saves = 0

    @property
    def state(self) -> PersistentState:
        return _single(self.groups)

    def load(self) -> PersistentState:
        return self.state

    def save(self, state: PersistentState) -> None:
        self._fail()
        self.groups = _grouped(self.groups, state)
        self.saves.append(state)

    async def asave(self, state: PersistentState) -> None:
        self.save(state)

    def load_groups(self) -> GroupsState:
        return self.groups

    def save_groups(self, state: GroupsState) -> None:
        self._fail()
        self.groups = _merge(self.groups, state)
        self.group_saves.append(state)

    async def asave_groups(self, state: GroupsState) -> None:
        self.save_groups(state)

    def _fail(self) -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            raise StateError("fake: save failed")


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
        # Kept open between appends (line-buffered: each entry is one write): opening and
        # closing the file for every entry cost three times the write, and an election of
        # hundreds of groups appends thousands of entries.
        self._file: TextIO | None = None

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
            f = self._file
            if f is None or os.fstat(f.fileno()).st_nlink == 0:  # removed behind our back
                self._close()
                f = self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            f.write(prefix + line)
            self._needs_newline = False
            self._count += 1
            if self._count > self._limit:
                self._rotate()
        except OSError as e:
            self._close()
            self._count = None  # rescan next time; the file may have changed under us
            log.warning("cannot append to event log %s: %s", self.path, e.strerror or e)

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _rotate(self) -> None:
        self._close()  # the file is replaced: the next append opens the new one
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
