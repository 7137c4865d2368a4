"""Logging: journal detection, structured decision fields, rate limiting."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafailover.core.actions import Decision
from hafailover.core.reasons import Reason, Role
from hafailover.runtime.logs import (
    CompactFormatter,
    RateLimitedLogger,
    journal_stream_matches,
    log_decision,
    printable,
    setup_logging,
)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def stderr_journal_stream() -> str:
    st = os.fstat(2)
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_matching(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert journal_stream_matches(f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        # Inherited variable but our fd points elsewhere: not the journal.
        assert not journal_stream_matches(
            f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        )
        assert not journal_stream_matches(f.fileno(), {"JOURNAL_STREAM": "junk"})
        assert not journal_stream_matches(f.fileno(), {})


def test_journal_handler_with_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    from systemd.journal import JournalHandler

    monkeypatch.setenv("JOURNAL_STREAM", stderr_journal_stream())
    handler = setup_logging("debug", "n1")
    assert isinstance(handler, JournalHandler)
    sent: list[tuple[str, dict[str, Any]]] = []

    def send(message: str, /, **fields: Any) -> None:
        sent.append((message, fields))

    handler.send = send
    decision = Decision(Reason.ELECTED, Role.LEADER, 7, "n1", {"votes": 2})
    log_decision(logging.getLogger("hafailover.core"), decision)
    [(message, fields)] = sent
    assert "CODE_ARGS" not in fields
    assert message == "elected: role=leader term=7 leader=n1 votes=2"
    # Every field of ours carries the application's prefix (journalctl HAFAILOVER_REASON=...).
    assert fields["HAFAILOVER_REASON"] == "elected" and fields["HAFAILOVER_ROLE"] == "leader"
    assert fields["HAFAILOVER_TERM"] == 7 and fields["HAFAILOVER_LEADER"] == "n1"
    assert fields["HAFAILOVER_DETAIL_VOTES"] == 2
    assert fields["HAFAILOVER_NODE"] == "n1" and fields["SYSLOG_IDENTIFIER"] == "hafailover"
    assert "HAFAILOVER_GROUP" not in fields  # this decision names no group
    # The unprefixed names of earlier versions are gone.
    assert not {"REASON", "ROLE", "TERM", "LEADER", "NODE", "DETAIL_VOTES"} & set(fields)
    sent.clear()
    log_decision(logging.getLogger("hafailover.core"),
                 {"reason": "elected", "role": "leader", "term": 8, "leader": "n1",
                  "group": "web", "detail": {}})
    [(message, fields)] = sent
    assert fields["HAFAILOVER_GROUP"] == "web"
    assert message == "elected: group=web role=leader term=8 leader=n1"
    assert logging.getLogger().level == logging.DEBUG


def test_stderr_when_not_under_journald(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    handler = setup_logging("info", "n2")
    assert type(handler) is logging.StreamHandler
    log_decision(
        logging.getLogger("hafailover.core"),
        {"reason": "lease-expired", "role": "follower", "term": 3, "leader": "", "detail": {}},
    )
    logging.getLogger("hafailover.runtime.checks").debug("hidden at info level")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert " n2 INFO core: lease-expired: role=follower term=3 leader=-\n" in err


def test_stderr_when_systemd_python_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", stderr_journal_stream())
    monkeypatch.setitem(sys.modules, "systemd.journal", None)  # import now fails
    assert type(setup_logging("info", "n1")) is logging.StreamHandler


def test_setup_twice_replaces_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    first = setup_logging("info", "n1")
    second = setup_logging("warning", "n1")
    root = logging.getLogger()
    assert second in root.handlers and first not in root.handlers
    assert root.level == logging.WARNING


def test_bad_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", "n1")


def test_compact_format_includes_exceptions() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "hafailover.net", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    text = CompactFormatter("n3").format(record)
    assert " n3 ERROR net: failed x\nTraceback" in text and "RuntimeError: boom" in text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    rl = RateLimitedLogger(logging.getLogger("t"), burst=3, interval=10, clock=clock)
    emitted = [rl.warning("bad-mac:10.0.0.2", "drop from %s", "10.0.0.2") for _ in range(5)]
    assert emitted == [True, True, True, False, False]
    assert rl.suppressed("bad-mac:10.0.0.2") == 2
    assert rl.info("other", "independent key")  # separate budget
    clock.now += 10
    assert rl.warning("bad-mac:10.0.0.2", "drop from %s", "10.0.0.2")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["drop from 10.0.0.2"] * 3
    assert messages[-1] == (
        "drop from 10.0.0.2 (2 similar messages suppressed in the previous 10s)"
    )
    assert rl.total_suppressed == 2


def test_rate_limited_flush_reports_finished_windows(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLogger(logging.getLogger("t"), burst=1, interval=5, clock=clock)
    for _ in range(4):
        rl.warning("k", "drop")
    rl.flush()  # window still open: nothing yet
    assert [r.getMessage() for r in caplog.records] == ["drop"]
    clock.now += 5
    rl.flush()
    assert caplog.records[-1].getMessage() == "k: 3 similar messages suppressed in 5s"
    assert rl.suppressed("k") == 0


def test_rate_limited_key_count_is_bounded() -> None:
    clock = Clock()
    rl = RateLimitedLogger(logging.getLogger("t"), burst=1, interval=60, clock=clock, max_keys=4)
    for i in range(100):
        rl.debug(f"src{i}", "drop")
    assert len(rl._windows) <= 4
    assert rl.suppressed("src99") == 0 and not rl.debug("src99", "again")


# --------------------------------------------------------------------------- log injection

FORGED = "node2\n12:00:00.000 n1 INFO core: elected: role=leader term=99 leader=evil"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("node2", "node2"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[2J\x00\x7f\x85", "\\x1b[2J\\x00\\x7f\\x85"),
        ("x\u2028y\u202ez", "x\\u2028y\\u202ez"),
        ("back\\n", "back\\\\n"),  # a literal backslash-n cannot pass for an escaped newline
        ("n\u00e9ud", "n\u00e9ud"),  # printable non-ASCII stays readable
    ],
)
def test_printable_escapes_control_characters(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_cuts_long_values() -> None:
    assert printable("x" * 300, limit=10) == "x" * 10 + "...(+290 characters)"


def test_decision_detail_from_a_client_cannot_forge_a_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info", "n1")
    decision = Decision(Reason.TARGET_UNKNOWN, Role.LEADER, 7, "n1",
                        {"target": FORGED, "refused": "switchover"})
    log_decision(logging.getLogger("hafailover.core"), decision)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\n12:00" not in err
    assert "target=node2\\n12:00:00.000 n1 INFO core: elected" in err


def test_rate_limited_logger_escapes_its_arguments(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rl = RateLimitedLogger(logging.getLogger("t"), burst=3, interval=10, clock=Clock())
    rl.warning("k", "dropped packet from %s: %s (%d bytes)", FORGED, "bad\x1bmac", 12)
    [message] = [r.getMessage() for r in caplog.records]
    assert "\n" not in message and "\x1b" not in message
    assert message.endswith("leader=evil: bad\\x1bmac (12 bytes)")
