"""StateStore (per-group terms and votes) and EventLog on a real filesystem, including crashes in
the middle of a write and the version-1 (single election) file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hafailover.core.actions import PersistentState
from hafailover.core.groups import GroupsState, GroupVote
from hafailover.runtime.store import (
    EventLog,
    FakeEventLog,
    FakeStateStore,
    StateError,
    StatePort,
    StateStore,
)

OLD = PersistentState(term=5, voted_for="n2", maintenance=False)
NEW = PersistentState(term=6, voted_for="n3", maintenance=True)


def temps(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_fresh_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "nonexistent").load() == PersistentState()


def test_round_trip_with_version(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state")  # created on first save
    s.save(OLD)
    assert StateStore(tmp_path / "state").load() == OLD
    s.save(NEW)
    assert s.load() == NEW
    doc = json.loads((tmp_path / "state" / "state.json").read_text())
    assert doc == {
        "version": 2,
        "maintenance": True,
        "groups": {"default": {"term": 6, "voted_for": "n3"}},
    }
    assert temps(tmp_path / "state") == []


WEB_DB = GroupsState(True, {"web": GroupVote(7, "n1"), "db": GroupVote(3, "")})


def test_groups_round_trip_one_file(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    s.save_groups(WEB_DB)
    assert StateStore(tmp_path).load_groups() == WEB_DB
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc == {
        "version": 2,
        "maintenance": True,
        "groups": {"db": {"term": 3, "voted_for": ""}, "web": {"term": 7, "voted_for": "n1"}},
    }
    asyncio.run(s.asave_groups(GroupsState(False, {"web": GroupVote(8, "n2")})))
    assert StateStore(tmp_path).load_groups() == GroupsState(
        False, {"web": GroupVote(8, "n2"), "db": GroupVote(3, "")}
    )


def test_a_group_left_out_keeps_its_vote(tmp_path: Path) -> None:
    """A group removed from the configuration must still remember its vote if it comes back."""
    StateStore(tmp_path).save_groups(WEB_DB)
    s = StateStore(tmp_path)
    assert s.load_groups().votes["db"] == GroupVote(3, "")
    s.save_groups(GroupsState(False, {"web": GroupVote(9, "")}))  # db no longer configured
    assert StateStore(tmp_path).load_groups().votes == {
        "web": GroupVote(9, ""),
        "db": GroupVote(3, ""),
    }
    # Saving without an explicit load first still merges with what is on disk.
    StateStore(tmp_path).save_groups(GroupsState(False, {"app": GroupVote(1, "n1")}))
    assert set(StateStore(tmp_path).load_groups().votes) == {"web", "db", "app"}


def test_a_version_1_file_is_the_default_group_and_is_rewritten_as_version_2(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "term": 5, "voted_for": "n2", "maintenance": true}')
    s = StateStore(tmp_path)
    assert s.load_groups() == GroupsState(True, {"default": GroupVote(5, "n2")})
    assert s.load() == PersistentState(5, "n2", True)
    s.save_groups(GroupsState(True, {"web": GroupVote(1, "")}))
    doc = json.loads(path.read_text())
    assert doc["version"] == 2
    assert doc["groups"] == {
        "default": {"term": 5, "voted_for": "n2"},
        "web": {"term": 1, "voted_for": ""},
    }


def test_single_group_save_keeps_the_other_groups(tmp_path: Path) -> None:
    StateStore(tmp_path).save_groups(WEB_DB)
    s = StateStore(tmp_path)
    s.save(PersistentState(4, "n3", False))
    assert StateStore(tmp_path).load_groups() == GroupsState(
        False, {"web": GroupVote(7, "n1"), "db": GroupVote(3, ""), "default": GroupVote(4, "n3")}
    )


def test_asave(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    asyncio.run(s.asave(NEW))
    assert s.load() == NEW


def test_save_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    StateStore(tmp_path).save(OLD)
    assert synced == ["file", "dir"]


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01garbage",
        b'{"version": 1, "term": 5, "voted_for": "n',  # truncated
        b"",
        b"[1, 2]",
        b'{"version": 1, "term": "5", "voted_for": "n2", "maintenance": false}',
        b'{"version": 1, "term": true, "voted_for": "n2", "maintenance": false}',
        b'{"version": 1, "term": -1, "voted_for": "n2", "maintenance": false}',
        b'{"version": 1, "term": 5, "voted_for": null, "maintenance": false}',
        b'{"version": 1, "term": 5, "voted_for": "n2"}',
        b'{"version": 99, "term": 5, "voted_for": "n2", "maintenance": false}',
        b'{"term": 5, "voted_for": "n2", "maintenance": false}',
        b'{"version": true, "term": 5, "voted_for": "n2", "maintenance": false}',
        b'{"version": 2, "maintenance": false}',
        b'{"version": 2, "maintenance": false, "groups": []}',
        b'{"version": 2, "maintenance": 0, "groups": {}}',
        b'{"version": 2, "maintenance": false, "groups": {"web": 5}}',
        b'{"version": 2, "maintenance": false, "groups": {"web": {"term": 1}}}',
        b'{"version": 2, "maintenance": false, "groups": {"web": {"term": -1, "voted_for": ""}}}',
        b'{"version": 2, "maintenance": false, "groups": {"": {"term": 1, "voted_for": ""}}}',
        b'{"version": 2, "maintenance": false, "groups": {"web": {"term": 1.5, "voted_for": ""}}}',
    ],
)
def test_corrupt_file_raises_never_resets(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as exc:
        StateStore(tmp_path).load()
    message = str(exc.value)
    assert str(path) in message
    assert "version" in message or "refuses to start" in message
    assert path.read_bytes() == content  # evidence left untouched


def test_unreadable_file_raises(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(StateError, match=r"cannot read state file .*state\.json"):
        StateStore(tmp_path).load()


def test_io_error_while_reading_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(tmp_path).save(OLD)

    def broken(self: Path) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", broken)
    with pytest.raises(StateError, match="Input/output error"):
        StateStore(tmp_path).load()


def test_failed_rename_leaves_old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = StateStore(tmp_path)
    s.save(OLD)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StateError, match="No space left"):
        s.save(NEW)
    monkeypatch.undo()
    assert s.load() == OLD
    assert temps(tmp_path) == []


def test_process_killed_between_write_and_rename_leaves_old_state(tmp_path: Path) -> None:
    StateStore(tmp_path).save(OLD)
    # A real crash: the child dies by SIGKILL after the temp file is written and fsynced, at the
    # moment it would rename it into place.
    child = textwrap.dedent(
        f"""
        import os, signal
        from hafailover.core.actions import PersistentState
        from hafailover.runtime import store
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        store.StateStore({str(tmp_path)!r}).save(PersistentState(term=6, voted_for="n3"))
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], timeout=10)
    assert proc.returncode == -9
    leftovers = temps(tmp_path)
    assert len(leftovers) == 1 and b'"term": 6' in leftovers[0].read_bytes()
    assert StateStore(tmp_path).load() == OLD
    assert temps(tmp_path) == []  # load cleans up the crash debris


def test_save_failure_is_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot read state file"):  # to merge with it
        StateStore(tmp_path / "file" / "sub").save(OLD)
    s = StateStore(tmp_path / "later")
    assert s.load() == PersistentState()  # no directory yet: fresh state
    (tmp_path / "later").write_text("")  # now a file is in the way
    with pytest.raises(StateError, match="cannot write state file"):
        s.save(OLD)


def test_corrupt_group_file_names_the_group(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(
        '{"version": 2, "maintenance": false, "groups": {"db": {"term": 1, "voted_for": 3}}}'
    )
    with pytest.raises(StateError, match="bad voted_for of group 'db' 3"):
        StateStore(tmp_path).load_groups()


def test_fake_state_store() -> None:
    fake = FakeStateStore(OLD)
    port: StatePort = fake
    assert port.load() == OLD
    fake.fail_saves = 1
    with pytest.raises(StateError):
        port.save(NEW)
    asyncio.run(port.asave(NEW))
    assert fake.saves == [NEW] and port.load() == NEW
    fake.fail_saves = 1
    with pytest.raises(StateError):
        port.save_groups(WEB_DB)
    asyncio.run(port.asave_groups(WEB_DB))
    assert fake.group_saves == [WEB_DB]
    assert port.load_groups() == GroupsState(True, {**WEB_DB.votes, "default": GroupVote(6, "n3")})


def test_event_log_append_read(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "d")
    assert log.read(10) == []
    for i in range(5):
        log.append({"seq": i, "reason": "elected"})
    assert [e["seq"] for e in log.read(3)] == [2, 3, 4]
    assert [e["seq"] for e in EventLog(tmp_path / "d").read(100)] == [0, 1, 2, 3, 4]
    assert log.read(0) == []


def test_event_log_is_bounded_keeps_newest(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_entries=10)
    for i in range(100):
        log.append({"seq": i})
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        assert len(lines) <= 12  # max_entries + 25% slack
    assert [e["seq"] for e in log.read(10)] == list(range(90, 100))
    # A new instance on the same file keeps the bound too.
    log2 = EventLog(tmp_path, max_entries=10)
    for i in range(100, 120):
        log2.append({"seq": i})
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) <= 12
    assert [e["seq"] for e in log2.read(10)] == list(range(110, 120))
    assert temps(tmp_path) == []


def test_event_log_tolerates_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq": 0}\n{"seq": 1}\n{"seq": 2, "rea')  # crash mid-append
    log = EventLog(tmp_path)
    assert log.read(10) == [{"seq": 0}, {"seq": 1}]
    log.append({"seq": 3})
    assert log.read(10) == [{"seq": 0}, {"seq": 1}, {"seq": 3}]


def test_event_log_serialises_odd_values(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.append({"path": tmp_path, "n": 1.5})
    assert log.read(1) == [{"path": str(tmp_path), "n": 1.5}]


def test_event_log_write_failure_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    EventLog(tmp_path / "file").append({"x": 1})  # parent is a file: cannot write
    assert any("cannot append" in r.getMessage() for r in caplog.records)


def test_fake_event_log() -> None:
    fake = FakeEventLog()
    fake.append({"a": 1})
    fake.append({"a": 2})
    assert fake.read(1) == [{"a": 2}]


def test_event_log_kept_open_still_follows_a_removed_or_rotated_file(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_entries=2)
    log.append({"n": 1})
    log.path.unlink()  # an operator cleaning up, or logrotate without copytruncate
    log.append({"n": 2})
    assert [e["n"] for e in log.read()] == [2]
    for n in range(3, 7):  # past the rotation limit (max_entries + a quarter, at least 1)
        log.append({"n": n})
    assert [e["n"] for e in log.read()][-1] == 6
    assert len(log.read()) <= 3
