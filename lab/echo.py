"""Tiny UDP echo service: answers each datagram with b"NODE:" + payload.

Run on every node (bound to 0.0.0.0, so it also answers on a floating VIP); the prefix tells
the prober which node served each request. Replies leave from the address the request was
sent to (IP_PKTINFO), as a real service on a VIP would, so a client that filters on the
server address still sees them.

    python -m lab.echo --name node1 --port 7000
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence

from lab.netns import Lab, LabProcess

# Not exported by Python 3.11's socket module; the value is fixed by the Linux ABI.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr


def serve(name: str, port: int, bind: str = "0.0.0.0", lifetime: float = 3600.0) -> int:
    """Serve until SIGTERM/SIGINT or lifetime seconds (bounded so a stray echo cannot
    outlive its lab for long); returns the number of datagrams answered."""
    prefix = name.encode() + b":"
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((bind, port))
        # A timeout (not a blocking recv) so the stop flag and the lifetime are honoured.
        sock.settimeout(0.2)
        print("ready", flush=True)
        deadline = time.monotonic() + lifetime
        while not stop and time.monotonic() < deadline:
            try:
                data, anc, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(_PKTINFO.size))
            except (TimeoutError, InterruptedError):
                continue
            reply = prefix + data
            local = next((c for lvl, typ, c in anc if lvl == socket.IPPROTO_IP
                          and typ == IP_PKTINFO and len(c) >= _PKTINFO.size), None)
            try:
                if local is None:
                    raise OSError("no pktinfo")
                _ifindex, _spec, dst = _PKTINFO.unpack_from(local)
                # spec_dst = the request's destination: the reply's source is the VIP.
                cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, dst, b"\0" * 4))]
                sock.sendmsg([reply], cmsg, 0, peer)
            except OSError:
                # The VIP may have left this node between request and reply.
                try:
                    sock.sendto(reply, peer)
                except OSError:
                    continue
            answered += 1
    return answered


def start(lab: Lab, port: int = 7000, nodes: Sequence[str] | None = None
          ) -> dict[str, LabProcess]:
    """Run the echo on each node (default: all) and wait until every one is listening."""
    procs = {n: lab.spawn_python(n, __name__, ["--name", n, "--port", str(port)])
             for n in (nodes if nodes is not None else lab.nodes)}
    for p in procs.values():
        lab.wait_for_output(p, "ready")
    return procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--name", required=True, help="node name put in front of every reply")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many s")
    a = ap.parse_args(argv)
    n = serve(a.name, a.port, a.bind, a.lifetime)
    print(f"answered {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
