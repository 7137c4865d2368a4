"""Per-group health inputs of the daemon: checks, links, recover commands, config drift.

A group's core sees this node healthy only while every check the group names passes (its
`checks`, default every critical check) and every interface it needs (its VIPs' interfaces and
`track_interfaces`) is up: `Engine.set_group_health(group, component, ...)` per input. So a node
whose `pg` check fails stays eligible for the groups that do not name `pg`.

Links: a link going down makes the groups needing it ineligible at once (a leader releases and
hands over); one coming back makes them eligible only after `cluster.link_settle` of continuous
up (a flapping carrier does not pull the VIPs back and forth).

Recover: when a check with `recover` turns failing, its command runs once, with its timeout,
only after this node holds none of the VIPs of the groups that name the check (or after a bound
of two failover timeouts, so a release that never happens cannot hold recovery back); failover
never waits for it. The group is eligible again only once the check passes `rise` times. The
command's exit status is recorded as an event.

Drift: every datagram carries the sender's configuration fingerprint (`Config.fingerprint()`,
one digest per section). A peer whose digests differ is reported (log, events, status); while
its `cluster`, `nodes` or `groups` section differs, this node grants it no vote and counts no
vote from it (docs/architecture.md, "Configuration drift").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from hafailover.config.groups import Fingerprint
from hafailover.config.schema import Config
from hafailover.core.messages import Message, VoteRequest, VoteResponse
from hafailover.runtime.checks import CheckSpec, CheckStatus, run_bounded
from hafailover.runtime.engine import Engine

log = logging.getLogger("hafailover.health")

# Sections whose difference makes this node refuse votes to and from that peer.
VOTING_SECTIONS: Final = frozenset({"cluster", "nodes", "groups"})
RECOVER_POLL: Final = 0.05


class GroupHealth:
    """Feeds each group's checks and links into the engine; runs recover commands."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        specs: Sequence[CheckSpec],
        on_duration: Callable[[str, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_duration = on_duration
        self._settle: dict[str, asyncio.TimerHandle] = {}
        self._recovering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.links: dict[str, bool] = {}
        self.verdicts: dict[str, bool] = {}  # check -> passing, once it has a verdict
        self.errors: dict[str, str] = {}  # check -> its last error, for the detail
        self.configure(config, specs)

    def configure(self, config: Config, specs: Sequence[CheckSpec]) -> None:
        """(Re)read what each group needs (start, reload)."""
        self.config = config
        self.specs = {s.name: s for s in specs}
        self.group_checks = {g.name: g.checks for g in config.groups}
        self.group_links = {g.name: g.interfaces for g in config.groups}
        self.link_settle = config.cluster.link_settle

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for ifs in self.group_links.values() for i in ifs))

    # ------------------------------------------------------------------ checks

    def on_check(self, status: CheckStatus, duration: float, flipped: bool) -> None:
        if self._on_duration is not None:
            self._on_duration(status.name, duration)
        if not flipped or status.ok is None:
            return
        self.verdicts[status.name] = status.ok
        self.errors[status.name] = status.last_error
        self._judge([g for g, names in self.group_checks.items() if status.name in names])
        spec = self.specs.get(status.name)
        if status.ok is False and spec is not None and spec.recover:
            self._spawn(self._recover(spec))

    def rejudge(self) -> None:
        """Every group from the verdicts known (after a reload: a check that still exists
        keeps its last verdict until the new runner has one, so a reload neither clears nor
        sets a failure by itself)."""
        self.verdicts = {k: v for k, v in self.verdicts.items() if k in self.specs}
        self._judge(list(self.group_checks))

    def _judge(self, groups: Sequence[str]) -> None:
        for group in groups:
            failing = [n for n in self.group_checks[group] if self.verdicts.get(n) is False]
            detail = "; ".join(
                f"check {n!r} failing" + (f": {self.errors[n]}" if self.errors.get(n) else "")
                for n in failing
            )
            self.engine.set_group_health(
                group, "checks", not failing, detail or "all its checks passing"
            )

    # ------------------------------------------------------------------ links

    def set_links(self, links: Mapping[str, bool]) -> None:
        """The links as dumped at start: down ones count at once, up ones need no settle."""
        for name, up in links.items():
            self.links[name] = up
            if not up:
                self._link_verdict(name, False)

    def on_link(self, ifname: str, up: bool) -> None:
        was = self.links.get(ifname)
        self.links[ifname] = up
        pending = self._settle.pop(ifname, None)
        if pending is not None:
            pending.cancel()
        if not up:
            if was is not False:
                log.warning("link %s is down: not eligible for %s", ifname,
                            ", ".join(self._needing(ifname)) or "no group")
                self._event("link-down", ifname, f"link {ifname} went down")
            self._link_verdict(ifname, False)
            return
        loop = asyncio.get_running_loop()
        self._settle[ifname] = loop.call_later(self.link_settle, self._settled, ifname)

    def _settled(self, ifname: str) -> None:
        self._settle.pop(ifname, None)
        if self.links.get(ifname):
            log.info("link %s up for %gs: eligible again", ifname, self.link_settle)
            self._event("link-up", ifname,
                        f"link {ifname} up for {self.link_settle:g}s (settled)")
            self._link_verdict(ifname, True)

    def _needing(self, ifname: str) -> list[str]:
        return [g for g, ifs in self.group_links.items() if ifname in ifs]

    def _link_verdict(self, ifname: str, up: bool) -> None:
        for group in self._needing(ifname):
            self.engine.set_group_health(
                group, f"link {ifname}", up, "up" if up else f"link {ifname} is down"
            )

    def _event(self, reason: str, ifname: str, message: str) -> None:
        groups = self._needing(ifname)
        self.engine.record({"reason": reason, "interface": ifname, "groups": groups,
                            "message": message})

    # ------------------------------------------------------------------ recover

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _holding(self, check: str) -> list[str]:
        groups = self.engine.groups
        return [g for g, names in self.group_checks.items()
                if check in names and g in groups.groups and groups.node(g).holds_vip]

    async def _recover(self, spec: CheckSpec) -> None:
        if spec.name in self._recovering:
            return
        self._recovering.add(spec.name)
        try:
            # Failover first: wait until this node holds none of the groups naming the check.
            bound = 2 * self.config.cluster.timings.failover_timeout
            loop = asyncio.get_running_loop()
            until = loop.time() + bound
            while self._holding(spec.name) and loop.time() < until:
                await asyncio.sleep(RECOVER_POLL)
            log.warning("check %r failing: running its recover command %s", spec.name,
                        list(spec.recover))
            try:
                result = await run_bounded(spec.recover, spec.recover_timeout,
                                           what=f"recover command of check {spec.name!r}")
                status: int | None = result.returncode
                detail = ("timed out" if result.timed_out
                          else f"exit status {result.returncode}")
            except OSError as e:
                status, detail = None, f"could not start: {e.strerror or e}"
            (log.info if status == 0 else log.error)(
                "recover command of check %r: %s", spec.name, detail)
            self.engine.record({
                "reason": "check-recover", "check": spec.name, "exit_status": status,
                "message": f"recover command of check {spec.name!r}: {detail}",
            })
        finally:
            self._recovering.discard(spec.name)

    async def close(self) -> None:
        for handle in self._settle.values():
            handle.cancel()
        self._settle.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Drift:
    """Peers' configuration fingerprints compared with ours."""

    def __init__(self, engine: Engine, own: Fingerprint) -> None:
        self.engine = engine
        self.own = own
        self.seen: dict[str, tuple[tuple[str, bytes], ...]] = {}
        self.peers: dict[str, Fingerprint] = {}
        self.differing: dict[str, list[str]] = {}
        self.refused: set[str] = set()

    def observe(self, sender: str, raw: tuple[tuple[str, bytes], ...]) -> None:
        """Called per datagram; does work only when a peer's fingerprint changes."""
        if not raw or self.seen.get(sender) == raw:
            return
        self.seen[sender] = raw
        theirs = Fingerprint.from_bytes(dict(raw))
        self.peers[sender] = theirs
        sections = self.own.differing(theirs)
        before = self.differing.get(sender, [])
        if sections:
            self.differing[sender] = sections
        else:
            self.differing.pop(sender, None)
        refuse = bool(VOTING_SECTIONS.intersection(sections))
        if refuse:
            self.refused.add(sender)
        else:
            self.refused.discard(sender)
        if sections == before:
            return
        if sections:
            msg = (f"configuration of {sender} differs from ours in {', '.join(sections)}"
                   + ("; no votes to or from it until it matches" if refuse else ""))
            log.error("%s", msg)
            self.engine.record({"reason": "config-drift", "peer": sender,
                                "sections": sections, "message": msg})
        else:
            msg = f"configuration of {sender} matches ours again"
            log.info("%s", msg)
            self.engine.record({"reason": "config-match", "peer": sender, "message": msg})

    def vetted(self, sender: str, message: Message) -> bool:
        """False for a vote request or vote from a peer whose membership or groups differ."""
        return sender not in self.refused or not isinstance(message, VoteRequest | VoteResponse)

    def peer_fingerprints(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.peers.items()}
