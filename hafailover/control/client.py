"""The CLI's side of the control socket: plain blocking sockets, no asyncio.

The CLI makes one short request at a time, so a synchronous client keeps it simple and fast to
start. Failures are split in two: `DaemonUnreachable` (no daemon to talk to: the CLI exits 3)
and `ControlError` (the daemon answered with an error).

Switchover and maintenance are answered only once they have been carried out or refused, by
this node or by the peer the request was forwarded to; the daemon bounds that wait itself (a
few failover timeouts), so the client waits longer (`COMMAND_TIMEOUT`) and reports a missing
answer as `CommandUnanswered`: the outcome is unknown, which is a failure (the CLI exits 1).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Final

from hafailover.control.protocol import (
    BAD_RESPONSE,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_response,
    encode_request,
)
from hafailover.errors import HafailoverError, LocalError

DEFAULT_SOCKET: Final = Path("/run/hafailover/control.sock")
# Responses (status with many checks and events) can be larger than requests; this only guards
# against a runaway peer.
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
# How long a switchover/maintenance request may wait for its answer (the daemon's own bound is
# 3 x failover_timeout + 1 s).
COMMAND_TIMEOUT: Final = 60.0


class DaemonUnreachable(LocalError):
    """No daemon answers on the socket; the message says why and what to do."""


class CommandUnanswered(DaemonUnreachable):
    """A command was sent but its outcome never came back within the wait: unknown, so failed."""


class ControlError(HafailoverError):
    """The daemon answered with an error (`code` is a protocol error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ControlClient:
    def __init__(self, path: Path | str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def request(
        self, payload: dict[str, object], answer_within: float | None = None
    ) -> dict[str, object]:
        """Send one request (`"v"` is added if missing) and return the response's `result`.

        `answer_within`: how long to wait for the answer once the request is sent (default: the
        client's timeout); running out of it raises `CommandUnanswered`."""
        data = encode_request({"v": PROTOCOL_VERSION, **payload})
        with self._connect() as sock:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon may already have answered (e.g. `busy`) and closed: read it below.
                pass
            except TimeoutError:
                raise DaemonUnreachable(self._timeout_message()) from None
            unanswered: DaemonUnreachable | None = None
            if answer_within is not None:
                sock.settimeout(answer_within)
                unanswered = CommandUnanswered(
                    f"no outcome for the {payload.get('op')} request within {answer_within:g}s; "
                    "it may still take effect: check `hafailover status`"
                )
            raw = self._read_response(sock, unanswered)
        try:
            return decode_response(raw)
        except ProtocolError as e:
            raise ControlError(e.code, e.message) from None

    # Convenience wrappers: one per op.
    def ping(self) -> dict[str, object]:
        return self.request({"op": "ping"})

    def status(self) -> dict[str, object]:
        return self.request({"op": "status"})

    def events(
        self, limit: int = 50, after: int | None = None, group: str | None = None
    ) -> dict[str, object]:
        payload: dict[str, object] = {"op": "events", "limit": limit}
        if after is not None:
            payload["after"] = after
        if group is not None:
            payload["group"] = group
        return self.request(payload)

    def switchover(self, to: str | None = None, group: str | None = None) -> dict[str, object]:
        payload: dict[str, object] = {"op": "switchover", "to": to}
        if group is not None:
            payload["group"] = group
        return self.request(payload, COMMAND_TIMEOUT)

    def maintenance(self, on: bool, node: str | None = None) -> dict[str, object]:
        return self.request({"op": "maintenance", "on": on, "node": node}, COMMAND_TIMEOUT)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise DaemonUnreachable(
                f"no control socket at {self.path}: the daemon is not running "
                "(check `systemctl status hafailover`) or uses another socket "
                "(pass --socket PATH or -c CONFIG)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonUnreachable(
                f"connection refused on {self.path}: nothing is listening (the daemon is stopped "
                "or was killed and left a stale socket); check `systemctl status hafailover`"
            ) from None
        except PermissionError:
            sock.close()
            raise DaemonUnreachable(
                f"permission denied on {self.path}: run as root or as a member of the "
                "control group (control_group in the configuration)"
            ) from None
        except TimeoutError:
            sock.close()
            raise DaemonUnreachable(self._timeout_message()) from None
        except OSError as e:
            sock.close()
            hint = " (not a socket)" if e.errno == errno.ENOTSOCK else ""
            raise DaemonUnreachable(f"cannot connect to {self.path}{hint}: {e.strerror}") from None
        return sock

    def _read_response(
        self, sock: socket.socket, unanswered: DaemonUnreachable | None = None
    ) -> bytes:
        buf = bytearray()
        try:
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise ControlError(BAD_RESPONSE, "daemon response is too large")
        except TimeoutError:
            raise (unanswered or DaemonUnreachable(self._timeout_message())) from None
        except OSError as e:
            if not buf:
                raise DaemonUnreachable(
                    f"connection to {self.path} failed before an answer: {e}"
                ) from None
        if not buf:
            raise DaemonUnreachable(
                f"the daemon on {self.path} closed the connection without answering"
            )
        return bytes(buf.split(b"\n", 1)[0])

    def _timeout_message(self) -> str:
        return (
            f"the daemon on {self.path} did not answer within {self.timeout:g}s "
            "(overloaded or hung?); check `journalctl -u hafailover`"
        )
