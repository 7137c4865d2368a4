"""Network effects of the daemon: VIP addresses (`vip`), link and address events (`links`) and
the VIPs' announcement (`announce`).

Importing this package imports nothing else on purpose. `vip` and `links` import pyroute2
(~11 MB of RSS) only when a port or watcher first talks to the kernel, so commands that never
do stay light; `craft` (scapy, +27 MB) runs in a short-lived subprocess at start-up, never in
the daemon process.
"""
