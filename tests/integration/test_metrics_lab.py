"""A real Prometheus scraping three real daemons in the netns lab.

Prometheus runs in the client's namespace and scrapes each node's `/metrics` on its lab address
every second. After node1's host dies (it held web), `sum by (group)
(hafailover_group_vip_holder)` must be 1 for every group again within two scrape intervals of
the failover, and the transition counter of web must have moved.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from lab import CLIENT, Lab
from lab.cluster import ClusterOptions, HaCluster, web_db_groups
from lab.netns import in_netns

PROMETHEUS = shutil.which("prometheus")
PORT = 9405
SCRAPE_S = 1.0
FAILOVER_S = 0.6
CONFIG = """
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
scrape_configs:
  - job_name: hafailover
    static_configs:
      - targets: {targets}
"""


def query(lab: Lab, expr: str) -> list[dict[str, Any]]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})

    def get() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as reply:
            body: dict[str, Any] = json.loads(reply.read())
            return body

    body = in_netns(lab.ns(CLIENT), get)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_group(lab: Lab, expr: str) -> dict[str, float]:
    return {r["metric"].get("group", ""): float(r["value"][1]) for r in query(lab, expr)}


def wait(what: str, pred: Callable[[], bool], timeout: float, poll: float = 0.05) -> float:
    """Poll pred until it holds; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.monotonic()
        except OSError:
            pass  # Prometheus not listening yet
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.mark.netns
@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus (Debian package prometheus)")
def test_prometheus_sees_one_holder_per_group_again_within_two_scrapes_after_a_host_death(
) -> None:
    assert PROMETHEUS is not None
    with Lab(3, "hfprm") as lab:
        c = HaCluster(lab, ClusterOptions(groups=web_db_groups("30s"), metrics_port=PORT))
        c.start_all()
        c.wait_groups(lambda h: h == {"web": ["node1"], "db": ["node2"]}, timeout=10.0)
        targets = json.dumps([f"{lab.address(n)}:{PORT}" for n in lab.nodes])
        conf = lab.workdir / "prometheus.yml"
        conf.write_text(CONFIG.format(targets=targets))
        lab.spawn(CLIENT, [PROMETHEUS, f"--config.file={conf}",
                           f"--storage.tsdb.path={lab.workdir / 'tsdb'}",
                           "--web.listen-address=127.0.0.1:9090"], name="prometheus")
        holders = "sum by (group) (hafailover_group_vip_holder)"
        wait("three targets up, one holder per group",
             lambda: len(query(lab, "up == 1")) == 3
             and by_group(lab, holders) == {"web": 1.0, "db": 1.0}, 60.0)
        node2 = f'instance="{lab.address("node2")}:{PORT}"'
        web_node2 = f'sum(hafailover_transitions_total{{group="web",{node2}}})'
        before = sum(float(r["value"][1]) for r in query(lab, web_node2))
        time.sleep(1.5)

        t_kill = c.kill_host("node1")
        _, t_moved = c.wait_groups(lambda h: h["web"] == ["node2"], timeout=10.0, poll=0.01,
                                   exclude=("node1",))
        t_seen = wait("one holder per group with node1 down",
                      lambda: by_group(lab, holders) == {"web": 1.0, "db": 1.0}
                      and len(query(lab, "up == 0")) == 1, 15.0)
        t_counted = wait("web's transitions on node2 moved",
                         lambda: sum(float(r["value"][1]) for r in query(lab, web_node2))
                         > before, 15.0)
        sample = query(lab, 'count by (__name__) ({__name__=~"hafailover_.*"})')
        print(f"\nweb on node2 {(t_moved - t_kill) * 1000:.0f} ms after the host death; "
              f"Prometheus: one holder per group {t_seen - t_moved:.2f} s after the failover "
              f"({t_seen - t_kill:.2f} s after the death), transitions moved "
              f"{t_counted - t_kill:.2f} s after; {len(sample)} hafailover_ metric names")
        assert t_seen - t_moved <= 2 * SCRAPE_S + 0.5
        assert t_counted - t_moved <= 2 * SCRAPE_S + 0.5
