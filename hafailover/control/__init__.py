"""The local control socket: a versioned JSON protocol between the CLI and the daemon.

`protocol` is the pure wire format, `server` the daemon side (asyncio), `client` the CLI side
(blocking). Importing this package does not import asyncio; import the submodules you need.
"""

from __future__ import annotations

from hafailover.control.protocol import (
    PROTOCOL_VERSION,
    EventsRequest,
    MaintenanceRequest,
    PingRequest,
    ProtocolError,
    Request,
    StatusRequest,
    SwitchoverRequest,
)

__all__ = [
    "PROTOCOL_VERSION",
    "EventsRequest",
    "MaintenanceRequest",
    "PingRequest",
    "ProtocolError",
    "Request",
    "StatusRequest",
    "SwitchoverRequest",
]
