"""Outputs of the protocol core: effects for the runtime to carry out, in list order.

Ordering guarantees within one returned list (the runtime must execute in order):
1. `ReleaseVip` comes before every `Send` of the same step, so a successor can never be told to
   take over while this node still holds the address.
2. `Persist` comes before any `Send` whose content depends on it (a granted vote, a new term).
3. `AcquireVip` is followed by `Announce`; nothing slow is placed between them.
4. `Decision` records describe what the step did; `Notify` follows the role change it reports.
5. `CommandResult` answers an operator command and is the last action of that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hafailover.core.messages import Message
from hafailover.core.reasons import Reason, Role


@dataclass(frozen=True)
class PersistentState:
    """What survives a restart. Written before the messages that rely on it leave."""

    term: int = 0
    voted_for: str = ""
    maintenance: bool = False


@dataclass(frozen=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True)
class Persist:
    state: PersistentState


@dataclass(frozen=True)
class AcquireVip:
    term: int


@dataclass(frozen=True)
class ReleaseVip:
    reason: Reason


@dataclass(frozen=True)
class Announce:
    """Send gratuitous ARP / unsolicited NA for every VIP (the runtime repeats per config)."""

    reason: Reason


class NotifyKind(StrEnum):
    LEADER = "leader"
    FOLLOWER = "follower"
    UNHEALTHY = "unhealthy"
    MAINTENANCE = "maintenance"
    STOP = "stop"


@dataclass(frozen=True)
class Notify:
    kind: NotifyKind
    role: Role
    term: int
    leader: str


@dataclass(frozen=True)
class Decision:
    """A logged decision: what changed, why, and the facts behind it (for `status`/`events`)."""

    reason: Reason
    role: Role
    term: int
    leader: str
    detail: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandResult:
    request_id: int
    accepted: bool
    reason: Reason
    detail: str = ""


@dataclass(frozen=True)
class Exit:
    """The runtime must exit non-zero now, without the graceful path: systemd's
    `ExecStopPost=release-vips` removes the addresses and `Restart=` starts a fresh process."""

    reason: Reason
    detail: str


Action = (
    Send
    | Persist
    | AcquireVip
    | ReleaseVip
    | Announce
    | Notify
    | Decision
    | CommandResult
    | Exit
)
