"""Outputs of the protocol core: effects for the runtime to carry out, in list order.

Ordering guarantees within one returned list (the runtime must execute in order):
1. `ReleaseVip` comes before every `Send` of the same step, so a successor can never be told to
   take over while this node still holds the address. (One exception, below: the heartbeats
   of a former leader whose release failed, which only keep other nodes from taking over.)
2. `Persist` comes before any `Send` whose content depends on it (a granted vote, a new term).
3. `AcquireVip` is followed by `Announce`; nothing slow is placed between them.
4. `Decision` records describe what the step did; `Notify` follows the role change it reports.
5. `CommandResult`s answer operator commands and come after every other action of the step.
   A command forwarded to another node is answered in a later step: when that node's
   `CommandReply` arrives, or refused with `COMMAND_TIMEOUT` after `Timings.command_timeout`.

Barriers. `Persist`, `ReleaseVip` and `AcquireVip` are barriers. The runtime's rule: when a
barrier fails, it carries out no further action of that step except `ReleaseVip` (always
attempted), `Decision` (recorded) and `Exit`; a `CommandResult` of that step is answered as
refused with the failure's sentence. It then feeds `EffectFailed(kind, detail)` and carries out
the actions of that step under the same rule. It keeps the set of failing kinds; when a barrier
of a failing kind succeeds, it feeds `EffectSucceeded(kind)` after that step.

What the core does about each (`hafailover.core.faults` keeps the facts, `Node` the rules):
* Persist failed: the vote or term that needed it was not sent (the barrier), and it stays
  unsent: until a save succeeds the node refuses every vote (pre-votes too) and never stands;
  a candidate gives up its candidacy. It keeps acknowledging its leader (a promise needs no
  disk: a restarted node refuses votes for one failover timeout anyway). The core re-emits
  `Persist` of its current state every `failover_timeout`, last in a step that has no other
  `Persist` and no `CommandResult`. A leader keeps leading (it needs no disk to do so).
* ReleaseVip failed: the address may still be on this host. The node leads no more, hands
  nothing over (the step's `TimeoutNow` was held back by the barrier), refuses every vote,
  acknowledges heartbeats with success=False (so it backs no lease) and reports itself not
  eligible. It re-emits `ReleaseVip` every `heartbeat_interval`; if it led the current term,
  each retry is preceded by a heartbeat (round 0) to its followers, so that their promises, and
  with them every other candidacy, stay blocked while the address may still be here. After
  `EffectSucceeded` it sends the held-back `TimeoutNow` if its term has not moved. If the
  release still fails one `failover_timeout` (one lease plus its drift and guard margins) after
  the first failure, it emits `Exit`: systemd's `ExecStopPost=release-vips` and `Restart=`
  take over.
* AcquireVip failed: the node does not hold the VIP (no `Announce` went out). It is not eligible
  for `Timings.acquire_backoff` (told to peers as healthy=False) and hands over like an
  unhealthy leader: `ReleaseVip` (whatever the failed add left behind), then `TimeoutNow` to
  the best peer. After the back-off it may stand again, so the acquire is retried when it wins.
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
