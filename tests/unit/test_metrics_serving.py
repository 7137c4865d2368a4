"""The metrics endpoint's serving: one thread, the family cache, the HTTP edge cases."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from hafailover.runtime import metrics as metrics_mod
from hafailover.runtime.metrics import GroupSnapshot, MetricsServer, MetricsSnapshot

if TYPE_CHECKING:  # only the fixture's type: pytest loads the conftest itself
    from tests.unit.conftest import Clock


def get(
    metrics: MetricsServer, headers: dict[str, str] | None = None
) -> tuple[dict[str, str], bytes]:
    assert metrics.address is not None
    host, port = metrics.address
    request = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
        return dict(reply.headers.items()), reply.read()


def raw(metrics: MetricsServer, request: bytes) -> bytes:
    """Send `request` as is; the whole answer (the server closes the connection)."""
    assert metrics.address is not None
    with socket.create_connection(metrics.address, timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def groups(n: int, term: int, flip: int = -1) -> tuple[GroupSnapshot, ...]:
    return tuple(
        GroupSnapshot(
            f"g{i}", i == flip, i == flip, term, i % 2 == 0, 1000.5 if i == flip else None
        )
        for i in range(n)
    )


def test_every_scrape_is_byte_for_byte_what_prometheus_client_renders_of_the_registry(
    server: MetricsServer, clock: Clock
) -> None:
    """The family cache never serves a stale family: after each kind of change the served text
    equals generate_latest over the whole registry (`render()`, which bypasses the cache)."""
    steps: list[Callable[[], None]] = [
        lambda: server.publish(MetricsSnapshot.build(groups(5, 3))),
        lambda: None,  # nothing changed: every family from the cache
        lambda: server.publish(MetricsSnapshot.build(groups(5, 3, flip=2))),  # a holder moved
        lambda: setattr(clock, "now", clock.now + 0.25),  # the lease and ages only
        lambda: server.publish(MetricsSnapshot.build(groups(5, 4, flip=2))),  # terms
        lambda: server.publish(MetricsSnapshot.build(groups(6, 4, flip=2))),  # a new group
        lambda: server.publish(
            MetricsSnapshot.build(
                groups(6, 4, flip=2),
                checks={"nginx": True},
                peers_heard={"node2": 999.0, "node3": None},
                dropped={"replay": 1},
            )
        ),
        lambda: server.publish(
            MetricsSnapshot.build(
                groups(6, 4, flip=2),
                checks={"nginx": False},
                peers_heard={"node2": 999.5, "node3": None},
                dropped={"replay": 2},
                maintenance=True,
            )
        ),
        lambda: server.observe_transition("g2", "elected"),
        lambda: server.observe_check_duration("nginx", 0.003),
        lambda: server.observe_loop_lag(0.002),
        lambda: server.publish(MetricsSnapshot.build(groups(1, 4))),  # groups went away
    ]
    served: list[bytes] = []
    for step in steps:
        step()
        _, text = get(server)
        assert text == server.render()
        served.append(text)
    assert len(set(served)) == len(served) - 1  # each step but the no-op changed the text


def test_gzip_when_accepted_and_the_text_format_whatever_the_accept_header(
    server: MetricsServer,
) -> None:
    server.publish(MetricsSnapshot.build(groups(3, 1, flip=0)))
    prometheus = {
        "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "Accept-Encoding": "gzip",
    }
    headers, body = get(server, prometheus)
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == server.render()
    assert b"# EOF" not in gzip.decompress(body)
    headers, body = get(server)
    assert "Content-Encoding" not in headers
    assert body == server.render()
    assert int(headers["Content-Length"]) == len(body)


def test_other_requests_get_prometheus_clients_own_answers(server: MetricsServer) -> None:
    server.publish(MetricsSnapshot.build(groups(2, 1), maintenance=True))
    options = raw(server, b"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert options.startswith(b"HTTP/1.0 200 OK\r\n") and b"Allow: OPTIONS,GET\r\n" in options
    post = raw(server, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.0 405 ")
    only = raw(server, b"GET /metrics?name[]=hafailover_build_info HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = only.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert body == (
        b"# HELP hafailover_build_info Always 1; the version label\n"
        b"# TYPE hafailover_build_info gauge\n"
        b'hafailover_build_info{version="9.9.9"} 1.0\n'
    )


def test_malformed_and_oversized_requests_get_400_and_the_endpoint_goes_on(
    server: MetricsServer,
) -> None:
    assert raw(server, b"hello\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw(server, b"GET /metrics SPDY/3\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert raw(server, b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (metrics_mod.MAX_HEAD + 10)
    try:  # answered 400, or reset: closed with the rest of the head unread
        assert raw(server, huge).startswith(b"HTTP/1.0 400 ")
    except ConnectionResetError:
        pass
    get(server)


def test_one_thread_serves_every_scrape(server: MetricsServer) -> None:
    """No thread per scrape: every collect runs in the same thread, started by start()."""
    seen: list[int] = []

    class Spy:
        def collect(self) -> Iterator[Metric]:
            seen.append(threading.get_ident())
            return iter(())

    server.registry.register(Spy())
    seen.clear()  # registering collects once, here
    before = threading.active_count()
    for _ in range(5):
        get(server)
    assert len(seen) == 5 and len(set(seen)) == 1
    assert seen[0] != threading.get_ident()
    assert threading.active_count() == before


def _switches(native_id: int) -> int:
    """The thread's context switches so far: each wake-up is one."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_the_serving_thread_sleeps_while_nobody_scrapes(server: MetricsServer) -> None:
    get(server)
    thread = server._thread
    assert thread is not None and thread.native_id is not None
    before = _switches(thread.native_id)
    time.sleep(1.2)  # prometheus_client's serve_forever polled twice a second
    assert _switches(thread.native_id) == before


def test_a_stalled_client_holds_the_endpoint_for_the_timeout_only_and_never_stop(
    server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_mod, "CLIENT_TIMEOUT", 0.5)
    assert server.address is not None
    with socket.create_connection(server.address, timeout=5) as stalled:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        t0 = time.monotonic()
        get(server)  # served once the stalled one timed out
        assert 0.3 <= time.monotonic() - t0 < 3.0
        stalled.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.1)
        with socket.create_connection(server.address, timeout=5) as second:
            second.sendall(b"GET /metrics HTTP/1.1\r\n")  # in the middle of a request
            time.sleep(0.1)
            t0 = time.monotonic()
            server.stop()
            assert time.monotonic() - t0 < 0.4
    assert server._thread is None


def test_collect_reuses_unchanged_families(clock: Clock) -> None:
    """What the cache relies on: an unchanged snapshot gives the same family objects, a
    changed one new ones; lease and ages are new at each scrape."""
    metrics = MetricsServer(version="1", clock=clock)
    metrics.publish(MetricsSnapshot.build(groups(3, 1, flip=1), checks={"a": True}))

    def families() -> dict[str, Metric]:
        return {f.name: f for f in metrics.registry.collect()}

    first, second = families(), families()
    for name in ("hafailover_group_vip_holder", "hafailover_group_term", "hafailover_check_up"):
        assert first[name] is second[name], name
    lease = "hafailover_group_lease_remaining_seconds"
    assert first[lease] is not second[lease]
    metrics.publish(MetricsSnapshot.build(groups(3, 2, flip=1), checks={"a": True}))
    third = families()
    assert third["hafailover_group_term"] is not second["hafailover_group_term"]
    assert third["hafailover_check_up"] is second["hafailover_check_up"]
    assert isinstance(third["hafailover_group_term"], GaugeMetricFamily)
    assert [s.value for s in third["hafailover_group_term"].samples] == [2.0, 2.0, 2.0]
