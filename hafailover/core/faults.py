"""Which barrier actions are failing on this node, since when, and what to do about it.

The runtime reports a failed `Persist`, `AcquireVip` or `ReleaseVip` with `EffectFailed` and its
recovery with `EffectSucceeded`. This table turns those reports into the few facts the state
machine asks about (may this node vote, stand, ack, acquire?) and the deadlines it must act on
(retry the save, retry the release, exit, end the acquire back-off). It never decides a role
change itself: `Node` does, from these answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hafailover.core.actions import AcquireVip, Action, Decision, Exit, Persist, ReleaseVip, Send
from hafailover.core.events import Effect
from hafailover.core.messages import Heartbeat
from hafailover.core.peers import INF
from hafailover.core.reasons import Reason
from hafailover.core.spec import Timings

_BARRIER: dict[Effect, type[Action]] = {
    Effect.PERSIST: Persist,
    Effect.RELEASE: ReleaseVip,
    Effect.ACQUIRE: AcquireVip,
}


def skipped_by(effect: Effect, step: list[Action]) -> list[Action]:
    """The actions of `step` that the barrier rule kept the runtime from carrying out when its
    first `effect` action failed (everything after it but ReleaseVip, Decision and Exit)."""
    barrier = _BARRIER[effect]
    failed_at = next((i for i, a in enumerate(step) if isinstance(a, barrier)), len(step))
    return [a for a in step[failed_at + 1 :] if not isinstance(a, ReleaseVip | Decision | Exit)]


@dataclass
class Fault:
    detail: str
    since: float
    # When the core next re-emits the failed action (persist, release), or ends the back-off
    # after which it may try again (acquire).
    retry_at: float


class EffectFaults:
    def __init__(self, timings: Timings) -> None:
        self._t = timings
        self._faults: dict[Effect, Fault] = {}
        self.exit_sent = False

    def fail(self, effect: Effect, detail: str, now: float) -> bool:
        """Record a failure; True if the effect was not failing before (a new fault)."""
        current = self._faults.get(effect)
        if current is not None:
            current.detail = detail
            current.retry_at = now + self._retry_interval(effect)
            return False
        self._faults[effect] = Fault(detail, now, now + self._retry_interval(effect))
        return True

    def clear(self, effect: Effect) -> bool:
        """The effect works again; True if it had been failing."""
        return self._faults.pop(effect, None) is not None

    def failing(self, effect: Effect) -> bool:
        return effect in self._faults

    def due(self, effect: Effect, now: float) -> bool:
        """Whether the retry (or the end of the back-off) of `effect` is due at `now`."""
        fault = self._faults.get(effect)
        return fault is not None and now >= fault.retry_at

    def retried(self, effect: Effect, now: float) -> None:
        fault = self._faults.get(effect)
        if fault is not None:
            fault.retry_at = now + self._retry_interval(effect)

    def retries(self, now: float, term: int, followers: list[str]) -> list[Action]:
        """What is due at `now`: the release retry, preceded by a heartbeat of `term` to
        `followers` (a former leader's, so that they keep promising and nobody else can take
        the address while it may still be here), and the `Exit` once releasing has failed for
        one failover timeout."""
        out: list[Action] = []
        if self.due(Effect.RELEASE, now):
            self.retried(Effect.RELEASE, now)
            out.extend(Send(peer, Heartbeat(term, 0)) for peer in followers)
            out.append(ReleaseVip(Reason.RELEASE_FAILED))
        if self.exit_due(now):
            self.exit_sent = True
            detail = (
                f"the VIP could not be removed for {self._t.failover_timeout:g}s; exiting so "
                "that release-vips removes it"
            )
            out.append(Exit(Reason.RELEASE_FAILED, detail))
        return out

    def end_backoff(self) -> None:
        """An acquire that failed may be tried again: the node is eligible until it fails again."""
        fault = self._faults.get(Effect.ACQUIRE)
        if fault is not None:
            fault.retry_at = INF

    @property
    def refuses_votes(self) -> bool:
        """A node that cannot save a vote, or may still hold the VIP, grants no vote."""
        return Effect.PERSIST in self._faults or Effect.RELEASE in self._faults

    @property
    def blocks_acquire(self) -> bool:
        """In an acquire back-off, or the VIP may still be held from a release that failed."""
        acquire = self._faults.get(Effect.ACQUIRE)
        return Effect.RELEASE in self._faults or (acquire is not None and acquire.retry_at < INF)

    def exit_due(self, now: float) -> bool:
        """A release failing for longer than the failover timeout (one lease plus its margins)."""
        fault = self._faults.get(Effect.RELEASE)
        return fault is not None and not self.exit_sent and (
            now >= fault.since + self._t.failover_timeout
        )

    def next_deadline(self) -> float:
        if not self._faults:
            return INF
        deadline = min((f.retry_at for f in self._faults.values()), default=INF)
        release = self._faults.get(Effect.RELEASE)
        if release is not None and not self.exit_sent:
            deadline = min(deadline, release.since + self._t.failover_timeout)
        return deadline

    def describe(self, now: float) -> str:
        """One sentence for `status`: which effect is failing, why, and what the node does."""
        parts = []
        for effect in (Effect.RELEASE, Effect.ACQUIRE, Effect.PERSIST):
            fault = self._faults.get(effect)
            if fault is None:
                continue
            age = f"{now - fault.since:.1f}s"
            match effect:
                case Effect.RELEASE:
                    what = "removing the VIP has failed"
                    does = "the address may still be here; retrying, voting for no one"
                case Effect.ACQUIRE:
                    what = "adding the VIP failed"
                    does = (
                        "not eligible until the back-off ends"
                        if fault.retry_at < INF
                        else "eligible again; will retry when elected"
                    )
                case Effect.PERSIST:
                    what = "saving the state has failed"
                    does = "voting for no one and not standing; retrying"
            parts.append(f"{what} for {age} ({fault.detail}): {does}")
        return "; ".join(parts)

    def _retry_interval(self, effect: Effect) -> float:
        match effect:
            case Effect.RELEASE:
                return self._t.heartbeat_interval
            case Effect.PERSIST:
                return self._t.failover_timeout
            case Effect.ACQUIRE:
                return self._t.acquire_backoff
