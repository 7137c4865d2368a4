"""The daemon's side of the control socket.

One request per connection: read one newline-terminated JSON line (bounded in size and time),
authorize it, hand it to the daemon's `ControlHandler`, write one response line, close. Nothing a
client sends can take the server down: every failure becomes an error response on that one
connection, and at most `max_connections` connections are served at once.

Idle connections cannot lock operators out: a request line must be complete within
`read_timeout` (2 s), and when every slot is taken a new connection evicts the oldest one that
has not delivered its request yet (that one is answered `busy`). Only when every slot holds a
request being served is a new connection answered `busy`.

What a client sent is logged only through `printable` (no raw control characters), and bad
requests are logged at most once a minute per client user.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from hafailover.control.protocol import (
    BAD_REQUEST,
    BUSY,
    FORBIDDEN,
    INTERNAL,
    MAX_REQUEST_BYTES,
    READ_TIMEOUT_S,
    REFUSED,
    TOO_LARGE,
    ProtocolError,
    Request,
    encode_error,
    encode_result,
    is_mutating,
    op_name,
    parse_request,
)
from hafailover.errors import LocalError
from hafailover.text import printable

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 16
# A client that does not read its response must not hold a slot forever either.
WRITE_TIMEOUT_S: Final = 2.0
# Probing a socket file left over from an earlier daemon.
STALE_PROBE_TIMEOUT_S: Final = 1.0
_PEERCRED: Final = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
# What clients do wrong is logged at most once per client user (and once for evictions) in
# this many seconds, for at most this many users: a looping client cannot flood the log.
CLIENT_LOG_INTERVAL_S: Final = 60.0
CLIENT_LOG_KEYS: Final = 256


class ControlHandler(Protocol):
    """Implemented by the daemon. May raise ProtocolError(REFUSED, ...) (or any other code)."""

    async def handle(self, request: Request) -> dict[str, object]: ...


class ControlServerError(LocalError):
    """The control socket cannot be set up; the message says why and what to do."""


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    # True until the request line is complete: only such connections may be evicted.
    reading: bool = True
    evicted: bool = False
    opened: float = field(default_factory=time.monotonic)


def peer_may_mutate(peer: PeerCredentials, group_gid: int | None) -> bool:
    """Root, the daemon's own user, or a member (primary or supplementary) of the socket group.

    The daemon's own user is allowed because it owns the socket file anyway (this matters only
    for an unprivileged daemon, e.g. in tests). Membership is looked up per request rather than
    cached so that removing someone from the group takes effect without a restart.
    """
    if peer.uid == 0 or peer.uid == os.geteuid():
        return True
    if group_gid is None:
        return False
    if peer.gid == group_gid:
        return True
    try:
        user = pwd.getpwuid(peer.uid)
    except KeyError:
        return False
    if user.pw_gid == group_gid:
        return True
    try:
        group = grp.getgrgid(group_gid)
    except KeyError:
        return False
    return user.pw_name in group.gr_mem


class ControlServer:
    """Serve `handler` on the Unix socket `path`.

    The socket file gets mode 0660 and group `group` so that operators in that group can use the
    CLI without root. If `group` is None, unknown, or cannot be assigned, the file stays 0600
    (root only) and a warning is logged: failing closed is better than opening the socket up.
    """

    def __init__(
        self,
        path: Path,
        group: str | None,
        handler: ControlHandler,
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.group = group
        self._handler = handler
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._server: asyncio.AbstractServer | None = None
        self._group_gid: int | None = None
        self._inode: int | None = None
        # Connections holding a slot, oldest first (a dict keeps insertion order).
        self._slots: dict[_Connection, None] = {}
        self._live: set[_Connection] = set()  # every connection whose task runs (evicted too)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client_logged: dict[str, float] = {}  # key -> when last logged
        self.evictions = 0

    @property
    def group_gid(self) -> int | None:
        """The gid the socket file was given, or None when it is root-only."""
        return self._group_gid

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._server is not None:
            raise ControlServerError("control server already started")
        # 0755: the directory only needs to be traversable; the socket's own mode restricts use.
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as e:
            raise ControlServerError(f"cannot create {self.path.parent}: {e}") from e
        await self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # On Linux the bound file inherits the socket inode's mode (minus umask): set it
            # first so the file is never connectable by everyone between bind() and chmod().
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(str(self.path))
            self._inode = os.stat(self.path).st_ino
            self._apply_permissions()
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        except BaseException as e:
            sock.close()
            if self._inode is not None:  # bound but not serving: leave no dead socket behind
                self.path.unlink(missing_ok=True)
                self._inode = None
            if isinstance(e, OSError):
                raise ControlServerError(f"cannot listen on {self.path}: {e}") from e
            raise
        log.info(
            "control socket listening on %s (mode %o, group %s)",
            self.path,
            stat.S_IMODE(os.stat(self.path).st_mode),
            self.group if self._group_gid is not None else "root only",
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Connections still reading are closed rather than cancelled: they end at once, and
        # Python 3.11's stream protocol logs "Exception in callback" for each cancelled one.
        # Three rounds: a connection accepted just before close() starts its task only now.
        for _ in range(3):
            await asyncio.sleep(0)
            for conn in list(self._live):
                if conn.reading:
                    conn.evicted = True  # nothing more is sent to it
                    conn.writer.transport.abort()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=0.5)
        for task in list(self._tasks):
            task.cancel()  # requests being served (a command waiting for the cluster)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()
        # Only remove the file if it is still ours: a new daemon may already have replaced it.
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _apply_permissions(self) -> None:
        self._group_gid = None
        if self.group is None:
            os.chmod(self.path, 0o600)
            return
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            log.warning(
                "control group %r does not exist: control socket %s stays root-only (0600); "
                "create the group (groupadd %s) and restart to let its members use the CLI",
                self.group,
                self.path,
                self.group,
            )
            os.chmod(self.path, 0o600)
            return
        try:
            os.chown(self.path, -1, gid)
        except PermissionError as e:
            log.warning(
                "cannot give control socket %s to group %r (%s): it stays 0600",
                self.path,
                self.group,
                e,
            )
            os.chmod(self.path, 0o600)
            return
        os.chmod(self.path, 0o660)
        self._group_gid = gid

    async def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlServerError(
                f"{self.path} exists and is not a socket: remove it or set another control_socket"
            )
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path)), STALE_PROBE_TIMEOUT_S
            )
        except ConnectionRefusedError:
            # Nobody listens: a leftover from a daemon that was killed before it could clean up.
            log.info("removing stale control socket %s", self.path)
            self.path.unlink(missing_ok=True)
            return
        except TimeoutError:
            raise ControlServerError(
                f"{self.path} accepts connections but does not answer: another daemon seems to "
                "be running; stop it first"
            ) from None
        except OSError as e:
            raise ControlServerError(f"cannot probe existing socket {self.path}: {e}") from e
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ControlServerError(
            f"another hafailover daemon is answering on {self.path}: stop it first "
            "(systemctl stop hafailover) or configure a different control_socket"
        )

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # so that stop() can cancel it
        conn = _Connection(writer)
        self._live.add(conn)
        try:
            if not self._take_slot(conn):
                # Answer at once instead of queueing: a flood must not delay operators who retry.
                await self._send_and_close(
                    writer, encode_error(BUSY, "too many concurrent control connections; retry")
                )
                return
            try:
                response = await self._serve(conn, reader)
                if conn.evicted:
                    writer.close()  # answered `busy` when it was evicted
                else:
                    await self._send_and_close(writer, response)
            finally:
                self._slots.pop(conn, None)
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception:  # never let one connection's failure reach the event loop
            log.exception("control connection failed")
            writer.close()
        finally:
            self._live.discard(conn)
            self._tasks.discard(task)

    def _take_slot(self, conn: _Connection) -> bool:
        """Give `conn` a slot, evicting the oldest connection still reading if all are taken."""
        if len(self._slots) >= self._max_connections:
            victim = next((c for c in self._slots if c.reading), None)
            if victim is None:
                return False  # every slot serves a complete request: those finish soon
            del self._slots[victim]
            victim.evicted = True
            self.evictions += 1
            # Answered now; its reader then sees end-of-file and its task ends without serving
            # anything, even a request that arrived but was not read yet (the client was told
            # `busy`, so it may retry: carrying the request out too could do it twice).
            victim.writer.write(
                encode_error(
                    BUSY,
                    "closed to make room: every control connection slot was taken and this "
                    "connection had not sent a complete request; retry",
                )
            )
            victim.writer.close()
            self._log_once(
                "evict",
                logging.INFO,
                "control connection slots full: closed one idle for %.1fs to serve a new one",
                time.monotonic() - victim.opened,
            )
        self._slots[conn] = None
        return True

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> bytes:
        request: Request | None = None
        try:
            line = await self._read_request(reader)
            conn.reading = False
            if conn.evicted:
                return b""
            request = parse_request(line)
            if is_mutating(request):
                await self._authorize(conn.writer, request)
            return encode_result(await self._handler.handle(request))
        except ProtocolError as e:
            if not conn.evicted:
                self._log_client_error(conn.writer, e)
            return encode_error(e.code, e.message)
        except Exception as e:
            what = op_name(request) if request is not None else "request"
            log.error(
                "control handler failed on %s: %s\n%s",
                what,
                printable(f"{type(e).__name__}: {e}"),
                "".join(traceback.format_tb(e.__traceback__)).rstrip(),
            )
            return encode_error(INTERNAL, f"{type(e).__name__}: {e} (details in the daemon log)")

    def _log_client_error(self, writer: asyncio.StreamWriter, error: ProtocolError) -> None:
        if error.code in (FORBIDDEN, REFUSED):
            return  # logged where it is decided (refusals are the cluster's decisions)
        peer = _peer_credentials(writer)
        who = f"uid {peer.uid} (pid {peer.pid})" if peer is not None else "an unknown client"
        self._log_once(
            f"uid:{peer.uid if peer is not None else '?'}",
            logging.WARNING,
            "control request from %s answered %s: %s",
            who,
            error.code,
            printable(error.message),
        )

    def _log_once(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log unless `key` was logged within CLIENT_LOG_INTERVAL_S."""
        now = time.monotonic()
        last = self._client_logged.pop(key, None)
        if last is not None and now - last < CLIENT_LOG_INTERVAL_S:
            self._client_logged[key] = last
            return
        while len(self._client_logged) >= CLIENT_LOG_KEYS:
            del self._client_logged[next(iter(self._client_logged))]  # the longest ago
        self._client_logged[key] = now
        log.log(level, msg, *args)

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        buf = bytearray()
        try:
            async with asyncio.timeout(self._read_timeout):
                while True:
                    try:
                        chunk = await reader.read(MAX_REQUEST_BYTES)
                    except OSError as e:  # reset by the client, or closed by an eviction
                        raise ProtocolError(BAD_REQUEST, f"connection lost: {e.strerror}") from None
                    if not chunk:
                        raise ProtocolError(
                            BAD_REQUEST,
                            "connection closed before the request's terminating newline"
                            if buf
                            else "empty request",
                        )
                    newline = chunk.find(b"\n")
                    buf += chunk if newline < 0 else chunk[:newline]
                    if len(buf) > MAX_REQUEST_BYTES:
                        raise ProtocolError(TOO_LARGE, f"request exceeds {MAX_REQUEST_BYTES} bytes")
                    if newline >= 0:
                        # Anything after the newline is ignored: one request per connection.
                        return bytes(buf)
        except TimeoutError:
            raise ProtocolError(
                BAD_REQUEST,
                f"no complete request within {self._read_timeout:g}s "
                "(a request is one JSON object followed by a newline)",
            ) from None

    async def _authorize(self, writer: asyncio.StreamWriter, request: Request) -> None:
        peer = _peer_credentials(writer)
        if peer is None:
            raise ProtocolError(FORBIDDEN, "cannot determine the caller's credentials")
        # pwd/grp may go through NSS (LDAP, sssd) and block: keep it off the event loop.
        allowed = await asyncio.to_thread(peer_may_mutate, peer, self._group_gid)
        if not allowed:
            who = f"uid {peer.uid}"
            scope = f"a member of group {self.group!r}" if self._group_gid is not None else "root"
            log.warning("refused %s from %s (pid %d)", op_name(request), who, peer.pid)
            raise ProtocolError(
                FORBIDDEN, f"{op_name(request)} needs root or {scope}; {who} is neither"
            )

    async def _send_and_close(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the client went away or does not read: nothing more to do for it
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()


def _peer_credentials(writer: asyncio.StreamWriter) -> PeerCredentials | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)
