"""The protocol state machine of one node: a Raft-style election with leader leases.

Design (the intended Raft-with-leases design, kept to what a VIP needs; no replicated log):

* Static voters, majority quorum. Term and the vote of each term are persisted (a `Persist`
  action that precedes any message relying on it), so a restarted node never votes twice.
* Leases come only from heartbeat acknowledgements. A follower that accepts a heartbeat
  promises, for `failover_timeout` on its own clock from *receipt*, not to vote for anyone but
  that leader. The leader counts a majority of acknowledgements for heartbeats it *sent* at time
  t and may hold the VIP until t + `Timings.lease_duration` (shortened for clock drift and a
  guard). Votes themselves promise nothing: a leader without acknowledged heartbeats holds no
  VIP, which costs one round trip after an election but lets failed candidacies block nobody.
* A node that starts refuses every vote for one `failover_timeout`: promises made before a
  crash are not persisted, so this is how they are kept.
* PreVote: a node first asks whether it *could* win at term+1 without raising its term; voters
  that still keep a promise refuse. A node cut off and rejoining therefore never inflates terms.
  Refusals carry how long the promise still runs so the candidate retries right when it ends.
* Health gating: unhealthy, maintenance and witness nodes never stand; voters refuse requests
  that say the candidate is unhealthy or in maintenance. A leader that becomes unhealthy
  releases the VIP *then* tells its best peer to stand at once (leadership transfer).
* Transfer: the leader releases the VIP, sends TimeoutNow and steps down; the target stands
  immediately naming the old leader, and voters may ignore their promise to exactly that leader
  for exactly the next term. A stale or duplicated TimeoutNow is ignored unless it comes from
  the leader of the receiver's current term.
* Freeze safety: every entry point first releases the VIP if the lease has run out, before it
  looks at the event.

Role changes happen only in the `_become_*` methods. The action list of one step is ordered
as documented in `hafailover.core.actions`.
"""

from __future__ import annotations

from typing import Protocol

from hafailover.core import commands
from hafailover.core.actions import (
    AcquireVip,
    Action,
    Announce,
    CommandResult,
    Decision,
    Notify,
    NotifyKind,
    Persist,
    PersistentState,
    ReleaseVip,
    Send,
)
from hafailover.core.events import (
    Event,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Stop,
    Switchover,
    TimerFired,
    VipConflict,
)
from hafailover.core.messages import (
    Heartbeat,
    HeartbeatAck,
    MaintenanceRequest,
    Message,
    PeerSummary,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)
from hafailover.core.peers import NEVER, PeerTable
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec
from hafailover.core.view import NodeView, node_view

INF = float("inf")


class RandomSource(Protocol):
    """The injected randomness (a seeded `random.Random`); the core never creates its own."""

    def uniform(self, a: float, b: float) -> float: ...


# A retry scheduled on a voter's `retry_after` lands this much later, so its promise has ended.
RETRY_SLACK = 0.002


class Node:
    def __init__(
        self,
        spec: ClusterSpec,
        name: str,
        rng: RandomSource,
        persisted: PersistentState | None = None,
        healthy: bool = True,
    ) -> None:
        me = spec.node(name)
        if me is None:
            raise ValueError(f"node {name!r} is not in the cluster ({', '.join(spec.names)})")
        spec.timings.validate()
        self.spec = spec
        self.me = me
        self.name = name
        self._t = spec.timings
        self._rng = rng
        state = persisted or PersistentState()
        self.term = state.term
        self.voted_for = state.voted_for
        self.maintenance = state.maintenance
        self.healthy = healthy
        self.role = Role.FOLLOWER
        self.leader = ""
        self.holds_vip = False
        self.peers = PeerTable(spec, name)
        self._out: list[Action] = []
        self._started = False
        # Follower: the promise not to vote for anyone but `_promise_to` (in `_promise_term`).
        self._promise_until = NEVER
        self._promise_to = ""
        self._promise_term = -1
        self._leader_contact = NEVER
        self._election_at = INF
        # (Pre-)candidate.
        self._votes: set[str] = set()
        self._round_deadline = INF
        # Leader.
        self._round = 0
        self._round_sent: dict[int, float] = {}
        self._heartbeat_at = INF
        self._lease_until = NEVER
        self._stepdown_at = INF
        self._last_now = NEVER

    # ------------------------------------------------------------------ public interface

    def start(self, now: float) -> list[Action]:
        """First call after construction (a start or a restart with persisted state)."""
        self._out = []
        self._started = True
        self._last_now = now
        # Promises given before a crash were not persisted: keep them by refusing all votes
        # for one failover timeout.
        self._promise_until = now + self._t.failover_timeout
        self._promise_to = ""
        self._election_at = self._promise_until + self._election_delay(exclude="")
        self._decide(Reason.STARTED, maintenance=self.maintenance, healthy=self.healthy)
        self._out.append(Notify(NotifyKind.FOLLOWER, self.role, self.term, self.leader))
        return self._flush()

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event at monotonic time `now`; returns the actions, in execution order."""
        if not self._started:
            raise RuntimeError("Node.start() must be called first")
        self._out = []
        self._last_now = max(self._last_now, now)
        # Freeze safety: before anything else, a lease that ran out while we were not looking
        # (stopped process, starved loop, late timer) drops the VIP.
        self._expire_lease(now)
        match event:
            case TimerFired():
                self._on_timer(now)
            case MessageReceived(sender=sender, message=message):
                if sender != self.name and self.peers.get(sender) is not None:
                    self._on_message(sender, message, now)
            case HealthChanged(healthy=healthy, detail=detail):
                self._on_health(healthy, detail, now)
            case Switchover(request_id=rid, target=target):
                commands.on_switchover(self, rid, target, now)
            case SetMaintenance(request_id=rid, on=on, node=node):
                commands.on_set_maintenance(self, rid, on, node, now)
            case VipConflict(address=address):
                if self.holds_vip:
                    self._decide(Reason.VIP_CONFLICT, address=address)
                    self._out.append(Announce(Reason.VIP_CONFLICT))
            case Stop():
                commands.on_stop(self, now)
        self._maybe_acquire(now)
        return self._flush()

    def next_deadline(self) -> float:
        """The monotonic time at which `handle(TimerFired(), now)` must next be called."""
        if self.role is Role.LEADER:
            deadline = min(self._heartbeat_at, self._stepdown_at)
            if self.holds_vip:
                deadline = min(deadline, self._lease_until)
            if self.spec.preempt:
                for p in self.peers.peers.values():
                    if p.eligible_since is not None and p.spec.priority > self.me.priority:
                        deadline = min(deadline, p.eligible_since + self._t.preempt_delay)
            return deadline
        if self.role is Role.FOLLOWER:
            return self._election_at
        return self._round_deadline

    @property
    def eligible(self) -> bool:
        return self.healthy and not self.maintenance and not self.me.witness

    @property
    def promise(self) -> tuple[str, int, float]:
        """(leader, term, until): whom this node will not vote against, and until when."""
        return (self._promise_to, self._promise_term, self._promise_until)

    @property
    def lease_until(self) -> float:
        return self._lease_until if self.role is Role.LEADER else NEVER

    def persistent_state(self) -> PersistentState:
        return PersistentState(self.term, self.voted_for, self.maintenance)

    @property
    def leader_contact(self) -> float:
        """When this follower last heard its leader (monotonic; -inf if never)."""
        return self._leader_contact

    def view(self, now: float) -> NodeView:
        return node_view(self, now)

    # ------------------------------------------------------------------ role changes

    def _become_follower(self, term: int, leader: str, reason: Reason, now: float) -> None:
        was = self.role
        if self.holds_vip:
            self._release(reason)
        if term > self.term:
            self.term = term
            self.voted_for = ""
            self._persist()
        self.role = Role.FOLLOWER
        self.leader = leader
        self._votes = set()
        self._round_deadline = INF
        self._heartbeat_at = INF
        self._stepdown_at = INF
        self._lease_until = NEVER
        if not leader:
            # No leader to wait for: stand again after a full timeout (a transfer target or a
            # better-ranked node gets its chance first).
            self._election_at = now + self._t.failover_timeout + self._election_delay("")
        if was is not Role.FOLLOWER or reason in (Reason.NEW_LEADER, Reason.HIGHER_TERM):
            self._decide(reason, previous=was.value)
        if was is Role.LEADER:
            self._out.append(Notify(NotifyKind.FOLLOWER, self.role, self.term, self.leader))

    def _become_pre_candidate(self, reason: Reason, now: float) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = ""
        self._decide(reason, proposed_term=self.term + 1)
        self._start_round(pre=True, transfer_from="", now=now)

    def _become_candidate(self, reason: Reason, transfer_from: str, now: float) -> None:
        self.role = Role.CANDIDATE
        self.leader = ""
        self.term += 1
        self.voted_for = self.name
        self._persist()
        self._decide(reason, transfer_from=transfer_from)
        self._start_round(pre=False, transfer_from=transfer_from, now=now)

    def _become_leader(self, now: float) -> None:
        self.role = Role.LEADER
        self.leader = self.name
        self._round_deadline = INF
        self._election_at = INF
        self._lease_until = NEVER
        # Our own promise to an earlier leader is void: that leader released the VIP (transfer)
        # or its lease ran out (we only stood after the promise ended). Clearing it lets this
        # leader vote for its own transfer target later.
        self._promise_until = NEVER
        self._promise_to = ""
        # Without a majority acknowledgement within one lease the new leader gives up.
        self._stepdown_at = now + self._t.lease_duration
        self._round_sent = {}
        self.peers.reset_acks()
        self._decide(Reason.ELECTED, votes=len(self._votes), voters=len(self.spec.nodes))
        self._send_heartbeats(now)

    # ------------------------------------------------------------------ timers and leases

    def _expire_lease(self, now: float) -> None:
        if self.role is not Role.LEADER:
            return
        if self.holds_vip and now >= self._lease_until:
            self._release(Reason.LEASE_EXPIRED)
        if now >= self._stepdown_at:
            self._become_follower(self.term, "", Reason.LEASE_EXPIRED, now)

    def _on_timer(self, now: float) -> None:
        if self.role is Role.LEADER:
            if now >= self._heartbeat_at:
                self._send_heartbeats(now)
            self._track_reachability(now)
            self._maybe_preempt(now)
        elif self.role is Role.FOLLOWER:
            if now >= self._election_at:
                if self.eligible:
                    self._become_pre_candidate(Reason.LEADER_LOST, now)
                else:
                    self._election_at = now + self._t.failover_timeout
        elif now >= self._round_deadline:
            if self.role is Role.PRE_CANDIDATE and self.eligible:
                self._start_round(pre=True, transfer_from="", now=now)
            else:
                self._become_follower(self.term, "", Reason.ELECTION_TIMEOUT, now)
                # A split or lost vote: try again soon, randomised so rivals fall apart.
                self._election_at = now + self._election_delay("") + self._rng.uniform(
                    0, self._t.election_round_timeout
                )

    def _election_delay(self, exclude: str) -> float:
        step = self._t.election_step
        return self.peers.better_ranked(self.me, exclude) * step + self._rng.uniform(0, step / 2)

    def _send_heartbeats(self, now: float) -> None:
        self._round += 1
        self._round_sent[self._round] = now
        self._round_sent.pop(self._round - 64, None)
        self._heartbeat_at = now + self._t.heartbeat_interval
        own = PeerSummary(self.name, self.healthy, self.maintenance, True)
        summaries = self.peers.summaries(now, self._t.failover_timeout, own)
        for peer in self.peers.peers:
            self._send(peer, Heartbeat(self.term, self._round, summaries))
        self._renew_lease(now)

    def _renew_lease(self, now: float) -> None:
        newest = self._round_sent.get(self._round, NEVER)
        lease = self.peers.lease_base(newest) + self._t.lease_duration
        if lease > self._lease_until:
            # Once a lease exists the leader steps down exactly when it ends.
            self._lease_until = lease
            self._stepdown_at = lease

    def _maybe_acquire(self, now: float) -> None:
        if (
            self.role is Role.LEADER
            and not self.holds_vip
            and self.eligible
            and now < self._lease_until
        ):
            self.holds_vip = True
            self._out.append(AcquireVip(self.term))
            self._out.append(Announce(Reason.LEASE_ACQUIRED))
            self._decide(Reason.LEASE_ACQUIRED, lease_ms=round((self._lease_until - now) * 1000))
            self._out.append(Notify(NotifyKind.LEADER, self.role, self.term, self.leader))

    def _release(self, reason: Reason) -> None:
        self.holds_vip = False
        self._out.append(ReleaseVip(reason))

    def _track_reachability(self, now: float) -> None:
        for p in self.peers.peers.values():
            if not p.reachable(now, self._t.failover_timeout):
                p.eligible_since = None

    def _maybe_preempt(self, now: float) -> None:
        if not self.spec.preempt or self.role is not Role.LEADER:
            return
        due = [
            p
            for p in self.peers.peers.values()
            if p.eligible_since is not None
            and p.spec.priority > self.me.priority
            # Same expression as in next_deadline(), so the timer that fires for it also passes.
            and now >= p.eligible_since + self._t.preempt_delay
        ]
        if due:
            target = max(due, key=lambda p: (p.spec.priority, p.spec.name)).spec.name
            self._hand_over(Reason.PREEMPT, target, now)

    # ------------------------------------------------------------------ messages

    def _on_message(self, sender: str, msg: Message, now: float) -> None:
        match msg:
            case Heartbeat():
                self._on_heartbeat(sender, msg, now)
            case HeartbeatAck():
                self._on_ack(sender, msg, now)
            case VoteRequest():
                self._on_vote_request(sender, msg, now)
            case VoteResponse():
                self._on_vote_response(sender, msg, now)
            case TimeoutNow():
                self._on_timeout_now(sender, msg, now)
            case TransferRequest(target=target):
                if self.role is Role.LEADER:
                    commands.switchover_as_leader(self, None, target, now)
            case MaintenanceRequest(on=on):
                commands.set_own_maintenance(self, None, on, now)

    def _on_heartbeat(self, sender: str, hb: Heartbeat, now: float) -> None:
        if hb.term < self.term:
            self._ack(sender, hb.round, success=False)
            return
        if self.role is Role.LEADER and hb.term == self.term:
            return  # impossible with one leader per term; never follow a same-term rival
        if hb.term > self.term or self.role is not Role.FOLLOWER or self.leader != sender:
            reason = Reason.HIGHER_TERM if hb.term > self.term else Reason.NEW_LEADER
            self._become_follower(hb.term, sender, reason, now)
        self.leader = sender
        self._leader_contact = now
        self._promise_until = now + self._t.failover_timeout
        self._promise_to = sender
        self._promise_term = hb.term
        self.peers.apply_summaries(hb.peers)
        info = self.peers.get(sender)
        if info is not None:
            info.last_heard = now
        self._election_at = self._promise_until + self._election_delay(exclude=sender)
        self._ack(sender, hb.round, success=True)

    def _ack(self, to: str, rnd: int, success: bool) -> None:
        self._send(to, HeartbeatAck(self.term, rnd, success, self.healthy, self.maintenance))

    def _on_ack(self, sender: str, ack: HeartbeatAck, now: float) -> None:
        if ack.term > self.term:
            self._become_follower(ack.term, "", Reason.HIGHER_TERM, now)
            return
        if self.role is not Role.LEADER or ack.term != self.term:
            return
        info = self.peers.heard(sender, now, ack.healthy, ack.maintenance)
        if info is None:
            return
        if info.eligible() and ack.healthy:
            if info.eligible_since is None:
                info.eligible_since = now
        else:
            info.eligible_since = None
        sent = self._round_sent.get(ack.round)
        if ack.success and sent is not None and sent > info.acked_sent_at:
            info.acked_sent_at = sent
            self._renew_lease(now)
        self._maybe_preempt(now)

    def _refusal_wait(self, sender: str, req: VoteRequest, now: float) -> float | None:
        """How long this node's promise still forbids voting for `sender`; None if it doesn't."""
        if self.role is Role.LEADER:
            return max(self._lease_until, self._stepdown_at) - now
        if now >= self._promise_until:
            return None
        if self._promise_to and self._promise_to == sender:
            return None
        transfer = (
            req.transfer_from != ""
            and req.transfer_from == self._promise_to
            and req.term == self._promise_term + 1
            and not req.pre
        )
        return None if transfer else self._promise_until - now

    def _on_vote_request(self, sender: str, req: VoteRequest, now: float) -> None:
        spec = self.peers.get(sender)
        wait = self._refusal_wait(sender, req, now)
        refuse = (
            spec is None or spec.spec.witness or not req.healthy or req.maintenance
            or wait is not None
        )
        if req.pre:
            granted = not refuse and req.term > self.term
            self._send(sender, self._vote_response(req.term if granted else self.term, True,
                                                   granted, wait))
            return
        if wait is not None:
            # Raft's lease rule: a voter keeping a promise ignores even a higher term.
            self._send(sender, self._vote_response(self.term, False, False, wait))
            return
        if req.term > self.term:
            self._become_follower(req.term, "", Reason.HIGHER_TERM, now)
        granted = (
            not refuse and req.term == self.term and self.voted_for in ("", sender)
        )
        if granted and self.voted_for != sender:
            self.voted_for = sender
            self._persist()
        if granted:
            # Give the candidate time to finish before standing ourselves.
            self._election_at = max(self._election_at, now + self._t.failover_timeout)
        self._send(sender, self._vote_response(self.term, False, granted, None))

    def _vote_response(
        self, term: int, pre: bool, granted: bool, wait: float | None
    ) -> VoteResponse:
        return VoteResponse(
            term, pre, granted, self.healthy, self.maintenance, max(wait or 0.0, 0.0)
        )

    def _on_vote_response(self, sender: str, resp: VoteResponse, now: float) -> None:
        self.peers.heard(sender, now, resp.healthy, resp.maintenance)
        if resp.term > self.term and not resp.granted:
            # A refusal from a later term: that term exists, follow it. No leader is known, so
            # stand again as soon as the voter's promise (if any) allows, not a whole timeout
            # later: a node restarted with a stale term would otherwise lose one round for it.
            self._become_follower(resp.term, "", Reason.HIGHER_TERM, now)
            wait = resp.retry_after + RETRY_SLACK if resp.retry_after > 0 else 0.0
            self._election_at = now + wait + self._election_delay("")
            return
        expected_pre = self.role is Role.PRE_CANDIDATE
        if self.role not in (Role.PRE_CANDIDATE, Role.CANDIDATE) or resp.pre != expected_pre:
            return
        wanted_term = self.term + 1 if expected_pre else self.term
        if resp.granted and resp.term == wanted_term:
            self._votes.add(sender)
            if len(self._votes) >= self.spec.quorum:
                if expected_pre:
                    self._become_candidate(Reason.PREVOTE_WON, "", now)
                else:
                    self._become_leader(now)
        elif not resp.granted and resp.retry_after > 0:
            self._round_deadline = min(self._round_deadline, now + resp.retry_after + RETRY_SLACK)

    def _on_timeout_now(self, sender: str, msg: TimeoutNow, now: float) -> None:
        if (
            msg.term == self.term
            and sender == self.leader
            and self.role is Role.FOLLOWER
            and self.eligible
        ):
            self._become_candidate(Reason.TRANSFER_RECEIVED, sender, now)

    def _start_round(self, pre: bool, transfer_from: str, now: float) -> None:
        self._votes = {self.name}
        self._round_deadline = now + self._t.election_round_timeout
        term = self.term + 1 if pre else self.term
        for peer in self.peers.peers:
            req = VoteRequest(term, pre, self.healthy, self.maintenance, transfer_from)
            self._send(peer, req)
        if len(self._votes) >= self.spec.quorum:  # a one-node cluster
            if pre:
                self._become_candidate(Reason.PREVOTE_WON, "", now)
            else:
                self._become_leader(now)

    # ------------------------------------------------------------------ health and operators

    def _on_health(self, healthy: bool, detail: str, now: float) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self._decide(Reason.HEALTHY if healthy else Reason.UNHEALTHY, detail=detail)
        if healthy:
            return
        self._out.append(Notify(NotifyKind.UNHEALTHY, self.role, self.term, self.leader))
        if self.role is Role.LEADER:
            self._hand_over(Reason.UNHEALTHY, "", now)
        elif self.role is not Role.FOLLOWER:
            self._become_follower(self.term, "", Reason.UNHEALTHY, now)

    def _hand_over(self, reason: Reason, target: str, now: float) -> None:
        """Release the VIP, then (if anyone can take it) tell the successor to stand now."""
        ft = self._t.failover_timeout
        target = target or self.peers.best_target(now, ft)
        if self.holds_vip:
            self._release(reason)
        if target:
            self._decide(reason, target=target)
            self._send(target, TimeoutNow(self.term))
        self._become_follower(self.term, "", reason, now)

    # ------------------------------------------------------------------ output helpers

    def _send(self, to: str, message: Message) -> None:
        self._out.append(Send(to, message))

    def _persist(self) -> None:
        self._out.append(Persist(self.persistent_state()))

    def _decide(self, reason: Reason, **detail: str | int | float | bool) -> None:
        self._out.append(Decision(reason, self.role, self.term, self.leader, dict(detail)))

    def _result(self, rid: int, accepted: bool, reason: Reason, detail: str) -> None:
        self._out.append(CommandResult(rid, accepted, reason, detail))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out
