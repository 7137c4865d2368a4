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
* Cold start: until it has seen a leader, a node also waits `startup_settle` per better-ranked
  node that may be eligible before it stands, so priority picks the first leader without a
  preemption hop. The wait is bounded, so a one-way partition delays but never blocks.
* PreVote: a node first asks whether it *could* win at term+1 without raising its term; voters
  that still keep a promise refuse. A node cut off and rejoining therefore never inflates terms.
  Refusals carry how long the promise still runs so the candidate retries right when it ends.
* Terms: every peer message carries one and `_on_message` compares it once, first (as
  etcd-io/raft's `Step`): a later term makes this node a follower of that term (except a
  pre-vote, and a vote request met by a promise: Raft's lease rule); an earlier one is answered
  as stale (a heartbeat gets a failed ack, a vote request a refusal, a forwarded command a
  `STALE_TERM` reply) or dropped. A `CommandReply` is matched whatever its term.
* Health gating: unhealthy, maintenance, stopped and witness nodes never stand; voters refuse
  requests that say the candidate is unhealthy or in maintenance. A leader that becomes
  unhealthy releases the VIP *then* tells its best peer to stand at once (leadership transfer).
* Transfer: the leader releases the VIP, sends TimeoutNow and steps down; the target stands
  immediately naming the old leader, and voters may ignore their promise to exactly that leader
  for exactly the next term. A stale or duplicated TimeoutNow is ignored unless it comes from
  the leader of the receiver's current term.
* Effects that fail (`EffectFailed`, rules in `hafailover.core.actions`): a node that cannot
  save refuses votes and does not stand; a node whose release failed refuses votes, acks with
  success=False, retries, and exits after one failover timeout; a failed acquire hands over
  like an unhealthy leader and keeps the node ineligible for a back-off.
* Stop is final: the node never stands, never takes the VIP, and tells peers it is not eligible.
* Operator commands carried out elsewhere are answered by a `CommandReply`; the forwarding
  node reports the reply, or `COMMAND_TIMEOUT` after `Timings.command_timeout`.
* Freeze safety: every entry point first releases the VIP if the lease has run out, before it
  looks at the event.

Role changes happen only in the `_become_*` methods, which refuse an illegal transition. The
action list of one step is ordered as documented in `hafailover.core.actions`.
"""

from __future__ import annotations

from typing import Protocol

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
from hafailover.core.commands import Outcome, PendingCommands, check_target
from hafailover.core.events import (
    Effect,
    EffectFailed,
    EffectSucceeded,
    Event,
    HealthChanged,
    MessageReceived,
    SetMaintenance,
    Stop,
    Switchover,
    TimerFired,
    VipConflict,
)
from hafailover.core.faults import EffectFaults, skipped_by
from hafailover.core.lease import LeaderLease, Promise
from hafailover.core.liveness import Bucket
from hafailover.core.messages import (
    CommandReply,
    ElectionMessage,
    Heartbeat,
    HeartbeatAck,
    MaintenanceRequest,
    NodeAck,
    NodeHeartbeat,
    PeerSummary,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)
from hafailover.core.peers import INF, NEVER, PeerTable
from hafailover.core.reasons import Reason, Role
from hafailover.core.spec import ClusterSpec, SpecError
from hafailover.core.view import NodeFacts, NodeView, build_view
from hafailover.errors import HafailoverError, LocalError

# A retry scheduled on a voter's `retry_after` lands this much later, so its promise has ended.
RETRY_SLACK = 0.002

_LEGAL: dict[Role, frozenset[Role]] = {
    Role.FOLLOWER: frozenset({Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE}),
    Role.PRE_CANDIDATE: frozenset({Role.FOLLOWER, Role.CANDIDATE}),
    Role.CANDIDATE: frozenset({Role.FOLLOWER, Role.LEADER}),
    Role.LEADER: frozenset({Role.FOLLOWER}),
}

_FAILED = {
    Effect.PERSIST: Reason.PERSIST_FAILED,
    Effect.RELEASE: Reason.RELEASE_FAILED,
    Effect.ACQUIRE: Reason.ACQUIRE_FAILED,
}


class InvalidTransition(HafailoverError):
    """A role change the protocol forbids: a bug in the core, never an input's fault."""


class NotStarted(LocalError):
    """`Node.handle` was called before `Node.start`: the caller's misuse."""


class RandomSource(Protocol):
    """The injected randomness (a seeded `random.Random`); the core never creates its own."""

    def uniform(self, a: float, b: float) -> float: ...


class Node:
    def __init__(
        self,
        spec: ClusterSpec,
        name: str,
        rng: RandomSource,
        persisted: PersistentState | None = None,
        healthy: bool = True,
        live: Bucket | None = None,
    ) -> None:
        """`live`: the node's shared `Liveness` when several groups run over node-level
        heartbeats (`hafailover.core.groups`); None: this election's own heartbeats only."""
        me = spec.node(name)
        if me is None:
            raise SpecError(f"node {name!r} is not in the cluster ({', '.join(spec.names)})")
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
        self.stopped = False
        self.role = Role.FOLLOWER
        self.leader = ""
        self.holds_vip = False
        self._live = live
        self.peers = PeerTable(spec, name, live)
        self.faults = EffectFaults(spec.timings)
        self._pending = PendingCommands()
        self._out: list[Action] = []
        self._started = False
        self._promise = Promise()
        self._leader_contact = NEVER
        self._election_at = INF
        # Cold start: no standing before this until a leader has been seen.
        self._settle_until = NEVER
        # (Pre-)candidate.
        self._votes: set[str] = set()
        self._round_deadline = INF
        self._lease = LeaderLease(spec.timings, self.peers, live)
        # Follower, with node liveness: fortified the leader of this term (acknowledged one of
        # its heartbeats with success); the election delay and peer summary of that heartbeat.
        self._fortified_term = -1
        self._fort_delay = 0.0
        self._summary = ""
        # Leader: `leader_keys()` and the state it was computed from.
        self._keys_state: tuple[object, ...] = ()
        self._keys: dict[str, tuple[int, bool, bool, str]] = {}
        # The last hand-over (target, term): its TimeoutNow is sent again once a failed
        # release has succeeded.
        self._handover = ("", -1)
        # The actions of the last step, and whether a save it skipped must be made again.
        self._last: list[Action] = []
        self._resave = False
        self._led_term = -1

    # ------------------------------------------------------------------ public interface

    def start(self, now: float, stagger: float = 0.0) -> list[Action]:
        """First call after construction (a start or a restart with persisted state); `stagger`
        delays standing before a leader was seen (`hafailover.core.groups.cold_start_stagger`)."""
        self._out = []
        self._started = True
        # Promises given before a crash were not persisted: keep them by refusing all votes
        # for one failover timeout.
        self._promise = Promise("", -1, now + self._t.failover_timeout)
        self._election_at = self._promise.until + stagger + self._election_delay(exclude="")
        rank = self.peers.better_ranked(self.me, exclude="")
        self._settle_until = self._promise.until + stagger + rank * self._t.startup_settle
        self._decide(Reason.STARTED, maintenance=self.maintenance, healthy=self.healthy)
        self._out.append(Notify(NotifyKind.FOLLOWER, self.role, self.term, self.leader))
        return self._finish(now)

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event at monotonic time `now`; returns the actions, in execution order."""
        if not self._started:
            raise NotStarted("Node.start() must be called first")
        self._out = []
        # Node-level renewals since the last step become part of the promise or lease first,
        # so no transition of this step can shorten what a peer was already told.
        self._materialize()
        # Freeze safety: before anything else, a lease that ran out while we were not looking
        # (stopped process, starved loop, late timer) drops the VIP.
        self._expire_lease(now)
        match event:
            case TimerFired():
                self._on_timer(now)
            case MessageReceived(sender=sender, message=message):
                if (
                    sender != self.name
                    and self.peers.get(sender) is not None
                    and not isinstance(message, NodeHeartbeat | NodeAck)
                ):
                    self._on_message(sender, message, now)
            case HealthChanged(healthy=healthy, detail=detail):
                self._on_health(healthy, detail, now)
            case Switchover(request_id=rid, target=target):
                self._on_switchover(rid, target, now)
            case SetMaintenance(request_id=rid, on=on, node=node):
                self._on_set_maintenance(rid, on, node, now)
            case VipConflict(address=address):
                if self.holds_vip:
                    self._decide(Reason.VIP_CONFLICT, address=address)
                    self._out.append(Announce(Reason.VIP_CONFLICT))
            case Stop():
                self._on_stop(now)
            case EffectFailed(effect=effect, detail=detail):
                self._on_effect_failed(effect, detail, now)
            case EffectSucceeded(effect=effect):
                self._on_effect_succeeded(effect)
        return self._finish(now)

    def next_deadline(self) -> float:
        """The monotonic time at which `handle(TimerFired(), now)` must next be called.

        A leader woken up to `Timings.heartbeat_slack` before its heartbeat is due sends it
        then, so a caller that wakes several nodes at the earliest of their deadlines gets
        their heartbeats in one round.
        """
        deadline = min(self.faults.next_deadline(), self._pending.next_deadline())
        if self.role is Role.LEADER:
            if self._needs_rounds():
                deadline = min(deadline, self._lease.heartbeat_at)
            deadline = min(deadline, self._lease.stepdown_at)
            if self.holds_vip:
                deadline = min(deadline, self._lease.until)
            if self.spec.preempt:
                preempt = self.peers.preempt_deadline(self.me, self._t.preempt_delay)
                deadline = min(deadline, preempt)
            return deadline
        if self.role is Role.FOLLOWER:
            return min(deadline, max(self._election_at, self._settle_until))
        return min(deadline, self._round_deadline)

    def touch(self, now: float) -> float:
        """`next_deadline()` once node liveness's renewals are folded in, without a step: what
        a timer step at `now` would leave when nothing is due, at a fraction of its cost.

        A group whose deadline is a lease or a promise that node liveness keeps renewing has
        nothing to do when that stale deadline comes due: its step only moves it on. `Groups`
        touches such groups instead, and steps one (`handle(TimerFired())`) only when the
        deadline touched is still due. Touching changes no role, term, vote or key: it folds the
        renewals in, as the start of every step does (`_materialize`), and, on a leader, forgets
        peers gone quiet (as every timer step does before it looks at preemption). A leader
        that a renewal folded in lets acquire the VIP gets `now` (due): its step acquires."""
        self._materialize()
        if self.role is Role.LEADER:
            if not self.holds_vip and self.eligible and now < self._lease.until:
                return now
            self.peers.forget_unreachable(now, self._t.failover_timeout)
        return self.next_deadline()

    @property
    def eligible(self) -> bool:
        """Could lead and hold the VIP; what peers are told (as `healthy`) and shown."""
        return (
            self.healthy
            and not self.maintenance
            and not self.me.witness
            and not self.stopped
            and not self.faults.blocks_acquire
        )

    @property
    def promise(self) -> tuple[str, int, float]:
        """(leader, term, until): whom this node will not vote against, and until when."""
        until = self._promise.until
        if self._live is not None and self._fortified():
            until = max(until, self._live.heard(self.leader) + self._t.failover_timeout)
        return (self._promise.to, self._promise.term, until)

    @property
    def lease_until(self) -> float:
        return self._lease.current() if self.role is Role.LEADER else NEVER

    def lease_valid(self, now: float) -> bool:
        """`now < lease_until`, cheaply: the lease made concrete at the last step usually
        answers it without computing what node liveness has added since."""
        if self.role is not Role.LEADER:
            return False
        return now < self._lease.until or now < self._lease.current()

    @property
    def settle_until(self) -> float:
        """Cold start: no standing before this (monotonic; -inf once a leader was seen)."""
        return self._settle_until

    def persistent_state(self) -> PersistentState:
        return PersistentState(self.term, self.voted_for, self.maintenance)

    @property
    def leader_contact(self) -> float:
        """When this follower last heard its leader (monotonic; -inf if never)."""
        if self._live is not None and self._fortified():
            return max(self._leader_contact, self._live.heard(self.leader))
        return self._leader_contact

    # ------------------------------------------------------------------ node liveness

    def follower_key(self) -> tuple[str, tuple[int, bool, bool, str]] | None:
        """(leader, its key fields) while this node has fortified its leader; else None.

        Equal to the leader's `leader_keys()[me]` exactly when both agree (see
        `hafailover.core.liveness`)."""
        if self._live is None or not self._fortified() or self.faults.failing(Effect.RELEASE):
            return None
        return (self.leader, (self.term, self._reported_healthy, self.maintenance, self._summary))

    def leader_keys(self) -> dict[str, tuple[int, bool, bool, str]]:
        """Leader: per fortified peer, the key fields it should hold for this group."""
        if self._live is None or self.role is not Role.LEADER:
            return {}
        # Asked after every step of the group; what it depends on rarely changes.
        state = (
            self.term, self._reported_healthy, self.maintenance,
            *((p.keyed, p.healthy, p.maintenance) for p in self.peers.peers.values()),
        )
        if state == self._keys_state:
            return self._keys
        own = PeerSummary(self.name, self._reported_healthy, self.maintenance, True)
        summary = summary_text(self.peers.summaries(0.0, 0.0, own))
        self._keys_state = state
        self._keys = {
            p.spec.name: (self.term, p.healthy is True, p.maintenance is True, summary)
            for p in self.peers.peers.values()
            if p.keyed
        }
        return self._keys

    def unfortify(self, peer: str) -> bool:
        """Leader: `peer` disagreed about which groups it backs; send it this group's own
        heartbeats again (its key stays: `PeerInfo.keyed`). True if that changed anything."""
        info = self.peers.get(peer)
        if self.role is not Role.LEADER or info is None or info.fortified_seq is None:
            return False
        self._lease.refresh()
        info.fortified_seq = None
        self._lease.invalidate()
        return True

    def _fortified(self) -> bool:
        return (
            self._fortified_term == self.term
            and self.role is Role.FOLLOWER
            and self.leader != ""
            and self._promise.to == self.leader
            and self._promise.term == self.term
        )

    def _needs_rounds(self) -> bool:
        """Leader: some peer gets this group's own heartbeats (not backed by node liveness)."""
        return self._live is None or any(
            p.fortified_seq is None for p in self.peers.peers.values()
        )

    def _materialize(self) -> None:
        if self._live is None:
            return
        if self.role is Role.LEADER:
            self._lease.refresh()
        elif self._fortified():
            heard = self._live.heard(self.leader)
            until = heard + self._t.failover_timeout
            if until > self._promise.until:
                self._promise.until = until
                self._election_at = max(self._election_at, until + self._fort_delay)
                self._leader_contact = max(self._leader_contact, heard)

    def view(self, now: float) -> NodeView:
        facts = NodeFacts(
            self.name, self.role, self.term, self.leader, self.holds_vip, self.healthy,
            self.maintenance, self.stopped, self.eligible, self.faults.describe(now),
            self.lease_until, self.leader_contact,
        )
        return build_view(facts, self.peers, self._t, now)

    # ------------------------------------------------------------------ role changes

    def _set_role(self, role: Role) -> None:
        if role not in _LEGAL[self.role]:
            raise InvalidTransition(f"invalid transition [{self.role} -> {role}]")
        if role is not Role.FOLLOWER:
            self._fortified_term = -1
        self.role = role

    def _become_follower(self, term: int, leader: str, reason: Reason, now: float) -> None:
        was = self.role
        if self.holds_vip:
            self._release(reason)
        if term > self.term:
            self.term = term
            self.voted_for = ""
            self._persist()
        self._set_role(Role.FOLLOWER)
        self.leader = leader
        self._votes = set()
        self._round_deadline = INF
        self._lease.end()
        if not leader:
            # No leader to wait for: stand again after a full timeout (a transfer target or a
            # better-ranked node gets its chance first).
            self._election_at = now + self._t.failover_timeout + self._election_delay("")
        if was is not Role.FOLLOWER or reason in (Reason.NEW_LEADER, Reason.HIGHER_TERM):
            self._decide(reason, previous=was.value)
        if was is Role.LEADER:
            self._out.append(Notify(NotifyKind.FOLLOWER, self.role, self.term, self.leader))

    def _become_pre_candidate(self, reason: Reason, now: float) -> None:
        self._set_role(Role.PRE_CANDIDATE)
        self.leader = ""
        self._decide(reason, proposed_term=self.term + 1)
        self._start_round(pre=True, transfer_from="", now=now)

    def _become_candidate(self, reason: Reason, transfer_from: str, now: float) -> None:
        self._set_role(Role.CANDIDATE)
        self.leader = ""
        self.term += 1
        self.voted_for = self.name
        self._persist()
        self._decide(reason, transfer_from=transfer_from)
        self._start_round(pre=False, transfer_from=transfer_from, now=now)

    def _become_leader(self, now: float) -> None:
        self._set_role(Role.LEADER)
        self.leader = self.name
        self._led_term = self.term
        self._settle_until = NEVER
        self._round_deadline = INF
        self._election_at = INF
        # Our own promise to an earlier leader is void: that leader released the VIP (transfer)
        # or its lease ran out (we only stood after the promise ended). Clearing it lets this
        # leader vote for its own transfer target later.
        self._promise = Promise()
        # Without a majority acknowledgement within one lease the new leader gives up.
        self._lease.begin(now)
        self._decide(Reason.ELECTED, votes=len(self._votes), voters=len(self.spec.nodes))
        self._send_heartbeats(now)

    @property
    def _can_stand(self) -> bool:
        return self.eligible and not self.faults.refuses_votes

    @property
    def _reported_healthy(self) -> bool:
        """What peers are told as `healthy`: false also when stopped or after a failed acquire."""
        return self.healthy and not self.stopped and not self.faults.blocks_acquire

    # ------------------------------------------------------------------ timers and leases

    def _expire_lease(self, now: float) -> None:
        if self.role is not Role.LEADER:
            return
        if self.holds_vip and now >= self._lease.until:
            self._release(Reason.LEASE_EXPIRED)
        if now >= self._lease.stepdown_at:
            self._become_follower(self.term, "", Reason.LEASE_EXPIRED, now)

    def _on_timer(self, now: float) -> None:
        self._effect_timers(now)
        for p in self._pending.expired(now):
            self._result(p.request_id, False, Reason.COMMAND_TIMEOUT, f"no answer from {p.node}")
        if self.role is Role.LEADER:
            if self._lease.heartbeat_due(now):
                self._send_heartbeats(now)
            self.peers.forget_unreachable(now, self._t.failover_timeout)
            self._maybe_preempt(now)
        elif self.role is Role.FOLLOWER:
            if now >= self._election_at and now >= self._settle_until:
                # The promise ran out: this node no longer backs its leader's lease.
                self._fortified_term = -1
                if self._can_stand:
                    self._become_pre_candidate(Reason.LEADER_LOST, now)
                else:
                    self._election_at = INF if self.stopped else now + self._t.failover_timeout
        elif now >= self._round_deadline:
            if self.role is Role.PRE_CANDIDATE and self._can_stand:
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
        rnd = self._lease.next_round(now)
        own = PeerSummary(self.name, self._reported_healthy, self.maintenance, True)
        summaries = self.peers.summaries(now, self._t.failover_timeout, own)
        for peer, info in self.peers.peers.items():
            # Peers that fortified this term's leadership are kept by node liveness.
            if self._live is None or info.fortified_seq is None:
                self._send(peer, Heartbeat(self.term, rnd, summaries))

    def _maybe_acquire(self, now: float) -> None:
        if (
            self.role is Role.LEADER
            and not self.holds_vip
            and self.eligible
            and now < self._lease.until
        ):
            self.holds_vip = True
            self._out.append(AcquireVip(self.term))
            self._out.append(Announce(Reason.LEASE_ACQUIRED))
            self._decide(Reason.LEASE_ACQUIRED, lease_ms=round((self._lease.until - now) * 1000))
            self._out.append(Notify(NotifyKind.LEADER, self.role, self.term, self.leader))

    def _release(self, reason: Reason) -> None:
        self.holds_vip = False
        self._out.append(ReleaseVip(reason))

    def _maybe_preempt(self, now: float) -> None:
        if self.spec.preempt and self.role is Role.LEADER:
            target = self.peers.preempt_due(self.me, self._t.preempt_delay, now)
            if target:
                self._hand_over(Reason.PREEMPT, target, now)

    # ------------------------------------------------------------------ messages

    def _on_message(self, sender: str, msg: ElectionMessage, now: float) -> None:
        # The term, once, before anything else (etcd-io/raft `Step`).
        if msg.term > self.term and not self._keeps_term(sender, msg, now):
            leader = sender if isinstance(msg, Heartbeat) else ""
            self._become_follower(msg.term, leader, Reason.HIGHER_TERM, now)
            if isinstance(msg, VoteResponse):
                # A refusal from a later term. No leader is known, so stand again as soon as
                # the voter's promise (if any) allows, not a whole timeout later: a node
                # restarted with a stale term would otherwise lose one round for it.
                wait = msg.retry_after + RETRY_SLACK if msg.retry_after > 0 else 0.0
                self._election_at = now + wait + self._election_delay("")
                return
        elif msg.term < self.term and not isinstance(msg, CommandReply):
            self._on_stale(sender, msg, now)
            return
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
                if sender == self.leader and self.role is Role.FOLLOWER and self._can_stand:
                    self._become_candidate(Reason.TRANSFER_RECEIVED, sender, now)
            case TransferRequest(target=target, request_id=rid):
                if self.role is Role.LEADER:
                    self._reply(sender, rid, self._switchover(target, now))
                else:
                    detail = f"{self.name} is not the leader"
                    self._reply(sender, rid, (False, Reason.NOT_LEADER, detail))
            case MaintenanceRequest(on=on, request_id=rid):
                self._reply(sender, rid, self._set_maintenance(on, now))
            case CommandReply(request_id=rid, accepted=accepted, reason=reason, detail=detail):
                if self._pending.answer(rid, sender) is not None:
                    self._result(rid, accepted, reason, detail)

    def _keeps_term(self, sender: str, msg: ElectionMessage, now: float) -> bool:
        """A later term that does not make this node follow it."""
        match msg:
            case VoteRequest(pre=True) | VoteResponse(granted=True):
                return True  # a pre-vote proposes term+1; nobody has it yet
            case VoteRequest():
                # Raft's lease rule: a voter keeping a promise ignores even a higher term.
                return self._refusal_wait(sender, msg, now) is not None
        return False

    def _on_stale(self, sender: str, msg: ElectionMessage, now: float) -> None:
        match msg:
            case Heartbeat():
                self._ack(sender, msg.round, success=False)
            case VoteRequest():
                wait = self._refusal_wait(sender, msg, now)
                self._send(sender, self._vote_response(self.term, msg.pre, False, wait))
            case TransferRequest() | MaintenanceRequest():
                detail = f"{self.name} is in term {self.term}, the request in {msg.term}"
                self._reply(sender, msg.request_id, (False, Reason.STALE_TERM, detail))
            case _:
                pass  # acks, vote responses and TimeoutNow of an earlier term mean nothing now

    def _on_heartbeat(self, sender: str, hb: Heartbeat, now: float) -> None:
        if self.role is Role.LEADER:
            return  # impossible with one leader per term; never follow a same-term rival
        if self.role is not Role.FOLLOWER or self.leader != sender:
            self._become_follower(self.term, sender, Reason.NEW_LEADER, now)
        self._leader_contact = now
        self._settle_until = NEVER
        self._promise = Promise(sender, hb.term, now + self._t.failover_timeout)
        self.peers.apply_summaries(hb.peers)
        info = self.peers.get(sender)
        if info is not None:
            info.last_heard = now
        delay = self._election_delay(exclude=sender)
        self._election_at = self._promise.until + delay
        # A node whose release failed may still hold the VIP: it backs no lease.
        success = not self.faults.failing(Effect.RELEASE)
        # Round 0 comes from a former leader retrying a failed release: keep the promise it
        # renews, but back no lease of it at node level.
        self._fortified_term = hb.term if success and hb.round > 0 else -1
        self._fort_delay = delay
        self._summary = summary_text(hb.peers)
        self._ack(sender, hb.round, success=success)

    def _ack(self, to: str, rnd: int, success: bool) -> None:
        ack = HeartbeatAck(self.term, rnd, success, self._reported_healthy, self.maintenance)
        self._send(to, ack)

    def _on_ack(self, sender: str, ack: HeartbeatAck, now: float) -> None:
        if self.role is not Role.LEADER:
            return
        info = self.peers.acked(sender, now, ack.healthy, ack.maintenance)
        if info is not None and ack.success:
            self._lease.acked(info, ack.round)
            if self._live is not None and info.fortified_seq is None:
                info.fortified_seq, info.keyed = self._live.next_seq(), True
                self._lease.invalidate()
        elif info is not None and (info.fortified_seq is not None or info.keyed):
            info.fortified_seq, info.keyed = None, False
            self._lease.invalidate()
        self._maybe_preempt(now)

    def _refusal_wait(self, sender: str, req: VoteRequest, now: float) -> float | None:
        """How long this node's promise still forbids voting for `sender`; None if it doesn't."""
        if self.role is Role.LEADER:
            return max(self._lease.until, self._lease.stepdown_at) - now
        return self._promise.wait(sender, req.term, req.pre, req.transfer_from, now)

    def _on_vote_request(self, sender: str, req: VoteRequest, now: float) -> None:
        info = self.peers.get(sender)
        wait = self._refusal_wait(sender, req, now)
        refuse = (
            info is None or info.spec.witness or not req.healthy or req.maintenance
            or wait is not None or self.faults.refuses_votes
        )
        if req.pre:
            granted = not refuse and req.term > self.term
            self._send(sender, self._vote_response(req.term if granted else self.term, True,
                                                   granted, wait))
            return
        granted = not refuse and req.term == self.term and self.voted_for in ("", sender)
        if granted and self.voted_for != sender:
            self.voted_for = sender
            self._persist()
        if granted:
            # Give the candidate time to finish before standing ourselves.
            self._election_at = max(self._election_at, now + self._t.failover_timeout)
        self._send(sender, self._vote_response(self.term, False, granted, wait))

    def _vote_response(
        self, term: int, pre: bool, granted: bool, wait: float | None
    ) -> VoteResponse:
        return VoteResponse(
            term, pre, granted, self._reported_healthy, self.maintenance, max(wait or 0.0, 0.0)
        )

    def _on_vote_response(self, sender: str, resp: VoteResponse, now: float) -> None:
        self.peers.heard(sender, now, resp.healthy, resp.maintenance)
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

    def _start_round(self, pre: bool, transfer_from: str, now: float) -> None:
        self._votes = {self.name}
        self._round_deadline = now + self._t.election_round_timeout
        term = self.term + 1 if pre else self.term
        for peer in self.peers.peers:
            req = VoteRequest(term, pre, self._reported_healthy, self.maintenance, transfer_from)
            self._send(peer, req)
        if len(self._votes) >= self.spec.quorum:  # a one-node cluster
            if pre:
                self._become_candidate(Reason.PREVOTE_WON, "", now)
            else:
                self._become_leader(now)

    # ------------------------------------------------------------------ health and effects

    def _on_health(self, healthy: bool, detail: str, now: float) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self._decide(Reason.HEALTHY if healthy else Reason.UNHEALTHY, detail=detail)
        if not healthy:
            self._step_aside(Reason.UNHEALTHY, NotifyKind.UNHEALTHY, now)

    def _step_aside(self, reason: Reason, kind: NotifyKind, now: float) -> None:
        """This node can no longer lead: a leader hands over, a candidate gives up."""
        self._out.append(Notify(kind, self.role, self.term, self.leader))
        if self.role is Role.LEADER:
            self._hand_over(reason, "", now)
        elif self.role is not Role.FOLLOWER:
            self._become_follower(self.term, "", reason, now)

    def _hand_over(self, reason: Reason, target: str, now: float) -> None:
        """Release the VIP, then (if anyone can take it) tell the successor to stand now."""
        ft = self._t.failover_timeout
        target = target or self.peers.best_target(now, ft)
        if self.holds_vip:
            self._release(reason)
        if target:
            self._decide(reason, target=target)
            self._send(target, TimeoutNow(self.term))
            self._handover = (target, self.term)
        self._become_follower(self.term, "", reason, now)

    def _on_effect_failed(self, effect: Effect, detail: str, now: float) -> None:
        reason = _FAILED[effect]
        if self.faults.fail(effect, detail, now) or effect is Effect.ACQUIRE:
            self._decide(reason, detail=detail)
        skipped = skipped_by(effect, self._last)
        if any(isinstance(a, AcquireVip) for a in skipped):
            self.holds_vip = False  # nothing was added
        if effect is not Effect.PERSIST and any(isinstance(a, Persist) for a in skipped):
            self._resave = True  # (a failed save is retried on its own timer)
        elected = any(isinstance(a, Decision) and a.reason is Reason.ELECTED for a in self._last)
        if effect is Effect.PERSIST and elected and self.role is Role.LEADER:
            # Elected in the very step whose save (of its own vote) failed: a one-node cluster.
            self._become_follower(self.term, "", reason, now)
        if effect is Effect.ACQUIRE:
            # Ineligible for a back-off: hand over like an unhealthy leader (releasing whatever
            # the failed add may have left), then try again when elected after the back-off.
            self._step_aside(reason, NotifyKind.UNHEALTHY, now)
        elif self.role is not Role.FOLLOWER and (
            effect is Effect.RELEASE or self.role is not Role.LEADER
        ):
            # A release that failed: lead no more (the VIP may still be here). A save that
            # failed: a candidate's own vote was not kept, so its candidacy ends.
            self._become_follower(self.term, "", reason, now)

    def _on_effect_succeeded(self, effect: Effect) -> None:
        if not self.faults.clear(effect):
            return
        self._decide(Reason.EFFECT_RECOVERED, effect=effect.value)
        target, term = self._handover
        if effect is Effect.RELEASE and target and term == self.term and not self.leader:
            # The hand-over's TimeoutNow was held back while the VIP might still be here.
            self._send(target, TimeoutNow(self.term))
            self._handover = ("", -1)

    def _effect_timers(self, now: float) -> None:
        # A former leader of this term keeps its followers promising while it retries.
        led = self._led_term == self.term and not self.leader
        followers = list(self.peers.peers) if led else []
        self._out.extend(self.faults.retries(now, self.term, followers))
        if self.faults.due(Effect.ACQUIRE, now):
            self.faults.end_backoff()
            self._decide(Reason.HEALTHY, detail="back-off after a failed VIP acquire is over")

    # ------------------------------------------------------------------ operator commands

    def _on_switchover(self, rid: int, target: str, now: float) -> None:
        ft = self._t.failover_timeout
        if self.role is Role.LEADER:
            self._result(rid, *self._switchover(target, now))
            return
        problem = check_target(self.peers, self.name, False, target, now, ft) if target else None
        if problem is None and target == self.name and self.me.witness:
            problem = Reason.TARGET_IS_WITNESS
        if problem is not None:
            self._result(rid, False, problem, target)
        elif not self.leader or now - self._leader_contact > ft:
            self._result(rid, False, Reason.NO_LEADER, "no leader is reachable from this node")
        else:
            self._forward(rid, self.leader, TransferRequest(self.term, target, rid), now)

    def _switchover(self, target: str, now: float) -> Outcome:
        """A leader carries out a switchover (to `target`, or the best other node)."""
        ft = self._t.failover_timeout
        problem = check_target(self.peers, self.name, True, target, now, ft) if target else None
        if problem is None and not target:
            target = self.peers.best_target(now, ft)
            if not target:
                problem = Reason.NO_ELIGIBLE_TARGET
        if problem is not None:
            self._decide(problem, target=target, refused="switchover")
            return (False, problem, target)
        self._hand_over(Reason.SWITCHOVER, target, now)
        return (True, Reason.ACCEPTED, target)

    def _on_set_maintenance(self, rid: int, on: bool, node: str, now: float) -> None:
        if node in ("", self.name):
            self._result(rid, *self._set_maintenance(on, now))
        elif self.peers.get(node) is None:
            self._result(rid, False, Reason.TARGET_UNKNOWN, node)
        else:
            self._forward(rid, node, MaintenanceRequest(self.term, on, rid), now)

    def _set_maintenance(self, on: bool, now: float) -> Outcome:
        if on == self.maintenance:
            return (True, Reason.UNCHANGED, self.name)
        self.maintenance = on
        self._persist()
        reason = Reason.MAINTENANCE_ON if on else Reason.MAINTENANCE_OFF
        self._decide(reason)
        if on:
            self._step_aside(reason, NotifyKind.MAINTENANCE, now)
        return (True, reason, self.name)

    def _forward(self, rid: int, to: str, request: ElectionMessage, now: float) -> None:
        self._send(to, request)
        self._pending.add(rid, to, now + self._t.command_timeout)
        self._decide(Reason.FORWARDED, target=to, request=rid)

    def _on_stop(self, now: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.role is Role.LEADER:
            self._hand_over(Reason.STOPPING, "", now)
        elif self.role is not Role.FOLLOWER:
            self._become_follower(self.term, "", Reason.STOPPING, now)
        else:
            self._decide(Reason.STOPPING)
        self._out.append(Notify(NotifyKind.STOP, self.role, self.term, self.leader))
        self._election_at = INF

    # ------------------------------------------------------------------ output helpers

    def _send(self, to: str, message: ElectionMessage) -> None:
        self._out.append(Send(to, message))

    def _reply(self, to: str, rid: int, outcome: Outcome) -> None:
        if rid:
            self._send(to, CommandReply(self.term, rid, *outcome))

    def _persist(self) -> None:
        self._out.append(Persist(self.persistent_state()))

    def _decide(self, reason: Reason, **detail: str | int | float | bool) -> None:
        self._out.append(Decision(reason, self.role, self.term, self.leader, dict(detail)))

    def _result(self, rid: int, accepted: bool, reason: Reason, detail: str) -> None:
        self._out.append(CommandResult(rid, accepted, reason, detail))

    def _finish(self, now: float) -> list[Action]:
        """End a step: acquire if due, retry a failed save, put operator answers last."""
        self._maybe_acquire(now)
        actions, self._out = self._out, []
        results: list[Action] = [a for a in actions if isinstance(a, CommandResult)]
        if results:
            actions = [a for a in actions if not isinstance(a, CommandResult)]
        if self.faults.due(Effect.PERSIST, now):
            self.faults.retried(Effect.PERSIST, now)
            self._resave = True
        # A save retried (or skipped by a failed barrier) goes last, not in a step that saves
        # anyway nor ahead of an operator's answer (a failure would turn it into a refusal).
        if self._resave and not results:
            self._resave = False
            if not any(isinstance(a, Persist) for a in actions):
                actions.append(Persist(self.persistent_state()))
        self._last = actions + results
        return self._last


def summary_text(summaries: tuple[PeerSummary, ...]) -> str:
    """The health and maintenance of every node in a heartbeat, canonical (sorted by name), as
    hashed into a node-liveness key: a change makes the leader send the group's heartbeat again."""
    return ",".join(
        f"{p.name}:{int(p.healthy)}{int(p.maintenance)}"
        for p in sorted(summaries, key=lambda p: p.name)
    )
