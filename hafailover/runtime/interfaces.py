"""This host's interfaces and their addresses, read once over netlink (pyroute2).

Used outside the event loop only: by `hafailover run` before the loop starts (to find which
configured node this host is, when neither --node nor the hostname decides) and by
`check-config` (which interfaces exist, which subnets they carry). pyroute2's synchronous
`IPRoute` cannot run inside a running asyncio loop; the daemon's own netlink work goes through
`hafailover.net.vip`'s asynchronous port instead.
"""

from __future__ import annotations

import contextlib
import ipaddress

from hafailover.net.vip import IPInterface


def interface_networks() -> dict[str, list[IPInterface]] | str:
    """Each interface's addresses, or a sentence saying why they could not be read."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            networks: dict[str, list[IPInterface]] = {str(n): [] for n in names.values()}
            for addr in ipr.get_addr():
                name = str(names.get(addr["index"], "?"))
                with contextlib.suppress(TypeError, ValueError):
                    local = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
                    networks.setdefault(name, []).append(
                        ipaddress.ip_interface(f"{local}/{addr['prefixlen']}")
                    )
    except Exception as e:  # netlink refused, pyroute2 missing: report, don't crash the caller
        return f"cannot list this host's addresses over netlink ({e})"
    return networks
