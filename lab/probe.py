"""UDP prober (the lab's client) and the analysis of what it recorded.

    python -m lab.probe --target 10.213.0.100 --port 7000 \
        --interval 0.01 --duration 10 --out probe.jsonl

Probe k is sent at start + k*interval (an absolute schedule, so lateness never accumulates;
if we are more than a whole interval late the missed slots are skipped, not burst out). Every
reply is recorded as (seq, send, recv, responder) with time.monotonic(): CLOCK_MONOTONIC is
shared by all namespaces, so these times line up with the monitors and with the lab's own
event log. Unanswered probes are kept with recv=None. The file is written on exit (duration
over, SIGTERM or SIGINT): a "meta" line, then one "probe" line per reply or unanswered probe.
"""

from __future__ import annotations

import argparse
import itertools
import json
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lab.netns import Lab, LabProcess

MAX_DURATION = 3600.0


class ProbeRecord(NamedTuple):
    seq: int
    send: float  # monotonic time the probe was sent
    recv: float | None  # monotonic time the reply arrived; None if none did
    responder: str | None  # the echo's node name


@dataclass(frozen=True)
class ProbeRun:
    meta: dict[str, Any]
    records: list[ProbeRecord]

    @property
    def start(self) -> float:
        return float(self.meta["start"])

    @property
    def end(self) -> float:
        return float(self.meta["end"])


@dataclass(frozen=True)
class Gap:
    """Time between two successive successful replies (or a window edge and a reply)."""

    start: float
    end: float
    before: str | None  # responder of the reply that opened the gap
    after: str | None  # responder of the reply that closed it
    lost: int  # probes sent inside the gap that got no reply

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclass(frozen=True)
class Span:
    """A run of consecutive replies from the same responder."""

    responder: str
    first: float
    last: float
    replies: int


# --- prober -----------------------------------------------------------------------------------


def run_probe(target: str, port: int, interval: float, duration: float,
              linger: float = 0.2) -> ProbeRun:
    if not 0 < duration <= MAX_DURATION or interval <= 0:
        raise ValueError("need 0 < duration <= 3600 and interval > 0")
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sent: dict[int, float] = {}
    replies: list[ProbeRecord] = []
    lags: list[float] = []
    skipped = 0
    send_errors = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # Unconnected: a reply is accepted whichever address it comes from.
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))
        start = time.monotonic()
        print("started", flush=True)
        end = start + duration
        k = 0

        def drain() -> None:
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # e.g. a queued ICMP error
                t = time.monotonic()
                name, _, seq = data.partition(b":")
                if seq.isdigit() and int(seq) in sent:
                    replies.append(ProbeRecord(int(seq), sent[int(seq)], t, name.decode()))

        while not stop:
            now = time.monotonic()
            due = start + k * interval
            if due >= end:
                break
            if now >= due:
                if now - due >= interval:  # paused: skip missed slots rather than burst
                    behind = int((now - start) / interval)
                    skipped += behind - k
                    k = behind
                    continue
                t = time.monotonic()
                try:
                    sock.sendto(b"%d" % k, (target, port))
                    sent[k] = t
                    lags.append(t - due)
                except OSError:
                    send_errors += 1
                k += 1
                continue
            select.select([sock], [], [], due - now)
            drain()
        stop_at = time.monotonic()
        linger_end = stop_at + linger
        while (left := linger_end - time.monotonic()) > 0:
            select.select([sock], [], [], left)
            drain()
    answered = {r.seq for r in replies}
    records = replies + [ProbeRecord(s, t, None, None) for s, t in sent.items()
                         if s not in answered]
    records.sort(key=lambda r: (r.seq, r.recv or 0.0))
    lags.sort()
    meta = {"type": "meta", "target": target, "port": port, "interval": interval,
            "start": start, "end": stop_at, "sent": len(sent), "replies": len(replies),
            "skipped_slots": skipped, "send_errors": send_errors,
            "send_lag_mean_ms": 1000 * sum(lags) / len(lags) if lags else 0.0,
            "send_lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "send_lag_max_ms": 1000 * lags[-1] if lags else 0.0}
    return ProbeRun(meta, records)


def save(run: ProbeRun, path: str | Path) -> None:
    lines = [json.dumps(run.meta)]
    lines += [json.dumps({"type": "probe", **r._asdict()}) for r in run.records]
    tmp = Path(f"{path}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # readers never see a half-written file


def load(path: str | Path) -> ProbeRun:
    meta: dict[str, Any] = {}
    records = []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        if d.get("type") == "meta":
            meta = d
        elif d.get("type") == "probe":
            records.append(ProbeRecord(d["seq"], d["send"], d["recv"], d["responder"]))
    return ProbeRun(meta, records)


def start(lab: Lab, target: str, port: int = 7000, *, duration: float,
          interval: float = 0.01, node: str = "client") -> LabProcess:
    """Run the prober in node (default the client); returns once it sends. Its results are
    in proc.data when it exits (duration over, or lab.stop(proc))."""
    data = lab.workdir / f"probe-{node}-{time.monotonic_ns()}.jsonl"
    p = lab.spawn_python(node, __name__, [
        "--target", target, "--port", str(port), "--interval", str(interval),
        "--duration", str(duration), "--out", str(data)])
    p.data = data
    lab.wait_for_output(p, "started")
    return p


# --- analysis ---------------------------------------------------------------------------------


def _window(records: Iterable[ProbeRecord], start: float | None,
            end: float | None) -> tuple[list[ProbeRecord], float, float]:
    recs = list(records)
    if not recs and (start is None or end is None):
        raise ValueError("no records: give start and end")
    lo = min(r.send for r in recs) if start is None else start
    hi = max(r.recv if r.recv is not None else r.send for r in recs) if end is None else end
    return recs, lo, hi


def _gaps(records: Iterable[ProbeRecord], start: float | None, end: float | None) -> list[Gap]:
    recs, lo, hi = _window(records, start, end)
    ok = sorted((r for r in recs if r.recv is not None and lo <= r.recv <= hi),
                key=lambda r: r.recv or 0.0)
    lost_at = sorted(r.send for r in recs if r.recv is None and lo <= r.send <= hi)
    edges: list[tuple[float, str | None]] = [(lo, None)]
    edges += [(r.recv, r.responder) for r in ok if r.recv is not None]
    edges.append((hi, None))
    gaps = []
    for (a, who_a), (b, who_b) in itertools.pairwise(edges):
        lost = sum(1 for t in lost_at if a < t < b)
        gaps.append(Gap(a, b, who_a, who_b, lost))
    return gaps


def outages(records: Iterable[ProbeRecord], start: float | None = None,
            end: float | None = None, *, min_ms: float = 25.0) -> list[Gap]:
    """Gaps between successful replies longer than min_ms (default: 2.5 probe intervals at
    10 ms, so a single lost probe, a 20 ms gap, is not an outage). The window edges count as
    replies, so no reply at all between start and end is one outage of the whole window."""
    return [g for g in _gaps(records, start, end) if g.ms > min_ms]


def longest_outage_ms(records: Iterable[ProbeRecord], start: float | None = None,
                      end: float | None = None) -> float:
    """The longest gap between successful replies; a clean 10 ms run gives ~10-20 ms."""
    return max((g.ms for g in _gaps(records, start, end)), default=0.0)


def responders_over_time(records: Iterable[ProbeRecord], start: float | None = None,
                         end: float | None = None) -> list[Span]:
    """Consecutive runs of the same responder, in order of arrival."""
    recs, lo, hi = _window(records, start, end)
    spans: list[Span] = []
    for r in sorted((r for r in recs if r.recv is not None and lo <= r.recv <= hi),
                    key=lambda r: r.recv or 0.0):
        assert r.recv is not None and r.responder is not None
        if spans and spans[-1].responder == r.responder:
            s = spans[-1]
            spans[-1] = Span(s.responder, s.first, r.recv, s.replies + 1)
        else:
            spans.append(Span(r.responder, r.recv, r.recv, 1))
    return spans


def reply_ratio(records: Sequence[ProbeRecord]) -> float:
    """Fraction of probes that got at least one reply."""
    seqs = {r.seq for r in records}
    return len({r.seq for r in records if r.recv is not None}) / len(seqs) if seqs else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="UDP prober for the netns lab")
    ap.add_argument("--target", required=True)
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--duration", type=float, required=True, help=f"<= {MAX_DURATION:.0f} s")
    ap.add_argument("--linger", type=float, default=0.2, help="wait for late replies (s)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    run = run_probe(a.target, a.port, a.interval, a.duration, a.linger)
    save(run, a.out)
    m = run.meta
    print(f"sent {m['sent']} replies {m['replies']} lag p99 {m['send_lag_p99_ms']:.3f} ms",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
