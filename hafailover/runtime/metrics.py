"""Prometheus metrics: the daemon's state for a scraper, built with the official prometheus_client.

Threads: the HTTP endpoint is one long-lived daemon thread (`_Server`, a minimal HTTP/1.0
server that serves one request at a time and sleeps while nobody connects), so a slow or hostile
scraper can never hold up the event loop (it can hold the endpoint for `CLIENT_TIMEOUT` s). The
registry and the exposition are prometheus_client's: `generate_latest`, applied family by family
by `_Renderer`, which reuses the bytes of a family that did not change since the previous scrape,
and prometheus_client's WSGI application for any request but a plain GET. That thread never
touches the core or the
runtime's objects: the loop *publishes* an immutable `MetricsSnapshot` and the collector reads
whichever snapshot was published last (one reference read, atomic). With `refresh_on_scrape`
each scrape first asks the loop for a fresh one (`call_soon_threadsafe`) and waits for it at most
`REFRESH_WAIT`: a snapshot is built once per scrape and never when nobody scrapes, and a loop
that does not answer in time (stalled, stopping) leaves the scrape the last one. Times in a
snapshot are `time.monotonic()` instants (the asyncio loop's clock), so ages and remaining
leases are computed at scrape time, not at publish time.

Counters and histograms (transitions, check durations, loop lag) are prometheus_client
`Counter`/`Histogram` objects the loop updates through `observe_*`; their locks are held for
microseconds. The loop lag comes with every lag tick (ten a second), so the loop only appends it to
a buffer: the scrape observes the buffered values into the histogram before collecting it (or the
loop does, once `LAG_BUFFER` values wait, when nobody scrapes). Dropped packets are cumulative
counts the transport keeps anyway: they travel in the snapshot.

`METRICS` is the interface (docs/metrics.md, the alert rules and the dashboard use these names).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import math
import selectors
import socket
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    gzip_accepted,
    make_wsgi_app,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from hafailover.errors import LocalError

__all__ = [
    "CHECK_DURATION_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "METRICS",
    "GroupSnapshot",
    "MetricInfo",
    "MetricsError",
    "MetricsServer",
    "MetricsSnapshot",
]

CHECK_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Loop lags buffered until a scrape (or until this many wait).
LAG_BUFFER = 64
# How long a scrape waits for the loop's fresh snapshot before it reports the last one.
REFRESH_WAIT = 0.25
# A client that stalls mid-request (one socket operation) gives the endpoint back after this.
CLIENT_TIMEOUT = 5.0
# gzip level of a compressed scrape (Prometheus asks for gzip): 1 compresses a 50-group scrape
# 15 KB -> 2 KB in a quarter of level 9's CPU.
GZIP_LEVEL = 1
# The longest request head (request line and headers) the endpoint reads.
MAX_HEAD = 16384

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricInfo(NamedTuple):
    name: str  # as exposed (counters with their _total)
    type: str  # gauge, counter or histogram
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(
        "hafailover_group_vip_holder",
        "gauge",
        ("group",),
        "1 while this node holds the group's VIPs, else 0",
    ),
    MetricInfo(
        "hafailover_group_leader", "gauge", ("group",), "1 while this node leads the group, else 0"
    ),
    MetricInfo("hafailover_group_term", "gauge", ("group",), "The group's current term"),
    MetricInfo(
        "hafailover_group_lease_remaining_seconds",
        "gauge",
        ("group",),
        "The leader's remaining lease on the group; 0 on followers",
    ),
    MetricInfo(
        "hafailover_group_eligible",
        "gauge",
        ("group",),
        "1 if this node may stand for the group (checks, links, maintenance)",
    ),
    MetricInfo(
        "hafailover_transitions_total",
        "counter",
        ("group", "reason"),
        "Decisions that changed this node's role in a group, by reason",
    ),
    MetricInfo("hafailover_check_up", "gauge", ("check",), "1 while the check passes, 0 failing"),
    MetricInfo(
        "hafailover_check_duration_seconds",
        "histogram",
        ("check",),
        "How long each probe of the check took",
    ),
    MetricInfo(
        "hafailover_peer_last_heard_seconds",
        "gauge",
        ("peer",),
        "Seconds since the last valid message from the peer (+Inf: never)",
    ),
    MetricInfo(
        "hafailover_packets_dropped_total",
        "counter",
        ("reason",),
        "Datagrams rejected (bad HMAC, replay, malformed, ...), by reason",
    ),
    MetricInfo(
        "hafailover_loop_lag_seconds",
        "histogram",
        (),
        "How late the event loop ran a timer (lag ticks)",
    ),
    MetricInfo("hafailover_maintenance", "gauge", (), "1 while this node is in maintenance"),
    MetricInfo("hafailover_build_info", "gauge", ("version",), "Always 1; the version label"),
)
_INFO = {m.name: m for m in METRICS}


class MetricsError(LocalError):
    """The metrics endpoint cannot listen where the configuration says."""


@dataclass(frozen=True)
class GroupSnapshot:
    """One group as this node sees it. `lease_expires` is a monotonic instant (None: no lease)."""

    name: str
    holder: bool
    leader: bool
    term: int
    eligible: bool
    lease_expires: float | None = None


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the loop publishes; frozen, and built from copies (tuples), never live objects.

    `checks`: (name, passing) pairs. `peers_heard`: (peer, monotonic instant of its last valid
    message, or None if never). `dropped`: (reason, cumulative count) pairs, e.g.
    `tuple(transport.drops.items())`.
    """

    groups: tuple[GroupSnapshot, ...] = ()
    checks: tuple[tuple[str, bool], ...] = ()
    peers_heard: tuple[tuple[str, float | None], ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()
    maintenance: bool = False

    @classmethod
    def build(
        cls,
        groups: tuple[GroupSnapshot, ...] = (),
        checks: Mapping[str, bool] | None = None,
        peers_heard: Mapping[str, float | None] | None = None,
        dropped: Mapping[str, int] | None = None,
        maintenance: bool = False,
    ) -> MetricsSnapshot:
        """Copy mappings the loop owns into an immutable snapshot."""
        return cls(
            groups=tuple(groups),
            checks=tuple((checks or {}).items()),
            peers_heard=tuple((peers_heard or {}).items()),
            dropped=tuple((dropped or {}).items()),
            maintenance=maintenance,
        )


@dataclass
class _Published:
    snapshot: MetricsSnapshot | None = None
    # Set by `refresh_on_scrape`: asks the loop for a fresh snapshot and waits for it.
    refresh: Callable[[], None] | None = None


class _SnapshotCollector(Collector):
    """Turns the last published snapshot into metric families at scrape time.

    Families whose values come straight from the snapshot (the group gauges but the lease,
    checks, drops, maintenance) are built again only when those values changed, and are
    otherwise yielded as the same objects, which the renderer recognises without comparing their
    samples. The lease and the peers' ages depend on the scrape's time: built at every scrape,
    with samples made directly (no per-sample label validation)."""

    _GROUP_GAUGES = (
        "hafailover_group_vip_holder",
        "hafailover_group_leader",
        "hafailover_group_term",
        "hafailover_group_eligible",
    )
    _LEASE = "hafailover_group_lease_remaining_seconds"
    _PEERS = "hafailover_peer_last_heard_seconds"

    def __init__(self, state: _Published, version: str, clock: Callable[[], float]) -> None:
        self._state = state
        self._clock = clock
        build = GaugeMetricFamily(
            "hafailover_build_info", _INFO["hafailover_build_info"].help, labels=["version"]
        )
        build.add_metric([version], 1)
        self._build = build
        # Each: (the snapshot's values, the families built from them); replaced whole (one
        # reference write), so concurrent collects see either the old or the new pair.
        self._groups: tuple[tuple[tuple[str, bool, bool, int, bool], ...], tuple[Metric, ...]]
        self._groups = ((), ())
        self._checks: tuple[tuple[tuple[str, bool], ...], Metric] | None = None
        self._dropped: tuple[tuple[tuple[str, int], ...], Metric] | None = None
        self._maintenance: dict[bool, Metric] = {}
        for flag in (False, True):
            family = GaugeMetricFamily(
                "hafailover_maintenance", _INFO["hafailover_maintenance"].help
            )
            family.add_metric([], float(flag))
            self._maintenance[flag] = family

    def collect(self) -> Iterator[Metric]:
        refresh = self._state.refresh
        if refresh is not None:
            refresh()
        snap = self._state.snapshot  # one reference read: the loop may publish meanwhile
        yield self._build
        if snap is None:
            return
        now = self._clock()
        holder, leader, term, eligible = self._group_families(snap.groups)
        yield holder
        yield leader
        yield term
        lease = GaugeMetricFamily(self._LEASE, _INFO[self._LEASE].help, labels=["group"])
        lease.samples = [
            Sample(
                self._LEASE,
                {"group": g.name},
                max(0.0, g.lease_expires - now)
                if g.leader and g.lease_expires is not None
                else 0.0,
                None,
            )
            for g in snap.groups
        ]
        yield lease
        yield eligible
        yield self._checks_family(snap.checks)
        peers = GaugeMetricFamily(self._PEERS, _INFO[self._PEERS].help, labels=["peer"])
        peers.samples = [
            Sample(
                self._PEERS,
                {"peer": peer},
                math.inf if heard is None else max(0.0, now - heard),
                None,
            )
            for peer, heard in snap.peers_heard
        ]
        yield peers
        yield self._dropped_family(snap.dropped)
        yield self._maintenance[snap.maintenance]

    def _group_families(self, groups: tuple[GroupSnapshot, ...]) -> tuple[Metric, ...]:
        key = tuple((g.name, g.holder, g.leader, g.term, g.eligible) for g in groups)
        cached_key, families = self._groups
        if key == cached_key and families:
            return families
        built = []
        for index, name in enumerate(self._GROUP_GAUGES, start=1):
            family = GaugeMetricFamily(name, _INFO[name].help, labels=["group"])
            family.samples = [Sample(name, {"group": k[0]}, float(k[index]), None) for k in key]
            built.append(family)
        self._groups = (key, tuple(built))
        return self._groups[1]

    def _checks_family(self, checks: tuple[tuple[str, bool], ...]) -> Metric:
        cached = self._checks
        if cached is not None and cached[0] == checks:
            return cached[1]
        family = GaugeMetricFamily(
            "hafailover_check_up", _INFO["hafailover_check_up"].help, labels=["check"]
        )
        for check, up in checks:
            family.add_metric([check], float(up))
        self._checks = (checks, family)
        return family

    def _dropped_family(self, dropped: tuple[tuple[str, int], ...]) -> Metric:
        cached = self._dropped
        if cached is not None and cached[0] == dropped:
            return cached[1]
        family = CounterMetricFamily(
            "hafailover_packets_dropped",
            _INFO["hafailover_packets_dropped_total"].help,
            labels=["reason"],
        )
        for reason, count in dropped:
            family.add_metric([reason], float(count))
        self._dropped = (dropped, family)
        return family


class _Buffered(Collector):
    """Values the loop hands over with one append, observed into `observe` (thread-safe) by
    the next scrape, registered before the metric it feeds, or by the loop once `limit` wait.
    deque.append and popleft are atomic, so each value is observed exactly once."""

    def __init__(self, observe: Callable[[float], None], limit: int) -> None:
        self._pending: deque[float] = deque()
        self._observe = observe
        self._limit = limit

    def add(self, value: float) -> None:
        self._pending.append(value)
        if len(self._pending) >= self._limit:
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        while True:
            try:
                value = pending.popleft()
            except IndexError:
                return
            self._observe(value)

    def collect(self) -> Iterator[Metric]:
        self.flush()  # before the histogram is collected: it shows every lag measured so far
        return iter(())


class _Families:
    """A collector of given families: what prometheus_client's encoders render."""

    def __init__(self, families: tuple[Metric, ...]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _Renderer:
    """The registry in the Prometheus text format, rendered by prometheus_client's
    `generate_latest` one family at a time: a family equal to the one rendered last time (the
    same object, or the same name, help, type and samples) reuses that family's bytes, so a
    scrape renders only what changed since the previous one. `generate_latest`'s output is its
    families' texts one after the other, so the concatenation is byte for byte what it makes of
    the whole registry. Thread-safe (one lock)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        # family name -> (the family as last rendered, its text)
        self._cache: dict[str, tuple[Metric, bytes]] = {}

    def render(self) -> bytes:
        with self._lock:
            cache = self._cache
            parts: list[bytes] = []
            for family in self._registry.collect():
                cached = cache.get(family.name)
                if cached is not None and (cached[0] is family or cached[0] == family):
                    parts.append(cached[1])
                    continue
                text = generate_latest(_Families((family,)))
                cache[family.name] = (family, text)
                parts.append(text)
            return b"".join(parts)


class _Server:
    """A minimal HTTP/1.0 server for the WSGI application, one request at a time in one
    long-lived thread (`serve`): no thread per scrape, no wake-up while nobody connects, and the
    listening socket defers the accept until the request has arrived (TCP_DEFER_ACCEPT), so a
    scrape wakes the thread once. It reads the request head (at most `MAX_HEAD` bytes within
    `CLIENT_TIMEOUT` s), calls the application and sends its answer with `Connection: close`.
    prometheus_client's WSGI application, not this class, decides what a request gets.

    Measured against wsgiref's server in the same thread (one 1-group scrape, loopback,
    2-core VM): ~0.15 ms of CPU instead of ~0.8 ms. A client that stalls holds the endpoint
    (never the event loop) for `CLIENT_TIMEOUT` s at most; `stop()` ends `serve` at once, even
    in the middle of a request."""

    def __init__(self, host: str, port: int, app: _WsgiApp) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(16)
            sock.setblocking(False)
            with contextlib.suppress(OSError, AttributeError):  # Linux only: an optimisation
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.server_port = int(sock.getsockname()[1])
        self._app = app
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._current: socket.socket | None = None

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                ready = selector.select()
                if self._stopping:
                    return
                if any(key.fileobj is self.socket for key, _ in ready):
                    self._serve_one()

    def _serve_one(self) -> None:
        try:
            conn, peer = self.socket.accept()
        except OSError:  # gone before the accept
            return
        self._current = conn
        try:
            if not self._stopping:
                conn.settimeout(CLIENT_TIMEOUT)
                self._respond(conn, peer)
        except OSError:  # the client went away or stalled: nothing to answer
            pass
        finally:
            self._current = None
            conn.close()

    def _respond(self, conn: socket.socket, peer: Any) -> None:
        head = _read_head(conn, time.monotonic() + CLIENT_TIMEOUT)
        environ = _environ(head, peer) if head is not None else None
        if environ is None:
            conn.sendall(
                b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        answer: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            answer[:] = [status, headers]

        body = b"".join(self._app(environ, start_response))
        status, headers = answer
        lines = [f"HTTP/1.0 {status}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        conn.sendall("".join(lines).encode("latin-1") + body)

    def stop(self) -> None:
        self._stopping = True
        current = self._current
        if current is not None:
            with contextlib.suppress(OSError):  # that request is done and closed meanwhile
                current.shutdown(socket.SHUT_RDWR)
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()


def _read_head(conn: socket.socket, deadline: float) -> bytes | None:
    """The request line and headers, or None: too long, or the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head too slow")
        conn.settimeout(remaining)
        chunk = conn.recv(MAX_HEAD + 4)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _environ(head: bytes, peer: Any) -> dict[str, Any] | None:
    """A WSGI environ for a request head; None if it is not an HTTP/1.x request."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, protocol = parts
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": str(peer[0]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        key = "HTTP_" + name.upper().replace("-", "_")
        value = value.strip()
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hafailover")
    except PackageNotFoundError:
        return "unknown"


class MetricsServer:
    """The registry, the update methods the loop calls, and the HTTP endpoint.

    Loop side: `publish(snapshot)`, `observe_transition`, `observe_check_duration`,
    `observe_loop_lag` (all cheap, none blocks on the scraper). `start(listen)` and `stop()`
    run the endpoint; `render()` gives the exposition text without HTTP.
    """

    def __init__(self, version: str | None = None, clock: Callable[[], float] = time.monotonic):
        if version is None:
            version = _package_version()
        # No `_created` series next to each counter and histogram: they double the series count
        # and nothing here uses them. (A process-wide switch; hafailover has no other registry.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._state = _Published()
        self._renderer = _Renderer(self.registry)
        self.registry.register(_SnapshotCollector(self._state, version, clock))
        self._transitions = Counter(
            "hafailover_transitions",
            _INFO["hafailover_transitions_total"].help,
            ["group", "reason"],
            registry=self.registry,
        )
        self._check_duration = Histogram(
            "hafailover_check_duration_seconds",
            _INFO["hafailover_check_duration_seconds"].help,
            ["check"],
            buckets=CHECK_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._loop_lag = Histogram(
            "hafailover_loop_lag_seconds",
            _INFO["hafailover_loop_lag_seconds"].help,
            buckets=LOOP_LAG_BUCKETS,
            registry=None,
        )
        self._lags = _Buffered(self._loop_lag.observe, LAG_BUFFER)
        self.registry.register(self._lags)  # collected (flushed) before the histogram
        self.registry.register(self._loop_lag)
        # Labelled children, looked up once per label value: `labels()` validates and locks on
        # every call.
        self._transition_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    # --- loop side ---------------------------------------------------------------------------

    def publish(self, snapshot: MetricsSnapshot) -> None:
        """Make `snapshot` what the next scrape reports (replaces the previous one)."""
        if not isinstance(snapshot, MetricsSnapshot):
            raise TypeError("publish takes a MetricsSnapshot")
        self._state.snapshot = snapshot

    def refresh_on_scrape(
        self,
        loop: asyncio.AbstractEventLoop,
        publish: Callable[[], None],
        wait: float = REFRESH_WAIT,
    ) -> None:
        """Have every scrape run `publish` (which calls `self.publish`) on `loop` first, and
        wait for it at most `wait` seconds; past that, or once the loop is closed, the scrape
        reports the last snapshot. Called from the loop's own thread (`render()` in the loop),
        `publish` runs at once."""
        owner = threading.get_ident()

        def refresh() -> None:
            if threading.get_ident() == owner:
                publish()
                return
            done = threading.Event()

            def run() -> None:
                try:
                    publish()
                finally:
                    done.set()

            try:
                loop.call_soon_threadsafe(run)
            except RuntimeError:  # the loop is closed: the daemon is stopping
                return
            done.wait(wait)

        self._state.refresh = refresh

    def observe_transition(self, group: str, reason: str) -> None:
        child = self._transition_children.get((group, reason))
        if child is None:
            child = self._transitions.labels(group=group, reason=reason)
            self._transition_children[(group, reason)] = child
        child.inc()

    def observe_check_duration(self, check: str, seconds: float) -> None:
        child = self._duration_children.get(check)
        if child is None:
            child = self._duration_children[check] = self._check_duration.labels(check=check)
        child.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self._lags.add(seconds if seconds > 0.0 else 0.0)

    # --- endpoint ----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of everything, as a scrape would get it."""
        return generate_latest(self.registry)

    def start(self, listen: tuple[str, int]) -> tuple[str, int]:
        """Serve /metrics at `listen` (host, port; port 0 picks one) in a daemon thread.

        Returns the address actually bound. Raises MetricsError if it cannot listen.
        """
        if self._server is not None:
            raise MetricsError("the metrics endpoint is already running")
        host, port = listen
        bind = host.strip("[]")
        try:
            server = _Server(bind, port, self._app())
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}. Pick a free "
                "port in metrics.listen, or remove the metrics section"
            ) from None
        thread = threading.Thread(target=server.serve, name="hafailover-metrics", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self.address = (bind, int(server.server_port))
        return self.address

    def stop(self) -> None:
        """Stop serving and free the port; safe to call when not started."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.stop()
        if thread is not None:
            thread.join(timeout=5)
        server.server_close()

    def _app(self) -> _WsgiApp:
        """The WSGI application. A plain GET (what Prometheus sends) gets the registry through
        the family cache, in the Prometheus text format (0.0.4), gzipped if the client accepts
        it; anything else goes to prometheus_client's own application (`make_wsgi_app`: other
        methods, `?name[]=` filters), asked for the same format. The text format whatever the
        Accept header says: every Prometheus takes it, and prometheus_client's OpenMetrics
        encoder, which Prometheus prefers, costs twice the CPU per sample (0.8 ms more per
        50-group scrape)."""
        fallback = make_wsgi_app(self.registry)
        renderer = self._renderer

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if (
                environ["REQUEST_METHOD"] != "GET"
                or environ.get("QUERY_STRING")
                or environ.get("PATH_INFO") == "/favicon.ico"
            ):
                environ.pop("HTTP_ACCEPT", None)
                result: Iterable[bytes] = fallback(environ, start_response)
                return result
            output = renderer.render()
            headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                output = gzip.compress(output, compresslevel=GZIP_LEVEL)
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [output]

        return app
