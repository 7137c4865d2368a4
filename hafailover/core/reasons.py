"""Why the core did something: every decision, refusal and role change names one of these.

Values are stable short identifiers (they appear in logs, the event history and `status --json`);
`describe` in `hafailover.core.describe` turns a decision into an operator sentence.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Reason(StrEnum):
    # start-up and restart
    STARTED = "started"
    # a follower stopped hearing from its leader (or never had one) and stands for election
    LEADER_LOST = "leader-lost"
    PREVOTE_WON = "prevote-won"
    ELECTION_TIMEOUT = "election-timeout"
    ELECTED = "elected"
    # the leader's majority lease was renewed for the first time in its term: VIP acquired
    LEASE_ACQUIRED = "lease-acquired"
    # the leader did not hear a majority in time (partition, freeze, starvation)
    LEASE_EXPIRED = "lease-expired"
    # a message with a higher term arrived; this node follows it
    HIGHER_TERM = "higher-term"
    NEW_LEADER = "new-leader"
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"
    SWITCHOVER = "switchover"
    PREEMPT = "preempt"
    TRANSFER_RECEIVED = "transfer-received"
    VIP_CONFLICT = "vip-conflict"
    STOPPING = "stopping"
    # a barrier action failed (`EffectFailed`); the detail names the effect's own sentence
    PERSIST_FAILED = "persist-failed"
    RELEASE_FAILED = "release-failed"
    ACQUIRE_FAILED = "acquire-failed"
    # an effect that had failed works again (`EffectSucceeded`)
    EFFECT_RECOVERED = "effect-recovered"
    # operator-command outcomes
    ACCEPTED = "accepted"
    FORWARDED = "forwarded"
    TARGET_UNKNOWN = "target-unknown"
    TARGET_IS_WITNESS = "target-is-witness"
    TARGET_UNHEALTHY = "target-unhealthy"
    TARGET_IN_MAINTENANCE = "target-in-maintenance"
    TARGET_UNREACHABLE = "target-unreachable"
    TARGET_IS_LEADER = "target-is-leader"
    NO_ELIGIBLE_TARGET = "no-eligible-target"
    NO_LEADER = "no-leader"
    UNCHANGED = "unchanged"
    # a forwarded request got no `CommandReply` in time (detail names the node asked)
    COMMAND_TIMEOUT = "command-timeout"
    # a forwarded request reached a node in a later term than the forwarding node's
    STALE_TERM = "stale-term"
    # a forwarded switchover reached a node that is not (or no longer) the leader
    NOT_LEADER = "not-leader"
