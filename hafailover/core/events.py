"""Inputs to the protocol core. Frozen, typed, and all delivered with the current monotonic time.

The caller passes `now` separately (`Node.handle(event, now)`) so that an event can be built
before the time it is handled at is known (a queued packet, a verdict from a worker).
"""

from __future__ import annotations

from dataclasses import dataclass

from hafailover.core.messages import Message


@dataclass(frozen=True)
class MessageReceived:
    sender: str
    message: Message


@dataclass(frozen=True)
class TimerFired:
    """The deadline from `Node.next_deadline()` has passed (early or spurious calls are fine)."""


@dataclass(frozen=True)
class HealthChanged:
    healthy: bool
    detail: str = ""


@dataclass(frozen=True)
class Switchover:
    """Operator: hand the VIP over, to `target` or (empty) to the best other eligible node."""

    request_id: int
    target: str = ""


@dataclass(frozen=True)
class SetMaintenance:
    """Operator: maintenance on/off for `node` (empty: this node)."""

    request_id: int
    on: bool
    node: str = ""


@dataclass(frozen=True)
class VipConflict:
    """Another host answered ARP/ND for an address this node holds (a killed leader's leftover)."""

    address: str


@dataclass(frozen=True)
class Stop:
    """Graceful stop: a leader releases the VIP first and hands over."""


Event = (
    MessageReceived
    | TimerFired
    | HealthChanged
    | Switchover
    | SetMaintenance
    | VipConflict
    | Stop
)
