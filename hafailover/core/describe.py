"""Operator sentences for decisions: what `status` and `events` print.

Pure formatting of a `Decision` made by node `node`; kept in the core so the wording of every
reason lives next to the reasons themselves.
"""

from __future__ import annotations

from hafailover.core.actions import Decision
from hafailover.core.reasons import Reason

_FAILURES = {
    Reason.PERSIST_FAILED: "save its state",
    Reason.RELEASE_FAILED: "remove the VIP",
    Reason.ACQUIRE_FAILED: "add the VIP",
}
_FAILURE_RULES = {
    Reason.PERSIST_FAILED: "votes for no one and does not stand until a save works",
    Reason.RELEASE_FAILED: "retries, grants nothing, exits if it keeps failing",
    Reason.ACQUIRE_FAILED: "not eligible for a back-off",
}
_EFFECT_VERBS = {"persist": "save its state", "release": "remove the VIP", "acquire": "add the VIP"}


def describe(node: str, d: Decision) -> str:
    detail = d.detail
    target = str(detail.get("target", ""))
    previous = str(detail.get("previous", ""))
    why = str(detail.get("detail", ""))
    match d.reason:
        case Reason.STARTED:
            extra = " in maintenance" if detail.get("maintenance") else ""
            return f"{node} started{extra} (term {d.term})"
        case Reason.LEADER_LOST:
            return f"{node} stopped hearing a leader; asking peers for term {d.term + 1}"
        case Reason.PREVOTE_WON:
            return f"{node} won the pre-vote; standing in term {d.term}"
        case Reason.TRANSFER_RECEIVED:
            giver = detail.get("transfer_from")
            return f"{node} stands at once in term {d.term}: {giver} handed over"
        case Reason.ELECTION_TIMEOUT:
            return f"{node} did not win term {d.term} in time; will retry"
        case Reason.ELECTED:
            votes = f"{detail.get('votes')}/{detail.get('voters')}"
            return f"{node} elected: term {d.term}, {votes} votes"
        case Reason.LEASE_ACQUIRED:
            return f"{node} holds the VIP: majority lease in term {d.term}"
        case Reason.LEASE_EXPIRED:
            return f"{node} lost lease: unreachable from majority (term {d.term})"
        case Reason.HIGHER_TERM:
            return f"{node} saw term {d.term} and follows it (was {previous or 'follower'})"
        case Reason.NEW_LEADER:
            return f"{node} follows {d.leader} (term {d.term})"
        case Reason.UNHEALTHY:
            if target:
                return f"{node} unhealthy: hands the VIP to {target}"
            if previous == "leader":
                return f"{node} unhealthy: released the VIP"
            return f"{node} unhealthy{': ' + why if why else ''}"
        case Reason.HEALTHY:
            return f"{node} healthy again{': ' + why if why else ''}"
        case Reason.MAINTENANCE_ON:
            if target:
                return f"{node} in maintenance: hands the VIP to {target}"
            return f"{node} in maintenance"
        case Reason.MAINTENANCE_OFF:
            return f"{node} out of maintenance"
        case Reason.SWITCHOVER:
            if target:
                return f"{node} switchover: released the VIP, {target} takes over"
            return f"{node} stepped down for a switchover (term {d.term})"
        case Reason.PREEMPT:
            if target:
                return f"{node} preempted: {target} has higher priority and takes over"
            return f"{node} stepped down for preemption"
        case Reason.STOPPING:
            if target:
                return f"{node} stopping: released the VIP, {target} takes over"
            return f"{node} stopping"
        case Reason.VIP_CONFLICT:
            return f"{node} saw another host claim {detail.get('address')}; re-announced"
        case Reason.PERSIST_FAILED | Reason.RELEASE_FAILED | Reason.ACQUIRE_FAILED:
            what = _FAILURES[d.reason]
            if target:
                return f"{node} could not {what}: hands over to {target}"
            if previous:
                return f"{node} could not {what}: stepped down (was {previous})"
            does = _FAILURE_RULES[d.reason]
            return f"{node} could not {what} ({why}): {does}"
        case Reason.EFFECT_RECOVERED:
            return f"{node} can {_EFFECT_VERBS.get(str(detail.get('effect')), 'act')} again"
        case Reason.FORWARDED:
            return f"{node} forwarded an operator request to {target}; waiting for its answer"
        case _ if detail.get("refused"):
            refused = detail.get("refused")
            return f"{node} refused {refused} to {target or 'best node'}: {d.reason.value}"
        case _:
            return f"{node} {d.reason.value} (term {d.term})"
