"""Control socket: the pure protocol, and a real ControlServer on a real Unix socket."""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hafailover.control import protocol as p
from hafailover.control.client import ControlClient, ControlError, DaemonUnreachable
from hafailover.control.server import (
    ControlServer,
    ControlServerError,
    PeerCredentials,
    peer_may_mutate,
)
from tests.nobody import as_nobody

# --------------------------------------------------------------------------- pure protocol


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"v":1,"op":"status"}\n', p.StatusRequest()),
        (b'{"v":1,"op":"ping"}', p.PingRequest()),
        (b'{"v":1,"op":"events"}\n', p.EventsRequest(limit=50, after=None)),
        (b'{"v":1,"op":"events","limit":5,"after":17}\n', p.EventsRequest(5, 17)),
        (b'{"v":1,"op":"events","limit":5,"after":null}\n', p.EventsRequest(5, None)),
        (b'{"v":1,"op":"switchover","to":"node2"}\n', p.SwitchoverRequest("node2")),
        (b'{"v":1,"op":"switchover","to":null}\n', p.SwitchoverRequest(None)),
        (b'{"v":1,"op":"switchover"}\n', p.SwitchoverRequest(None)),
        (b'{"v":1,"op":"maintenance","on":true}\n', p.MaintenanceRequest(True, None)),
        (
            b'{"v":1,"op":"maintenance","on":false,"node":"node3"}\r\n',
            p.MaintenanceRequest(False, "node3"),
        ),
    ],
)
def test_parse_valid(line: bytes, expected: p.Request) -> None:
    assert p.parse_request(line) == expected


BAD_INPUTS: list[tuple[bytes, str]] = [
    (b"hello\n", p.BAD_REQUEST),
    (b"\xff\xfe\n", p.BAD_REQUEST),
    (b"[1, 2]\n", p.BAD_REQUEST),
    (b'"status"\n', p.BAD_REQUEST),
    (b"null\n", p.BAD_REQUEST),
    (b'{"op":"status"}\n', p.BAD_REQUEST),
    (b'{"v":"1","op":"status"}\n', p.BAD_REQUEST),
    (b'{"v":true,"op":"status"}\n', p.BAD_REQUEST),
    (b'{"v":2,"op":"status"}\n', p.UNSUPPORTED_VERSION),
    (b'{"v":0,"op":"status"}\n', p.UNSUPPORTED_VERSION),
    (b'{"v":1}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":7}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"reboot"}\n', p.UNKNOWN_OP),
    (b'{"v":1,"op":"status","verbose":true}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"switchover","target":"node2"}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"switchover","to":5}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"switchover","to":""}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","limit":"5"}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","limit":true}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","limit":0}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","limit":1000000}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","after":-1}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"events","after":1.5}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"maintenance"}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"maintenance","on":"yes"}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"maintenance","on":1}\n', p.BAD_REQUEST),
    (b'{"v":1,"op":"maintenance","on":true,"node":["a"]}\n', p.BAD_REQUEST),
    # Nesting deeper than the decoder's recursion: bad-request, not `internal: RecursionError`.
    (b'{"v":1,"op":"status","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", p.BAD_REQUEST),
    (b"[" * 60_000 + b"\n", p.BAD_REQUEST),
    # Duplicate keys are refused (last-wins would silently change what was asked).
    (b'{"v":1,"op":"switchover","to":"node2","to":null}\n', p.BAD_REQUEST),
    (b'{"v":1,"v":1,"op":"status"}\n', p.BAD_REQUEST),
    # The protocol is UTF-8: UTF-16 and UTF-32 (with or without BOM) are refused.
    ('{"v":1,"op":"status"}'.encode("utf-16"), p.BAD_REQUEST),
    ('{"v":1,"op":"status"}'.encode("utf-16-le"), p.BAD_REQUEST),
    ('{"v":1,"op":"status"}'.encode("utf-16-be"), p.BAD_REQUEST),
    ('{"v":1,"op":"status"}'.encode("utf-32"), p.BAD_REQUEST),
    ('{"v":1,"op":"status"}'.encode("utf-32-le"), p.BAD_REQUEST),
    (b'\xef\xbb\xbf{"v":1,"op":"status"}\n', p.BAD_REQUEST),  # UTF-8 BOM
]


@pytest.mark.parametrize(("line", "code"), BAD_INPUTS)
def test_parse_rejects(line: bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(line)
    assert info.value.code == code
    assert info.value.message


def test_parse_oversize() -> None:
    line = b'{"v":1,"op":"status","x":"' + b"a" * p.MAX_REQUEST_BYTES + b'"}\n'
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(line)
    assert info.value.code == p.TOO_LARGE


@pytest.mark.parametrize(
    "request_",
    [
        p.StatusRequest(),
        p.PingRequest(),
        p.EventsRequest(10, 3),
        p.EventsRequest(),
        p.SwitchoverRequest("n2"),
        p.SwitchoverRequest(),
        p.MaintenanceRequest(True, "n3"),
        p.MaintenanceRequest(False),
    ],
)
def test_request_round_trip(request_: p.Request) -> None:
    line = p.encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.parse_request(line) == request_


def test_mutating_ops() -> None:
    assert p.is_mutating(p.SwitchoverRequest()) and p.is_mutating(p.MaintenanceRequest(True))
    read_only: list[p.Request] = [p.StatusRequest(), p.EventsRequest(), p.PingRequest()]
    assert not any(p.is_mutating(r) for r in read_only)


def test_decode_response() -> None:
    assert p.decode_response(p.encode_result({"a": 1})) == {"a": 1}
    with pytest.raises(p.ProtocolError) as info:
        p.decode_response(p.encode_error(p.REFUSED, "no"))
    assert (info.value.code, info.value.message) == (p.REFUSED, "no")
    for junk in [b"nope", b"[]", b'{"v":1}', b'{"v":2,"ok":true,"result":{}}', b'{"ok":false}']:
        with pytest.raises(p.ProtocolError) as info:
            p.decode_response(junk)
        assert info.value.code == p.BAD_RESPONSE


# --------------------------------------------------------------------------- server helpers


class FakeHandler:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[p.Request] = []

    async def handle(self, request: p.Request) -> dict[str, object]:
        self.seen.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(request, p.SwitchoverRequest) and request.to == "refuse-me":
            raise p.ProtocolError(p.REFUSED, "target-unhealthy: node is failing checks")
        if isinstance(request, p.SwitchoverRequest) and request.to == "crash":
            raise RuntimeError("boom")
        if isinstance(request, p.SwitchoverRequest) and (request.to or "").startswith("crash:"):
            raise KeyError(f"no such node: {request.to}")
        if isinstance(request, p.SwitchoverRequest) and request.to == "unserializable":
            return {"x": object()}
        return {"op": p.op_name(request), "pid": os.getpid()}


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # Not tmp_path: AF_UNIX paths are limited to 107 bytes, and a child running as `nobody` must
    # be able to traverse the directory (pytest's base temp directory is 0700).
    d = Path(tempfile.mkdtemp(prefix="hafctl-"))
    d.chmod(0o755)
    try:
        yield d / "run" / "control.sock"
    finally:
        for f in sorted(d.rglob("*"), reverse=True):
            f.unlink() if not f.is_dir() else f.rmdir()
        d.rmdir()


def own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


@asynccontextmanager
async def serving(
    path: Path, handler: FakeHandler | None = None, group: str | None = None, **kw: Any
) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, group, handler or FakeHandler(), **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def raw(path: Path, data: bytes, *, eof: bool = False, timeout: float = 5.0) -> Any:
    """Send raw bytes, return the decoded response object."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return json.loads(line)
    finally:
        writer.close()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def ok_status(response: Any) -> None:
    assert response == {"v": 1, "ok": True, "result": {"op": "status", "pid": os.getpid()}}


STATUS = b'{"v":1,"op":"status"}\n'

# --------------------------------------------------------------------------- server tests


def test_round_trip_with_blocking_client(sock_path: Path) -> None:
    async def main() -> None:
        handler = FakeHandler()
        async with serving(sock_path, handler):
            client = ControlClient(sock_path, timeout=2)
            assert await asyncio.to_thread(client.status) == {"op": "status", "pid": os.getpid()}
            assert (await asyncio.to_thread(client.ping))["op"] == "ping"
            await asyncio.to_thread(client.events, 7, 3)
            await asyncio.to_thread(client.switchover, "node2")
            await asyncio.to_thread(client.maintenance, True, "node3")
            assert handler.seen[2:] == [
                p.EventsRequest(7, 3),
                p.SwitchoverRequest("node2"),
                p.MaintenanceRequest(True, "node3"),
            ]
            with pytest.raises(ControlError) as info:
                await asyncio.to_thread(client.switchover, "refuse-me")
            assert info.value.code == p.REFUSED and "target-unhealthy" in info.value.message

    run(main)


@pytest.mark.parametrize(("line", "code"), BAD_INPUTS)
def test_bad_input_over_socket_then_next_request_works(
    sock_path: Path, line: bytes, code: str
) -> None:
    async def main() -> None:
        async with serving(sock_path):
            response = await raw(sock_path, line)
            assert response["ok"] is False and response["v"] == 1
            assert response["error"]["code"] == code
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_handler_failures_are_internal_errors(sock_path: Path, caplog: Any) -> None:
    async def main() -> None:
        async with serving(sock_path):
            for target in ["crash", "unserializable"]:
                req = json.dumps({"v": 1, "op": "switchover", "to": target}).encode() + b"\n"
                response = await raw(sock_path, req)
                assert response["error"]["code"] == p.INTERNAL
            ok_status(await raw(sock_path, STATUS))

    with caplog.at_level(logging.ERROR):
        run(main)
    assert "control handler failed" in caplog.text


FORGED = "node2\n12:00:00.000 n1 WARNING control.server: forged\r\x1b[2K\u2028"


def test_client_text_in_the_log_is_escaped(sock_path: Path, caplog: Any) -> None:
    """Log injection: nothing a client sends starts a new line in the daemon's log."""

    async def main() -> None:
        async with serving(sock_path):
            req = json.dumps({"v": 1, "op": "switchover", "to": "crash:" + FORGED}) + "\n"
            assert (await raw(sock_path, req.encode()))["error"]["code"] == p.INTERNAL
            req = json.dumps({"v": 1, "op": FORGED}) + "\n"
            assert (await raw(sock_path, req.encode()))["error"]["code"] == p.UNKNOWN_OP

    with caplog.at_level(logging.INFO):
        run(main)
    messages = [r.getMessage() for r in caplog.records]
    assert any("control handler failed on switchover" in m for m in messages)
    assert any("answered unknown-op" in m for m in messages)
    for m in messages:
        assert not any(c in m for c in "\r\x1b\u2028"), m
        assert "\n12:00:00.000" not in m, m


def test_deep_json_is_a_bad_request_logged_once_per_client(sock_path: Path, caplog: Any) -> None:
    deep = b'{"v":1,"op":"status","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n"

    async def main() -> None:
        async with serving(sock_path):
            for _ in range(5):
                response = await raw(sock_path, deep)
                assert response["error"]["code"] == p.BAD_REQUEST
                assert "nested too deeply" in response["error"]["message"]
            ok_status(await raw(sock_path, STATUS))

    with caplog.at_level(logging.INFO):
        run(main)
    logged = [r for r in caplog.records if r.name == "hafailover.control.server"
              and "control request from" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert "bad-request: request is nested too deeply" in logged[0].getMessage()
    assert "RecursionError" not in caplog.text and "Traceback" not in caplog.text


def test_oversize_request(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path):
            big = b'{"v":1,"op":"status","pad":"' + b"x" * (70 * 1024)
            assert (await raw(sock_path, big))["error"]["code"] == p.TOO_LARGE
            assert (await raw(sock_path, big + b'"}\n'))["error"]["code"] == p.TOO_LARGE
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_eof_before_newline(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path):
            response = await raw(sock_path, b'{"v":1,"op":"status"}', eof=True)
            assert response["error"]["code"] == p.BAD_REQUEST
            assert "newline" in response["error"]["message"]
            assert (await raw(sock_path, b"", eof=True))["error"]["code"] == p.BAD_REQUEST

    run(main)


def test_slowloris_times_out_after_two_seconds(sock_path: Path) -> None:
    assert p.READ_TIMEOUT_S == 2.0

    async def main() -> None:
        async with serving(sock_path):  # default read timeout
            reader, writer = await asyncio.open_unix_connection(str(sock_path))
            start = time.monotonic()
            writer.write(b'{"v":1,')
            await writer.drain()
            # Meanwhile other clients are served without waiting for the slow one.
            t0 = time.monotonic()
            ok_status(await raw(sock_path, STATUS))
            assert time.monotonic() - t0 < 0.5
            line = await asyncio.wait_for(reader.readline(), 5)
            elapsed = time.monotonic() - start
            writer.close()
            response = json.loads(line)
            assert response["error"]["code"] == p.BAD_REQUEST
            assert "2s" in response["error"]["message"]
            assert 1.8 < elapsed < 3.5
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_twenty_idle_connections_do_not_wedge_it(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path, read_timeout=0.5) as server:
            conns = [await asyncio.open_unix_connection(str(sock_path)) for _ in range(20)]
            await asyncio.sleep(0.1)
            # The four oldest idle connections made room for the four newest: answered `busy`.
            evicted = [await asyncio.wait_for(r.readline(), 0.3) for r, _ in conns[:4]]
            assert [json.loads(b)["error"]["code"] for b in evicted] == [p.BUSY] * 4
            assert server.evictions == 4
            # The 16 slot holders time out; then the server is fully available again.
            held = await asyncio.gather(*(asyncio.wait_for(r.readline(), 3) for r, _ in conns[4:]))
            assert [json.loads(b)["error"]["code"] for b in held] == [p.BAD_REQUEST] * 16
            for _, w in conns:
                w.close()
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_status_answers_within_a_second_with_200_idle_connections(sock_path: Path) -> None:
    """Idle clients, ever renewed, cannot lock an operator out (default slots and timeout)."""

    async def main() -> None:
        async with serving(sock_path) as server:
            conns = []
            for i in range(200):
                reader, writer = await asyncio.open_unix_connection(str(sock_path))
                if i % 2:  # half send an unfinished request line, half nothing at all
                    writer.write(b'{"v":1,"op":')
                conns.append((reader, writer))
            await asyncio.sleep(0.2)
            for _ in range(3):
                start = time.monotonic()
                result = await asyncio.to_thread(ControlClient(sock_path, timeout=2).status)
                elapsed = time.monotonic() - start
                assert result == {"op": "status", "pid": os.getpid()}
                assert elapsed < 1.0, f"status took {elapsed:.2f}s"
                # More idle clients keep arriving between the operator's requests.
                conns += [await asyncio.open_unix_connection(str(sock_path)) for _ in range(20)]
            assert server.evictions >= 200
            for _, w in conns:
                w.close()

    run(main)


def test_twenty_concurrent_requests(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path, FakeHandler(delay=0.2)):
            responses = await asyncio.gather(*(raw(sock_path, STATUS) for _ in range(20)))
            ok = [r for r in responses if r["ok"]]
            busy = [r for r in responses if not r["ok"]]
            assert len(ok) >= 16 and all(r["error"]["code"] == p.BUSY for r in busy)
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_busy_client_sees_control_error(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path, FakeHandler(delay=1.0), max_connections=1):
            # The only slot serves a complete request (not idle): nothing to evict.
            in_flight = asyncio.create_task(raw(sock_path, STATUS))
            await asyncio.sleep(0.1)
            with pytest.raises(ControlError) as info:
                await asyncio.to_thread(ControlClient(sock_path, 2).status)
            assert info.value.code == p.BUSY
            ok_status(await in_flight)

    run(main)


def test_socket_mode_and_group(sock_path: Path) -> None:
    async def main() -> None:
        group = own_group()
        async with serving(sock_path, group=group) as server:
            st = os.stat(sock_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == grp.getgrnam(group).gr_gid == server.group_gid
        assert not sock_path.exists()  # stop() removes the file

    run(main)


def test_no_or_unknown_group_stays_root_only(sock_path: Path, caplog: Any) -> None:
    async def main() -> None:
        async with serving(sock_path, group=None) as server:
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
            assert server.group_gid is None
        async with serving(sock_path, group="no-such-group-hafailover") as server:
            assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
            assert server.group_gid is None
            ok_status(await raw(sock_path, STATUS))

    with caplog.at_level(logging.WARNING):
        run(main)
    assert "no-such-group-hafailover" in caplog.text and "0600" in caplog.text


def test_stale_socket_is_removed(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()  # the file stays behind, nobody listens: like a SIGKILLed daemon
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with pytest.raises(DaemonUnreachable, match="connection refused"):
        ControlClient(sock_path, 1).status()

    async def main() -> None:
        async with serving(sock_path):
            ok_status(await raw(sock_path, STATUS))

    run(main)


def test_refuses_when_another_server_answers(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path):
            with pytest.raises(ControlServerError, match="another hafailover daemon"):
                await ControlServer(sock_path, None, FakeHandler()).start()
            ok_status(await raw(sock_path, STATUS))  # the first one is undisturbed

    run(main)


def test_refuses_non_socket_file(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    sock_path.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(ControlServerError, match="not a socket"):
            await ControlServer(sock_path, None, FakeHandler()).start()
        assert sock_path.read_text() == "not a socket"

    run(main)


def test_stop_leaves_a_replaced_socket_alone(sock_path: Path) -> None:
    async def main() -> None:
        server = ControlServer(sock_path, None, FakeHandler())
        await server.start()
        sock_path.unlink()
        sock_path.write_text("someone else's")
        await server.stop()
        assert sock_path.read_text() == "someone else's"

    run(main)


def test_client_socket_missing(sock_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="no control socket"):
        ControlClient(sock_path).status()


def test_client_timeout(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen()  # accepts (in the backlog) but never answers
    try:
        with pytest.raises(DaemonUnreachable, match=r"did not answer within 0\.3s"):
            ControlClient(sock_path, timeout=0.3).status()
    finally:
        listener.close()


# --------------------------------------------------------------------------- credentials


def test_peer_may_mutate(monkeypatch: pytest.MonkeyPatch) -> None:
    class PW:
        pw_name = "alice"
        pw_gid = 500

    class GR:
        gr_mem = ["alice", "bob"]

    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: PW())
    monkeypatch.setattr(grp, "getgrgid", lambda gid: GR())
    assert peer_may_mutate(PeerCredentials(1, 0, 0), None)  # root
    assert peer_may_mutate(PeerCredentials(1, 4242, 4242), None)  # the daemon's own user
    assert not peer_may_mutate(PeerCredentials(1, 1000, 1000), None)  # no group: root only
    assert peer_may_mutate(PeerCredentials(1, 1000, 900), 900)  # effective gid
    assert peer_may_mutate(PeerCredentials(1, 1000, 1000), 500)  # primary group
    assert peer_may_mutate(PeerCredentials(1, 1000, 1000), 777)  # supplementary (gr_mem)
    GR.gr_mem = ["bob"]
    assert not peer_may_mutate(PeerCredentials(1, 1000, 1000), 777)


def _as_nobody(path: Path, requests: list[dict[str, object]]) -> list[str]:
    """Send each request as `nobody` (in a forked child); returns one line per request."""

    def work() -> bytes:
        out = []
        for req in requests:
            try:
                ControlClient(path, timeout=2).request(req)
                out.append("ok")
            except ControlError as e:
                out.append(e.code)
            except DaemonUnreachable as e:
                out.append(f"unreachable: {e}")
        return "\n".join(out).encode()

    return as_nobody(work).decode().split("\n")


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the test drops a forked child to the `nobody` user"
)


@needs_root
def test_forbidden_for_non_group_peer(sock_path: Path) -> None:
    group = own_group()  # root's group: nobody is not a member

    async def main() -> None:
        async with serving(sock_path, group=group):
            # Loosen the file mode (as a careless admin might) so `nobody` can connect at all:
            # the credential check must still stop it from changing anything.
            os.chmod(sock_path, 0o666)
            results = await asyncio.to_thread(
                _as_nobody,
                sock_path,
                [
                    {"op": "status"},
                    {"op": "events", "limit": 5},
                    {"op": "switchover", "to": "node2"},
                    {"op": "maintenance", "on": True, "node": None},
                ],
            )
            assert results == ["ok", "ok", p.FORBIDDEN, p.FORBIDDEN]

    run(main)


@needs_root
def test_permission_denied_is_unreachable_with_hint(sock_path: Path) -> None:
    async def main() -> None:
        async with serving(sock_path, group=own_group()):  # 0660, nobody not in the group
            [result] = await asyncio.to_thread(_as_nobody, sock_path, [{"op": "status"}])
            assert result.startswith("unreachable: permission denied")
            assert "control group" in result

    run(main)
