"""sd_notify(3) over a plain AF_UNIX datagram socket (no libsystemd or systemd-python needed).

systemd passes the socket in NOTIFY_SOCKET: a filesystem path, or ``@name`` for the abstract
namespace. With ``WatchdogSec=`` it also sets WATCHDOG_USEC (and WATCHDOG_PID: the watchdog is
ours only if it names this process). Without NOTIFY_SOCKET every method is a no-op, so the daemon
can call them unconditionally. Sends never raise: the supervisor's bookkeeping must not be able to
crash the failover daemon. The first failure is logged as a warning, later ones at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)

_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SdNotifyPort(Protocol):
    def watchdog_interval(self) -> float | None: ...

    def ready(self) -> bool: ...

    def status(self, text: str) -> bool: ...

    def watchdog(self) -> bool: ...

    def stopping(self) -> bool: ...

    def close(self) -> None: ...


class _Messages:
    """The protocol's messages, shared by the real notifier and the fake (both send via notify)."""

    def notify(self, message: str) -> bool:
        raise NotImplementedError

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # The protocol is newline separated; a newline in the text would start a new assignment.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_timeout(self, seconds: float) -> bool:
        """Change the unit's watchdog timeout from now on (systemd >= 239: WATCHDOG_USEC=)."""
        return self.notify(f"WATCHDOG_USEC={round(seconds * 1_000_000)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


class SystemdNotifier(_Messages):
    """Talks to the service manager. Build with ``from_env()``."""

    def __init__(
        self, address: str | None, watchdog_usec: int | None = None, watchdog_pid: int | None = None
    ) -> None:
        self._address: str | None = None
        if address:
            if address.startswith("@"):
                self._address = "\0" + address[1:]
            elif address.startswith("/"):
                self._address = address
            else:
                # e.g. "vsock:..." - valid for systemd, unsupported here; say so once.
                log.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            self._watchdog_usec = None  # the watchdog belongs to another process
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, unset: bool = False
    ) -> SystemdNotifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID (from ``os.environ`` by default).

        ``unset=True`` removes them from ``os.environ`` so that child processes (notify hooks,
        check scripts) cannot talk to systemd on the daemon's behalf.
        """
        env = os.environ if environ is None else environ
        notifier = cls(
            env.get("NOTIFY_SOCKET") or None,
            _parse_int(env.get("WATCHDOG_USEC")),
            _parse_int(env.get("WATCHDOG_PID")),
        )
        if unset:
            for name in _ENV_VARS:
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` calls (half of WatchdogSec), or None if not enabled."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, message: str) -> bool:
        """Send raw ``KEY=value`` lines. Returns True if the datagram was sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: a full receive queue is a failed send, not a wait.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode(errors="replace"), self._address)
            return True
        except OSError as e:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "sd_notify to %r failed: %s", self._printable_address(), e)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _printable_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _parse_int(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        log.warning("ignoring malformed systemd variable value %r", value)
        return None


class FakeSystemdNotifier(_Messages):
    """For daemon tests: records messages instead of sending them."""

    def __init__(self, watchdog_interval: float | None = None) -> None:
        self.messages: list[str] = []
        self._interval = watchdog_interval
        self.enabled = True

    def watchdog_interval(self) -> float | None:
        return self._interval

    def notify(self, message: str) -> bool:
        self.messages.append(message)
        return True

    def close(self) -> None:
        pass
