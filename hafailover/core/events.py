"""Inputs to the protocol core. Frozen, typed, and all delivered with the current monotonic time.

The caller passes `now` separately (`Node.handle(event, now)`) so that an event can be built
before the time it is handled at is known (a queued packet, a verdict from a worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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
    """Graceful stop, final: a leader releases the VIP first and hands over; from then on the
    node never stands, never takes the VIP and tells its peers it is not eligible."""


class Effect(StrEnum):
    """The kinds of barrier action (see `hafailover.core.actions`) whose failure is reported."""

    PERSIST = "persist"
    ACQUIRE = "acquire"
    RELEASE = "release"


@dataclass(frozen=True)
class EffectFailed:
    """A barrier action of kind `effect` failed; `detail` says why, in one operator sentence.

    Fed by the runtime right after the step whose action failed (that step's later actions were
    carried out only as the barrier rule in `hafailover.core.actions` allows).
    """

    effect: Effect
    detail: str


@dataclass(frozen=True)
class EffectSucceeded:
    """An action of kind `effect` succeeded while an `EffectFailed` of that kind was not yet
    cleared. Fed after the step that carried it out; never fed without an earlier failure."""

    effect: Effect


Event = (
    MessageReceived
    | TimerFired
    | HealthChanged
    | Switchover
    | SetMaintenance
    | VipConflict
    | Stop
    | EffectFailed
    | EffectSucceeded
)
