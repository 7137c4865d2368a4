"""Logging setup: native journal fields under systemd, a compact line format elsewhere.

Under systemd with stderr connected to journald, records go through ``JournalHandler`` so that
structured fields are queryable. They carry the application's prefix (HAFAILOVER_REASON,
HAFAILOVER_ROLE, HAFAILOVER_TERM, HAFAILOVER_LEADER, HAFAILOVER_NODE, HAFAILOVER_GROUP when a
decision names a VIP group, HAFAILOVER_DETAIL_<KEY>), so they neither collide with other units'
fields nor get lost among them: ``journalctl HAFAILOVER_REASON=lease-expired``. Everywhere else
(a terminal, the netns demo where three nodes share one screen, a log file) a compact stderr
line carries the node name.

Decision messages carry every field in the text too, so nothing is lost in either format.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TextIO

from hafailover.core.actions import Decision
from hafailover.text import PRINTABLE_LIMIT, printable

__all__ = [
    "PRINTABLE_LIMIT",
    "CompactFormatter",
    "RateLimitedLogger",
    "journal_stream_matches",
    "log_decision",
    "printable",
    "setup_logging",
]

JOURNAL_IDENTIFIER = "hafailover"
# Prefix of every journal field this application adds.
FIELD_PREFIX = "HAFAILOVER_"
# Marks handlers installed here so setup_logging can be called again (tests, reload).
_OURS = "_hafailover_handler"


def journal_stream_matches(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """True if ``fd`` is the stream systemd connected to journald (JOURNAL_STREAM=dev:ino).

    Checking the device/inode, not just the variable's presence, matters: the variable is
    inherited by children whose stderr may have been redirected elsewhere.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class CompactFormatter(logging.Formatter):
    """``12:00:01.234 n1 WARNING checks: message`` - the node name first, since several nodes
    often share one terminal."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix("hafailover.").removeprefix("runtime.")
        line = (
            f"{when}.{int(record.msecs):03d} {self._node} {record.levelname} {name}: "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _parse_level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (use debug, info, warning or error)")
    return value


def _journal_handler(node: str) -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(
        SYSLOG_IDENTIFIER=JOURNAL_IDENTIFIER, **{f"{FIELD_PREFIX}NODE": node}
    )
    return handler


def setup_logging(level: str, node: str) -> logging.Handler:
    """Configure the root logger once (replacing a previous call's handler); returns the handler.

    Journal when systemd-python is importable and stderr is journald's stream, else stderr.
    Raises ValueError for an unknown level name.
    """
    levelno = _parse_level(level)
    handler = _journal_handler(node) if journal_stream_matches(2) else None
    if handler is None:
        stream_handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stderr)
        stream_handler.setFormatter(CompactFormatter(node))
        handler = stream_handler
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler


def _plain(value: object) -> str | int | float | bool:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool | int | float):
        return value
    # Decision details carry names a peer or a control client chose (a switchover target).
    return printable(value)


def _field_name(key: str) -> str:
    # Journal field names: uppercase letters, digits, underscore; not starting with "_".
    return re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")


def log_decision(
    logger: logging.Logger,
    decision: Decision | Mapping[str, Any],
    level: int = logging.INFO,
) -> None:
    """Log a core Decision (or its dict form: reason, role, term, leader, detail).

    Message: ``lease-expired: role=follower term=7 leader=- missed_ms=1200``. Journal fields:
    HAFAILOVER_REASON, _ROLE, _TERM, _LEADER, _GROUP (if the decision names a group), plus
    HAFAILOVER_DETAIL_<KEY> for each detail entry.
    """
    if isinstance(decision, Decision):
        reason, role, term, leader = decision.reason, decision.role, decision.term, decision.leader
        detail: Mapping[str, Any] = decision.detail
        group = getattr(decision, "group", None)
    else:
        reason, role = decision.get("reason", ""), decision.get("role", "")
        term, leader = decision.get("term", 0), decision.get("leader", "")
        detail = decision.get("detail") or {}
        group = decision.get("group")
    p = FIELD_PREFIX
    fields: dict[str, Any] = {
        f"{p}REASON": _plain(reason),
        f"{p}ROLE": _plain(role),
        f"{p}TERM": _plain(term),
        f"{p}LEADER": _plain(leader),
    }
    parts = [f"role={fields[p + 'ROLE']} term={fields[p + 'TERM']} "
             f"leader={fields[p + 'LEADER'] or '-'}"]
    if group:
        fields[f"{p}GROUP"] = _plain(group)
        parts.insert(0, f"group={fields[p + 'GROUP']}")
    for key, value in detail.items():
        fields[f"{p}DETAIL_{_field_name(str(key))}"] = _plain(value)
        parts.append(f"{key}={_plain(value)}")
    # Pre-formatted with no args: logging skips %-formatting, so a "%" in a value is harmless.
    logger.log(level, f"{fields[p + 'REASON']}: {' '.join(parts)}", extra=fields)


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class RateLimitedLogger:
    """At most ``burst`` messages per key per ``interval`` seconds; the rest are counted.

    For messages an attacker or a broken peer can trigger at packet rate (dropped datagrams):
    the first few per key get through, the count of suppressed ones is reported with the next
    message for that key (or by ``flush()``). At most ``max_keys`` keys are tracked, so keys
    derived from spoofable source addresses cannot grow memory without bound. Arguments other
    than numbers are passed through ``printable`` (the message itself must be a constant).
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 5,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("burst, interval and max_keys must be positive")
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, _Window] = {}
        self.total_suppressed = 0

    def log(self, level: int, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        """Log unless ``key`` is over its budget; returns whether the message was emitted."""
        now = self._clock()
        window = self._windows.get(key)
        carried = 0
        if window is not None and now - window.start >= self.interval:
            carried = window.suppressed
            del self._windows[key]
            window = None
        if window is None:
            self._make_room(now)
            window = self._windows[key] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            self.total_suppressed += 1
            return False
        window.logged += 1
        # Messages logged here are triggered from outside (packets): escape what they carry.
        args = tuple(a if isinstance(a, int | float) else printable(a) for a in args)
        if carried:
            msg += f" ({carried} similar messages suppressed in the previous {self.interval:g}s)"
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def debug(self, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.DEBUG, key, msg, *args, **kwargs)

    def info(self, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args, **kwargs)

    def warning(self, key: str, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def suppressed(self, key: str) -> int:
        """Messages for ``key`` suppressed in its current window."""
        window = self._windows.get(key)
        return window.suppressed if window else 0

    def flush(self) -> None:
        """Report and forget every finished window that suppressed something (call it now and
        then, so a burst that simply stops is still accounted for)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                del self._windows[key]
                if window.suppressed:
                    self.logger.warning(
                        "%s: %d similar messages suppressed in %gs",
                        key,
                        window.suppressed,
                        self.interval,
                    )

    def _make_room(self, now: float) -> None:
        if len(self._windows) < self._max_keys:
            return
        for key, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                del self._windows[key]
        while len(self._windows) >= self._max_keys:
            # Forget the oldest window; its suppressed count stays in total_suppressed.
            del self._windows[next(iter(self._windows))]
