"""The metrics endpoint: the real HTTP server on 127.0.0.1, read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hafailover.runtime.metrics import (
    METRICS,
    GroupSnapshot,
    MetricsError,
    MetricsServer,
    MetricsSnapshot,
)

if TYPE_CHECKING:  # only the fixture's type: pytest loads the conftest itself
    from tests.unit.conftest import Clock


def scrape(metrics: MetricsServer) -> dict[str, list[Sample]]:
    assert metrics.address is not None
    host, port = metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return _merge(text)


def _merge(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def snapshot(term: int = 4, maintenance: bool = False) -> MetricsSnapshot:
    return MetricsSnapshot.build(
        groups=(
            GroupSnapshot(
                "web", holder=True, leader=True, term=term, eligible=True, lease_expires=1000.45
            ),
            GroupSnapshot(
                "db", holder=False, leader=False, term=2, eligible=False, lease_expires=1003.0
            ),
        ),
        checks={"nginx": True, "pg": False},
        peers_heard={"node2": 999.75, "node3": None},
        dropped={"bad_hmac": 3, "replay": 1},
        maintenance=maintenance,
    )


def test_every_metric_of_the_table_is_served_with_its_type_and_labels(
    server: MetricsServer,
) -> None:
    server.publish(snapshot())
    server.observe_transition("web", "elected")
    server.observe_check_duration("nginx", 0.02)
    server.observe_loop_lag(0.004)
    host, port = server.address or ("", 0)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    for info in METRICS:
        base = info.name.removesuffix("_total") if info.type == "counter" else info.name
        assert base in families, info.name
        family = families[base]
        assert family.type == info.type, info.name
        samples = [s for s in family.samples if s.name == info.name or info.type == "histogram"]
        assert samples, info.name
        for sample in samples:
            assert set(sample.labels) - {"le"} == set(info.labels), (info.name, sample.labels)


def test_values_come_from_the_published_snapshot_at_scrape_time(
    server: MetricsServer, clock: Clock
) -> None:
    server.publish(snapshot())
    got = scrape(server)
    assert value(got, "hafailover_build_info", version="9.9.9") == 1
    assert value(got, "hafailover_group_vip_holder", group="web") == 1
    assert value(got, "hafailover_group_vip_holder", group="db") == 0
    assert value(got, "hafailover_group_leader", group="db") == 0
    assert value(got, "hafailover_group_term", group="web") == 4
    assert value(got, "hafailover_group_eligible", group="db") == 0
    assert value(got, "hafailover_group_lease_remaining_seconds", group="web") == pytest.approx(
        0.45
    )
    # A follower reports no lease even if it remembers an expiry.
    assert value(got, "hafailover_group_lease_remaining_seconds", group="db") == 0
    assert value(got, "hafailover_check_up", check="pg") == 0
    assert value(got, "hafailover_peer_last_heard_seconds", peer="node2") == pytest.approx(0.25)
    assert math.isinf(value(got, "hafailover_peer_last_heard_seconds", peer="node3"))
    assert value(got, "hafailover_packets_dropped_total", reason="bad_hmac") == 3
    assert value(got, "hafailover_maintenance") == 0
    # Ages grow with the clock between scrapes, without a new publish.
    clock.now += 1.0
    later = scrape(server)
    assert value(later, "hafailover_peer_last_heard_seconds", peer="node2") == pytest.approx(1.25)
    assert value(later, "hafailover_group_lease_remaining_seconds", group="web") == 0


def test_counters_and_histograms_accumulate(server: MetricsServer) -> None:
    for _ in range(3):
        server.observe_transition("web", "leader_lost")
    server.observe_transition("db", "elected")
    for seconds in (0.0005, 0.003, 0.2):
        server.observe_loop_lag(seconds)
    server.observe_check_duration("pg", 0.007)
    got = scrape(server)
    assert value(got, "hafailover_transitions_total", group="web", reason="leader_lost") == 3
    assert value(got, "hafailover_transitions_total", group="db", reason="elected") == 1
    assert value(got, "hafailover_loop_lag_seconds_count") == 3
    assert value(got, "hafailover_loop_lag_seconds_bucket", le="0.005") == 2
    assert value(got, "hafailover_loop_lag_seconds_sum") == pytest.approx(0.2035)
    assert value(got, "hafailover_check_duration_seconds_bucket", check="pg", le="0.01") == 1
    assert value(got, "hafailover_check_duration_seconds_bucket", check="pg", le="0.005") == 0


def test_loop_lags_wait_in_a_bounded_buffer_and_every_scrape_counts_each_once(
    server: MetricsServer,
) -> None:
    from hafailover.runtime.metrics import LAG_BUFFER

    # Nobody scrapes: the loop observes them itself once LAG_BUFFER wait (memory stays bounded).
    for _ in range(3 * LAG_BUFFER + 5):
        server.observe_loop_lag(0.001)
    assert len(server._lags._pending) < LAG_BUFFER
    assert value(scrape(server), "hafailover_loop_lag_seconds_count") == 3 * LAG_BUFFER + 5
    # Scrapes from another thread while the loop observes: counts only grow, none is lost.
    counts: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            counts.append(value(scrape(server), "hafailover_loop_lag_seconds_count"))

    thread = threading.Thread(target=scraper)
    thread.start()
    observed = 3 * LAG_BUFFER + 5
    deadline = time.monotonic() + 10
    while len(counts) < 5 and time.monotonic() < deadline:
        for _ in range(7):
            server.observe_loop_lag(0.002)
        observed += 7
        time.sleep(0.0005)
    stop.set()
    thread.join()
    assert counts == sorted(counts) and len(counts) >= 5
    assert value(scrape(server), "hafailover_loop_lag_seconds_count") == observed


def test_before_the_first_publish_only_build_info_and_observations(server: MetricsServer) -> None:
    got = scrape(server)
    assert value(got, "hafailover_build_info", version="9.9.9") == 1
    assert "hafailover_group_vip_holder" not in got
    assert "hafailover_maintenance" not in got


def test_snapshot_is_a_copy_of_the_loops_mappings(server: MetricsServer) -> None:
    drops = {"bad_hmac": 1}
    checks = {"nginx": True}
    server.publish(MetricsSnapshot.build(checks=checks, dropped=drops))
    drops["bad_hmac"] = 50
    checks["nginx"] = False
    got = scrape(server)
    assert value(got, "hafailover_packets_dropped_total", reason="bad_hmac") == 1
    assert value(got, "hafailover_check_up", check="nginx") == 1
    with pytest.raises(TypeError):
        server.publish({"groups": ()})  # type: ignore[arg-type]


def test_each_scrape_sees_one_whole_snapshot_while_the_loop_publishes(
    server: MetricsServer,
) -> None:
    """The loop publishes 2000 snapshots while a thread scrapes: no scrape mixes two."""
    seen: list[tuple[float, float, float]] = []
    failures: list[BaseException] = []

    def scraper() -> None:
        try:
            for _ in range(30):
                got = scrape(server)
                if "hafailover_group_term" in got:
                    term = value(got, "hafailover_group_term", group="web")
                    seen.append(
                        (
                            term,
                            value(got, "hafailover_group_leader", group="web"),
                            value(got, "hafailover_maintenance"),
                        )
                    )
        except BaseException as exc:  # reported in the main thread
            failures.append(exc)

    async def loop_side() -> None:
        thread = threading.Thread(target=scraper)
        thread.start()
        term = 0
        while thread.is_alive():
            term += 1
            group = GroupSnapshot("web", True, term % 2 == 0, term, True, None)
            server.publish(MetricsSnapshot.build((group,), maintenance=term % 3 == 0))
            await asyncio.sleep(0)
        thread.join()

    asyncio.run(loop_side())
    assert not failures
    assert len(seen) >= 20
    for term, leader, maintenance in seen:
        assert leader == float(int(term) % 2 == 0)
        assert maintenance == float(int(term) % 3 == 0)


def test_each_scrape_asks_the_loop_for_a_fresh_snapshot_and_a_stalled_loop_is_not_awaited(
    server: MetricsServer,
) -> None:
    """refresh_on_scrape: a scrape runs the loop's publish first (one per scrape, none
    without), and a loop that does not run reports the last snapshot after REFRESH_WAIT."""
    terms = iter(range(10, 100))
    built: list[int] = []
    loop = asyncio.new_event_loop()

    def publish() -> None:
        built.append(next(terms))
        server.publish(MetricsSnapshot.build((GroupSnapshot("web", True, True, built[-1], True),)))

    server.refresh_on_scrape(loop, publish, wait=0.3)
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        time.sleep(0.2)
        assert built == []  # nothing built while nobody scrapes
        assert value(scrape(server), "hafailover_group_term", group="web") == 10
        assert value(scrape(server), "hafailover_group_term", group="web") == 11
        assert built == [10, 11]
        # The loop stalls (a callback that blocks it): the scrape waits 0.3 s, then reports
        # the last snapshot; the refresh it asked for runs once the loop is back.
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait, 5.0)
        t0 = time.monotonic()
        assert value(scrape(server), "hafailover_group_term", group="web") == 11
        waited = time.monotonic() - t0
        assert 0.25 <= waited < 3.0, waited
        release.set()
        deadline = time.monotonic() + 5
        while len(built) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert built == [10, 11, 12]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
    # A closed loop: the scrape reports the last snapshot at once.
    t0 = time.monotonic()
    assert value(scrape(server), "hafailover_group_term", group="web") == 12
    assert time.monotonic() - t0 < 0.25


def test_render_on_the_loop_thread_publishes_at_once(clock: Clock) -> None:
    metrics = MetricsServer(version="1", clock=clock)
    loop = asyncio.new_event_loop()
    try:
        metrics.refresh_on_scrape(loop, lambda: metrics.publish(snapshot(term=7)))
        t0 = time.monotonic()
        text = metrics.render().decode()
        assert time.monotonic() - t0 < 0.2
        assert 'hafailover_group_term{group="web"} 7.0' in text
    finally:
        loop.close()


def test_stop_frees_the_port_and_a_busy_port_is_a_clear_error(clock: Clock) -> None:
    first = MetricsServer(clock=clock)
    host, port = first.start(("127.0.0.1", 0))
    second = MetricsServer(clock=clock)
    with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        second.start(("127.0.0.1", port))
    with pytest.raises(MetricsError, match="already running"):
        first.start(("127.0.0.1", 0))
    first.stop()
    first.stop()  # idempotent
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    second.start(("127.0.0.1", port))
    second.stop()


def test_ipv6_loopback_listen(clock: Clock) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    metrics = MetricsServer(clock=clock)
    try:
        host, port = metrics.start(("[::1]", 0))
    except MetricsError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    try:
        metrics.publish(snapshot(maintenance=True))
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as reply:
            assert b"hafailover_maintenance 1.0" in reply.read()
        assert host == "::1"
    finally:
        metrics.stop()


def test_docs_list_every_metric_with_its_type_and_labels() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for info in METRICS:
        labels = ", ".join(info.labels) or "—"
        assert f"| `{info.name}` | {info.type} | {labels} |" in doc, info.name


# --- a real Prometheus server scraping three endpoints --------------------------------------------

_PROMETHEUS = shutil.which("prometheus")
_SCRAPE_S = 1.0
_LAB_CONFIG = """
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules}]
scrape_configs:
  - job_name: hafailover
    static_configs:
      - targets: ["127.0.0.1:9405", "127.0.0.1:9406", "127.0.0.1:9407"]
"""


def _query(expr: str) -> list[dict[str, Any]]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _holders() -> dict[str, float]:
    rows = _query("sum by (group) (hafailover_group_vip_holder)")
    return {r["metric"]["group"]: float(r["value"][1]) for r in rows}


def _wait(predicate: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout}s")


def prometheus_lab(workdir: str) -> None:
    """Run inside a fresh network namespace: 3 endpoints, a Prometheus, one holder dies.

    node1 holds web, node2 holds db. node1's endpoint stops (its host died); 0.6 s later (a
    failover timeout) node2 publishes that it holds web. Prints JSON figures on stdout.
    """
    assert _PROMETHEUS is not None
    work = Path(workdir)
    rules = Path(__file__).parents[2] / "etc" / "prometheus" / "hafailover-alerts.yml"
    (work / "prometheus.yml").write_text(_LAB_CONFIG.format(rules=json.dumps(str(rules))))
    nodes = {name: MetricsServer(version="lab") for name in ("node1", "node2", "node3")}
    holding = {"node1": {"web"}, "node2": {"db"}, "node3": set()}

    def publish(name: str) -> None:
        groups = tuple(
            GroupSnapshot(g, g in holding[name], g in holding[name], 1, True, None)
            for g in ("web", "db")
        )
        nodes[name].publish(MetricsSnapshot.build(groups, {"nginx": True}))

    for port, name in enumerate(nodes, start=9405):
        publish(name)
        nodes[name].start(("127.0.0.1", port))
    server = subprocess.Popen(
        [
            _PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            "--web.listen-address=127.0.0.1:9090",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "prometheus.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    figures: dict[str, float] = {}
    try:
        _wait(lambda: _holders() == {"web": 1.0, "db": 1.0}, 60)
        # node3 holds nothing: the holders can be there before its first scrape.
        _wait(lambda: [r["value"][1] for r in _query("up")] == ["1"] * 3, 10)
        cpu = time.process_time()
        time.sleep(10)  # three endpoints scraped each second, nothing else happening
        figures["cpu_per_scrape_ms"] = (time.process_time() - cpu) / (3 * 10 / _SCRAPE_S) * 1000
        moved = _query("hafailover_transitions_total")
        assert moved == []  # no transition observed yet
        died = time.monotonic()
        nodes["node1"].stop()
        time.sleep(0.6)
        holding["node2"].add("web")
        publish("node2")
        nodes["node2"].observe_transition("web", "elected")
        _wait(lambda: _holders().get("web") == 1.0 and _query("up == 0") != [], 10)
        figures["holder_back_s"] = time.monotonic() - died
        figures["transition_seen_s"] = (
            _wait(lambda: len(_query("hafailover_transitions_total")) == 1, 10)
            + figures["holder_back_s"]
        )
        # Between node1's failed scrape and node2's next one, a rule evaluation may see no
        # holder: HafailoverGroupNoHolder goes pending (its `for:` is there for this). It must
        # never fire, and must be gone at the first evaluation after the holder is back.
        holder_alerts = 'ALERTS{alertname=~".*Holder.*"}'
        firing = _query(holder_alerts.replace("}", ',alertstate="firing"}'))
        figures["holder_alerts_firing"] = float(len(firing))
        _wait(lambda: _query(holder_alerts) == [], 10)
        figures["holder_alerts_gone_s"] = time.monotonic() - died
    finally:
        server.terminate()
        server.wait(timeout=10)
        for endpoint in nodes.values():
            endpoint.stop()
    print(json.dumps(figures))


@pytest.mark.netns
@pytest.mark.skipif(_PROMETHEUS is None and os.environ.get("CI") != "true", reason="no prometheus")
def test_a_real_prometheus_sees_one_holder_again_within_two_scrapes(tmp_path: Path) -> None:
    ns = f"hafprom{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        code = "import sys, tests.unit.test_metrics as t; t.prometheus_lab(sys.argv[1])"
        lab = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code, str(tmp_path)],
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert lab.returncode == 0, lab.stdout + lab.stderr
        figures = json.loads(lab.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print("prometheus lab:", figures)
    # The host died at 0; its successor holds web from 0.6 s: within two scrapes after that.
    assert figures["holder_back_s"] <= 0.6 + 2 * _SCRAPE_S + 0.5
    assert figures["transition_seen_s"] <= 0.6 + 2 * _SCRAPE_S + 0.5
    assert figures["holder_alerts_firing"] == 0
    assert figures["holder_alerts_gone_s"] <= figures["holder_back_s"] + 2 * _SCRAPE_S + 0.5
