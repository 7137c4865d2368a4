"""Network effects of the daemon: VIP addresses (`vip`) and their announcement (`announce`).

Importing this package imports nothing else on purpose: `vip` and `announce` use only the
standard library, and `craft` (scapy, +27 MB) runs in a short-lived subprocess at start-up,
never in the daemon process.
"""
