"""Hostile traffic from the client's namespace to UDP 5405 of every node.

Forged packets (valid format, wrong key), replays of real datagrams captured on the bridge,
another cluster's packets and random garbage, 20k in all over 10 s: the roles must not move,
each kind must show up in the `drops` counters, and every daemon keeps answering status within
1 s throughout.
"""

from __future__ import annotations

import base64
import itertools
import random
import threading
import time
from collections import Counter

import pytest

from hafailover.control.client import ControlClient
from hafailover.core.messages import (
    Heartbeat,
    MaintenanceRequest,
    Message,
    TimeoutNow,
    VoteRequest,
)
from hafailover.wire import Codec, generate_key, new_incarnation
from lab.cluster import PORT
from tests.integration.faultlab import (
    ETH_P_ALL,
    Capture,
    Datagram,
    client_udp_socket,
    figure,
    parse_udp,
    running_cluster,
)

TOTAL_PACKETS = 20_000
FLOOD_SECONDS = 10.0
TICK_S = 0.01
LEADERSHIP_CHANGES = {"elected", "lease-expired", "higher-term", "new-leader", "prevote-won",
                      "transfer-received", "maintenance-on", "unhealthy"}


def _forgeries(nodes: list[str], term: int) -> list[tuple[str, bytes]]:
    """(destination, packet): well-formed packets under a wrong key, each claiming to come from
    a real member, carrying the messages that would do the most harm if believed."""
    wrong_key = base64.b64decode(generate_key())
    out: list[tuple[str, bytes]] = []
    harmful: list[Message] = [
        Heartbeat(term + 10, 1), TimeoutNow(term), MaintenanceRequest(term, True),
        VoteRequest(term + 5, False, True, False), VoteRequest(term + 5, True, True, False)]
    for dest in nodes:
        for sender in (n for n in nodes if n != dest):
            codec = Codec(wrong_key, "lab", sender, nodes, new_incarnation())
            out += [(dest, codec.encode(m, 1000 + i, to=dest)) for i, m in enumerate(harmful)]
    return out


def _other_cluster(nodes: list[str], term: int) -> list[tuple[str, bytes]]:
    key = base64.b64decode(generate_key())
    codec = Codec(key, "not-lab", nodes[0], nodes, new_incarnation())
    return [(d, codec.encode(Heartbeat(term + 1, 1), 5, to=d)) for d in nodes[1:]]


@pytest.mark.netns
def test_forged_replayed_and_garbage_packets_change_nothing() -> None:
    with running_cluster() as rig:
        lab, cluster, leader = rig.lab, rig.cluster, rig.first_holder
        nodes = rig.nodes
        addr = {n: lab.address(n) for n in nodes}
        by_addr = {a: n for n, a in addr.items()}
        # Real traffic to and from the leader, seen on its bridge port. ETH_P_ALL: the bridge
        # consumes a port's frames before any protocol-specific packet socket would see them.
        with Capture(lab, leader, lab.bridge_port(leader), ETH_P_ALL, bridge=True,
                     max_seconds=5.0, max_frames=5000) as cap:
            time.sleep(1.5)
        captured: list[Datagram] = [d for d in parse_udp(cap.frames) if d.dst in by_addr]
        assert len(captured) > 20, len(captured)
        replays = [(by_addr[d.dst], d.payload) for d in captured]
        term = rig.term(leader)
        terms = rig.terms()
        before = {n: dict(cluster.status(n)["drops"]) for n in nodes}

        rng = random.Random(5405)
        garbage = [(n, rng.randbytes(rng.choice([0, 5, 40, 60, 200, 1399, 1500])))
                   for n in nodes for _ in range(50)]
        garbage += [(n, b"HF" + rng.randbytes(100)) for n in nodes for _ in range(10)]
        kinds: dict[str, list[tuple[str, bytes]]] = {
            "forged": _forgeries(nodes, term), "replay": replays,
            "other-cluster": _other_cluster(nodes, term), "garbage": garbage}
        schedule = itertools.cycle([(k, p) for k, ps in kinds.items() for p in ps])

        latencies: list[float] = []
        unanswered: list[str] = []
        stop = threading.Event()

        def poll_status() -> None:  # bounded by the flood's duration (stop is always set)
            while not stop.is_set():
                for n in nodes:
                    t = time.monotonic()
                    if cluster.try_status(n) is None:
                        unanswered.append(n)
                    latencies.append(time.monotonic() - t)
                time.sleep(0.1)

        poller = threading.Thread(target=poll_status, daemon=True)
        sock = client_udp_socket(lab)
        sent: Counter[str] = Counter()
        blocked = 0
        per_tick = max(1, round(TOTAL_PACKETS * TICK_S / FLOOD_SECONDS))
        t_start = time.monotonic()
        poller.start()
        try:
            tick = 0
            while sum(sent.values()) + blocked < TOTAL_PACKETS:
                due = t_start + tick * TICK_S
                if due > t_start + FLOOD_SECONDS + 5.0:
                    break  # hard time bound even if we fall behind
                time.sleep(max(0.0, due - time.monotonic()))
                for kind, (dest, packet) in itertools.islice(schedule, per_tick):
                    try:
                        sock.sendto(packet, (addr[dest], PORT))
                        sent[kind] += 1
                    except BlockingIOError:
                        blocked += 1
                tick += 1
        finally:
            t_end = time.monotonic()
            time.sleep(0.5)
            stop.set()
            poller.join(5.0)
            sock.close()
        figure("flood_packets_sent", str(sum(sent.values())), f"in {t_end - t_start:.1f} s "
               f"({dict(sent)}, {blocked} not sent: socket buffer full)")
        figure("flood_status_latency_max", max(latencies) * 1000)
        assert sum(sent.values()) >= 0.9 * TOTAL_PACKETS
        assert not unanswered, unanswered
        assert max(latencies) < 1.0

        after = {n: dict(cluster.status(n)["drops"]) for n in nodes}

        def rose(n: str, k: str) -> int:
            return int(after[n].get(k, 0)) - int(before[n].get(k, 0))

        for n in nodes:
            print(f"drops on {n}:", {k: rose(n, k) for k in after[n] if rose(n, k)})
            assert rose(n, "bad-mac") > 0
            assert rose(n, "replay") + rose(n, "stale") > 0
            assert rose(n, "bad-magic") > 0 and rose(n, "too-short") > 0
            assert rose(n, "oversize") > 0 and rose(n, "other-cluster") >= 0
        assert sum(rose(n, "other-cluster") for n in nodes) > 0

        assert rig.terms() == terms
        assert cluster.holders() == [leader]
        moved = [(round(t - t_start, 3), n, p) for t, n, p in rig.timeline().merged()
                 if t > t_start]
        assert moved == [], moved
        wavering = [(n, e["reason"]) for n in nodes for e in rig.events(n, after=t_start)
                    if e["reason"] in LEADERSHIP_CHANGES]
        assert wavering == [], wavering
        rig.assert_no_dual()


@pytest.mark.netns
def test_a_packet_replayed_to_another_node_is_rejected() -> None:
    with running_cluster(echo=False) as rig:
        lab, cluster, leader = rig.lab, rig.cluster, rig.first_holder
        target, bystander = (n for n in rig.nodes if n != leader)
        with Capture(lab, leader, lab.bridge_port(leader), ETH_P_ALL, bridge=True,
                     max_seconds=5.0, max_frames=5000) as cap:
            t_cmd = time.monotonic()
            ControlClient(cluster.socket(leader), timeout=2.0).maintenance(True, target)
            cluster.wait_status(target, lambda s: bool(s["maintenance"]), timeout=3.0)
        # Wire v2: an item of group "default" (u8 length + name) of type 7 =
        # MAINTENANCE_REQUEST, on its way from the leader to the target.
        request = next(d for d in parse_udp(cap.frames)
                       if d.dst == lab.address(target) and b"\x07default\x07" in d.payload)
        sock = client_udp_socket(lab)
        try:
            sock.sendto(request.payload, (lab.address(bystander), PORT))
        finally:
            sock.close()
        figure("replayed_maintenance_request_age", (time.monotonic() - request.t) * 1000)
        time.sleep(0.5)
        status = cluster.status(bystander)
        print("bystander after the replay:", status["maintenance"], status["drops"],
              [e["reason"] for e in rig.events(bystander, after=t_cmd)])
        assert status["maintenance"] is False, "a packet meant for another node was accepted"
