"""`hafailover run`: load the configuration, build the ports, run the engine until stopped.

Exit codes: 0 stopped cleanly, 1 runtime failure, 78 (EX_CONFIG) the configuration, key file,
state file or environment is unusable; systemd does not restart on 78 (RestartPreventExitStatus)
because a restart cannot fix it.

Start-up order matters for systemd. READY=1 is sent once the configuration, key and state are
valid, the VIPs are recorded for `release-vips`, their interfaces exist, the UDP socket is bound
and the control socket answers: what an operator can get wrong fails `systemctl start` (exit 78).
The VIP manager opens right after READY=1, off the readiness path: pyroute2 is imported (in a
thread, so the loop keeps pinging the watchdog), leftover VIPs are removed, the ARP/NA frames
(crafted in a subprocess started before READY=1) are loaded into the announcers, link tracking
starts. Only then does the engine start: until it does, the node takes no step, casts no vote
and cannot take a VIP, and datagrams from peers are dropped (as if it were not up yet); the
systemd status line says "starting". If the VIP manager cannot be opened, the daemon exits 78.

Shutdown (SIGTERM/SIGINT) is final and ordered: the core gets `Stop` (a leader removes its VIPs
and only then sends TimeoutNow to its successor); after a short grace for that datagram to
leave, the engine stops taking events and the UDP socket is closed, so this node answers no
election any more; only then do the hooks (notify.stop) drain. Nothing after `Stop` can make
this node take a VIP again. An `Exit` from the core ends the process at once with status 1.

VIP groups: the daemon runs one election per group (`hafailover.core.groups.Groups`; a file
with top-level `vips:` is the one group `default`), over one UDP socket, with each group's
health judged from its own checks and links (`runtime/grouphealth.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hafailover.config import (
    ConfigError,
    LoadedConfig,
    NodeResolutionError,
    load_config,
    resolve_self,
)
from hafailover.config.schema import CheckKind, Config, NodeConfig, NotifyConfig
from hafailover.control.server import ControlServer, ControlServerError
from hafailover.core.events import Stop
from hafailover.core.groups import Groups
from hafailover.core.peers import NEVER
from hafailover.core.reasons import Role
from hafailover.errors import LocalError
from hafailover.net.announce import (
    Announcer,
    ConflictWatcher,
    _ipv6_forwarding,  # the IPv6 router flag, read as the announcer itself reads it
)
from hafailover.net.links import LinkWatcher
from hafailover.net.record import record_vips
from hafailover.net.vip import IPAddress, NetlinkVipPort, Vip, VipError
from hafailover.runtime.checks import CheckRunner, CheckSpec
from hafailover.runtime.engine import Engine, Ports, lag_ticker, renewal_interval
from hafailover.runtime.grouphealth import Drift, GroupHealth
from hafailover.runtime.interfaces import interface_networks
from hafailover.runtime.logs import setup_logging
from hafailover.runtime.notify import Notifier, NotifierPort
from hafailover.runtime.sdnotify import SystemdNotifier
from hafailover.runtime.status import StatusHandler
from hafailover.runtime.store import EventLog, StateError, StateStore
from hafailover.runtime.transport import UdpTransport
from hafailover.runtime.vipmanager import (
    NotOpenYet,
    VipManagerError,
    cancel,
    craft,
    open_vip_manager,
)
from hafailover.wire import Codec, Decoded, KeyFileError, load_key, new_incarnation

# Imported when needed, not on the way to READY=1: metrics when configured (prometheus_client
# costs ~30 ms), the reloader at the first SIGHUP.
if TYPE_CHECKING:
    from hafailover.runtime.metrics import MetricsServer
    from hafailover.runtime.reload import Reloader

log = logging.getLogger("hafailover.daemon")

EX_CONFIG: Final = 78
# After Stop: how long the node keeps its socket open for the TimeoutNow to leave (and to hear
# its successor), then how long the hooks may take.
STOP_GRACE: Final = 0.2
# The Stop step itself (a VIP removal answers within the port's 2 s netlink timeout).
STOP_STEP_TIMEOUT: Final = 5.0
HOOK_DRAIN: Final = 5.0


def _group_shapes(config: Config) -> list[tuple[object, ...]]:
    return [
        (g.name, g.vips, sorted(g.priorities.items()), g.preempt, g.preempt_delay,
         g.track_interfaces)
        for g in config.groups
    ]


STARTUP_WATCHDOG_S = 10.0
"""The watchdog timeout while the VIP manager opens, after READY=1 and before the engine starts."""


def lag_tick(watchdog_interval: float | None, heartbeat_interval: float) -> float:
    """The lag probe's period: every heartbeat interval, and at least every WatchdogSec/2."""
    return min(watchdog_interval or 1.0, heartbeat_interval)


def watchdog_gap(watchdog_interval: float, heartbeat_interval: float, max_lag: float) -> float:
    """The longest time between two watchdog pings while the loop is on time: a tick pings
    when it is at most `max_lag` late, so one tick on time and the next `max_lag` late are a
    tick period plus `max_lag` apart. WatchdogSec must be longer than that, with a margin for
    the scheduling of this process and of systemd."""
    return lag_tick(watchdog_interval, heartbeat_interval) + max_lag


def _ignore(ok: bool, detail: str) -> None:
    """The checks' node-wide verdict: unused, each group judges its own checks."""


class StartupError(LocalError):
    """A problem an operator must fix; the message says what."""


def run(config_path: Path, node_name: str | None) -> int:
    try:
        loaded = load_config(config_path)
    except ConfigError as e:
        print(f"hafailover: invalid configuration:\n{e}", file=sys.stderr)
        return EX_CONFIG
    config = loaded.config
    try:
        me = resolve_self(config, node_name, socket.gethostname(), _local_addresses())
    except NodeResolutionError as e:
        print(f"hafailover: {e}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.log_level, me.name)
    for w in loaded.warnings:
        log.warning("%s", w)
    try:
        return asyncio.run(Daemon(config, me, config_path).run())
    except StartupError as e:
        log.error("%s", e)
        print(f"hafailover: {e}", file=sys.stderr)
        return EX_CONFIG


def _local_addresses() -> Iterator[IPAddress]:
    # Lazy (a generator): only read the host's addresses when --node and the hostname did not
    # decide.
    networks = interface_networks()
    if isinstance(networks, dict):
        for addrs in networks.values():
            for a in addrs:
                yield a.ip


def check_specs(config: Config) -> list[CheckSpec]:
    specs = []
    for c in config.checks:
        kind = c.kind
        specs.append(
            CheckSpec(
                name=c.name,
                kind=kind.value,
                argv=tuple(c.script or ()),
                shell=c.shell,
                url=c.http or "",
                host=c.tcp.host if c.tcp else "",
                port=c.tcp.port if c.tcp else 0,
                interval=c.interval,
                timeout=c.timeout,
                fall=c.fall,
                rise=c.rise,
                critical=c.critical,
                expect_status=c.expect_status if kind is CheckKind.HTTP else (200, 399),
                expect_body=c.expect_body or "",
                recover=tuple(c.recover or ()),
                recover_timeout=c.recover_timeout,
            )
        )
    return specs


def notify_hooks(config: Config | NotifyConfig) -> dict[str, tuple[str, ...]]:
    n = config.notify if isinstance(config, Config) else config
    hooks = {"leader": n.leader, "follower": n.follower, "unhealthy": n.unhealthy,
             "maintenance": n.maintenance, "stop": n.stop}
    return {k: tuple(v) for k, v in hooks.items() if v}


async def _bounded(step: Coroutine[Any, Any, None], what: str, timeout: float = 2.0) -> None:
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.error("%s did not finish within %gs at exit; going on", what, timeout)


class Daemon:
    def __init__(self, config: Config, me: NodeConfig, config_path: Path) -> None:
        self.config = config
        self.me = me
        self.config_path = config_path
        self.group_vips = {
            g.name: [Vip(v.address, v.interface) for v in g.vips] for g in config.groups
        }
        self.vips = [v for vs in self.group_vips.values() for v in vs]
        self._stop = asyncio.Event()
        # A SIGHUP while the VIP manager opens (after READY=1) is applied once the engine runs.
        self._running = False
        self._reload_due = False

    async def run(self) -> int:
        config, me = self.config, self.me
        systemd = SystemdNotifier.from_env(unset=True)
        # `watchdog: false` in the config: never ping, even if the unit sets WatchdogSec.
        interval = systemd.watchdog_interval() if config.cluster.watchdog else None
        timings = config.cluster.timings
        if interval is not None and interval * 2 > timings.failover_timeout:
            raise StartupError(
                f"WatchdogSec ({interval * 2:g}s) is longer than failover_timeout "
                f"({timings.failover_timeout:g}s): a hung daemon would keep the VIP past its "
                "lease. Set WatchdogSec below failover_timeout in the unit."
            )
        if interval is not None:
            gap = watchdog_gap(interval, timings.heartbeat_interval,
                               config.cluster.max_loop_lag_seconds)
            if interval * 2 < gap:
                log.warning(
                    "WatchdogSec (%gs) is shorter than the longest gap between two watchdog "
                    "pings of a daemon still on time (%gs: a tick every %gs, each up to "
                    "max_loop_lag late): systemd may kill a healthy daemon. Set WatchdogSec "
                    "above that.",
                    interval * 2, gap, lag_tick(interval, timings.heartbeat_interval),
                )
        if config.cluster.vip_lifetime:
            try:
                renewal_interval(config.cluster.vip_lifetime, timings.lease_duration)
            except ValueError as e:
                raise StartupError(str(e)) from e
        try:
            key = load_key(config.cluster.key_file)
        except KeyFileError as e:
            raise StartupError(str(e)) from e
        store = StateStore(config.state_dir)
        try:
            persisted = store.load_groups()
        except StateError as e:
            raise StartupError(str(e)) from e
        events = EventLog(config.state_dir)

        # Recorded before anything can be added: `release-vips` (ExecStopPost) removes these
        # without parsing the configuration, whatever state this process dies in.
        try:
            Path(config.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            record_vips(config.state_dir, self.vips)
        except OSError as e:
            raise StartupError(
                f"cannot record the VIPs in {config.state_dir}: {e.strerror or e}"
            ) from e
        # The VIP port opens netlink (importing pyroute2) on first use: after READY=1.
        vip_port = NetlinkVipPort()
        try:
            macs = {v.interface: vip_port.interface_mac(v.interface) for v in self.vips}
            router = {i: _ipv6_forwarding(i) for i in {v.interface for v in self.vips}}
        except (VipError, OSError) as e:
            raise StartupError(f"cannot manage the VIPs: {e}") from e
        # Crafting the announcement frames runs a subprocess (scapy, ~0.4 s): started first, it
        # works on another core while this process gets ready.
        crafting = asyncio.create_task(craft(self.vips, macs, router))
        engine: Engine | None = None
        started = False  # the engine runs; before, peers' datagrams are dropped

        def may_announce(group: str) -> Callable[[], bool]:
            # A repeat due during a freeze must not claim the address once the lease is over.
            return lambda: engine is not None and engine.lease_valid(group)

        first = config.groups[0].name
        specs = {g.name: config.group_spec(g.name) for g in config.groups}
        groups = Groups(specs, me.name, random.Random(), persisted)
        fingerprint = config.fingerprint()
        codec = Codec(
            key, config.cluster.name, me.name, [n.name for n in config.nodes],
            new_incarnation(), groups=groups.groups, fingerprint=fingerprint.as_bytes(),
        )
        peers = {n.name: (str(n.address), config.port_of(n)) for n in config.nodes
                 if n.name != me.name}
        notifiers = self._notifiers(config)
        drift: Drift | None = None

        def on_batch(decoded: Decoded, stamp: float | None) -> None:
            if started and engine is not None and drift is not None:
                drift.observe(decoded.sender, decoded.fingerprint)
                engine.on_batch(decoded.sender, decoded.items, stamp)

        try:
            transport = await UdpTransport.bind(
                codec, (str(me.address), config.port_of(me)), peers, on_batch
            )
        except OSError as e:
            await cancel(crafting)
            raise StartupError(
                f"cannot bind UDP {me.address}:{config.port_of(me)}: {e.strerror}"
            ) from e
        watcher = ConflictWatcher(self.vips, macs, lambda addr: self._conflict(engine, addr))
        # Each group's announcer needs the crafted frames; until they are in (after READY=1,
        # before the engine starts, so before anything could be announced) a placeholder.
        announcers: dict[str, Announcer] = {}
        ports = Ports(transport, vip_port, NotOpenYet(), notifiers[first], store, events,
                      systemd, on_held=watcher.set_held, announcers=announcers,
                      notifiers=notifiers)
        engine = Engine(
            groups, ports, self.group_vips, config.cluster.max_loop_lag_seconds,
            watchdog=interval is not None,
            vip_lifetime=config.cluster.vip_lifetime,
            # The core answers a forwarded command by 2 x failover_timeout at the latest; this
            # bound only guards against a lost answer.
            command_timeout=3 * timings.failover_timeout + 1.0,
        )
        drift = Drift(engine, fingerprint)
        engine.vetted = drift.vetted
        try:
            metrics = await self._start_metrics(engine)
        except StartupError:
            transport.close()
            await cancel(crafting)
            raise
        check_list = check_specs(config)
        health = GroupHealth(
            engine, config, check_list,
            on_duration=metrics.observe_check_duration if metrics is not None else None,
        )
        checks = CheckRunner(check_list, _ignore, on_check=health.on_check)
        links = LinkWatcher(
            health.interfaces, self.vips, on_link=health.on_link,
            on_address_removed=engine.readd, own_removal=vip_port.removed_by_us,
        )
        handler = StatusHandler(
            engine, config.cluster.name, checks, fingerprint=dict(fingerprint),
            peer_fingerprints=drift.peer_fingerprints, drift=lambda: drift.differing,
        )
        control = ControlServer(config.control_socket, config.control_group, handler)
        try:
            await control.start()
        except ControlServerError as e:
            transport.close()
            await cancel(crafting)
            raise StartupError(str(e)) from e
        self.engine, self.checks, self.handler = engine, checks, handler
        self.health, self.links = health, links
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        # Lag is judged against ~300 ms; one wake-up per heartbeat interval resolves that. The
        # watchdog is pinged from here on, while the VIP manager opens too.
        tick = lag_tick(interval, timings.heartbeat_interval)
        if metrics is not None:
            engine.on_lag = metrics.observe_loop_lag
            metrics.refresh_on_scrape(loop, self._publisher(engine, metrics, transport))
        ticker = asyncio.create_task(lag_ticker(engine, tick))
        # READY=1: configuration, key, state, VIP record, interfaces, UDP and control sockets.
        systemd.status("starting: opening the VIP manager")
        if interval is not None:
            # Until the engine runs the node holds nothing and takes no part, so the watchdog
            # (there for a frozen leader) may wait longer: opening the VIP manager under load
            # (pyroute2's import, the crafter) could otherwise make a restarted node miss a
            # ping and be killed again. Back to WatchdogSec once the engine has started.
            systemd.watchdog_timeout(STARTUP_WATCHDOG_S)
        systemd.ready()
        try:
            announcers.update(await open_vip_manager(config, self.group_vips, vip_port,
                                                     crafting, macs, may_announce))
        except BaseException as e:
            ticker.cancel()
            transport.close()
            await cancel(crafting)
            await _bounded(control.stop(), "closing the control socket")
            if metrics is not None:
                await _bounded(asyncio.to_thread(metrics.stop), "stopping the metrics endpoint")
            await vip_port.close()
            if isinstance(e, VipManagerError):
                raise StartupError(str(e)) from e
            raise
        ports.announcer = announcers[first]
        try:
            health.set_links((await links.start()).links)
        except Exception as e:  # netlink errors come in many types
            log.error("link tracking disabled: %s", e)
        try:
            watcher.start()
        except OSError as e:
            log.warning("ARP conflict watching disabled: %s", e)
        # From here on the node takes part: elections, votes, and VIPs through a working port.
        if interval is not None:  # WatchdogSec again: from the engine's first step on
            systemd.watchdog_timeout(2 * interval)
            systemd.watchdog()
        await engine.start()
        started = True
        await checks.start()
        self._running = True
        if self._reload_due:
            self._reload()
        log.info("ready: node %s, %d peers, VIPs %s", me.name, len(peers),
                 ", ".join(str(v) for v in self.vips) or "none")
        try:
            await self._stop.wait()
        finally:
            systemd.stopping()
            engine.stopping = True
            ticker.cancel()
            # 1. release, 2. hand over: both in the Stop step, in that order, awaited.
            try:
                await asyncio.wait_for(engine.process(Stop()), STOP_STEP_TIMEOUT)
            except TimeoutError:
                log.error("the stop step did not finish within %gs", STOP_STEP_TIMEOUT)
            await asyncio.sleep(STOP_GRACE)
            # 3. stop answering elections: no more events, no timer, no socket.
            await engine.close()
            transport.close()
            # Each bounded: nothing left to stop may keep the process from exiting.
            await _bounded(self.checks.stop(), "stopping the checks")
            await _bounded(health.close(), "stopping the group health")
            await _bounded(links.close(), "stopping link tracking")
            await _bounded(control.stop(), "closing the control socket")
            if metrics is not None:  # joins the HTTP thread: off the loop
                await _bounded(asyncio.to_thread(metrics.stop), "stopping the metrics endpoint")
            # 4. the hooks (notify.stop) may take their time now; nothing can re-take the VIP.
            await asyncio.gather(*(n.drain(HOOK_DRAIN) for n in engine.ports.notifiers.values()))
            try:
                await vip_port.remove(self.vips)  # at exit a node never leaves a VIP behind
            except VipError as e:
                log.error("removing VIPs at exit failed: %s", e)
            watcher.close()
            for a in announcers.values():
                a.close()
            await vip_port.close()
        return 0

    def _notifiers(self, config: Config) -> dict[str, NotifierPort]:
        """Each group's hooks (its own laid over the top-level ones), one runner per group."""
        return {g.name: Notifier(notify_hooks(g.notify), config.notify.timeout)
                for g in config.groups}

    async def _start_metrics(self, engine: Engine) -> MetricsServer | None:
        if self.config.metrics is None:
            return None
        from hafailover.runtime.metrics import MetricsError, MetricsServer

        server = MetricsServer()
        listen = self.config.metrics.listen
        try:
            bound = await asyncio.to_thread(server.start, (listen.host, listen.port))
        except MetricsError as e:
            raise StartupError(str(e)) from e
        log.info("metrics on http://%s:%d/metrics", *bound)
        engine.on_decision = lambda group, d: server.observe_transition(group, d.reason.value)
        return server

    def _publisher(
        self, engine: Engine, metrics: MetricsServer, transport: UdpTransport
    ) -> Callable[[], None]:
        """What the loop runs when a scrape asks for a fresh snapshot (`refresh_on_scrape`):
        built from the elections' own fields (no status views: with 50 groups those cost ~4%
        of a core at one snapshot per heartbeat), once per scrape, never without one."""
        from hafailover.runtime.metrics import GroupSnapshot, MetricsSnapshot

        def publish() -> None:
            now = engine.clock()
            snaps = []
            heard: dict[str, float] = {}
            for g in engine.groups.groups:
                node = engine.groups.node(g)
                leading = node.role is Role.LEADER
                lease = node.lease_until if leading else NEVER
                snaps.append(GroupSnapshot(
                    g, node.holds_vip, leading, node.term, node.eligible,
                    lease if lease > now else None,
                ))
                for name, peer in node.peers.peers.items():  # this election's own messages
                    if peer.heard_at > heard.get(name, NEVER):
                        heard[name] = peer.heard_at
            # Node-level messages, once per peer: `last_heard` adds them to one group's own.
            first = engine.groups.node(engine.groups.groups[0])
            for name, peer in first.peers.peers.items():
                heard[name] = max(heard.get(name, NEVER), peer.last_heard)
            metrics.publish(MetricsSnapshot.build(
                tuple(snaps),
                checks={c.name: bool(c.ok) for c in self.checks.statuses() if c.ok is not None},
                peers_heard={n: (t if t != NEVER else None) for n, t in heard.items()},
                dropped=dict(transport.drops),
                maintenance=engine.groups.maintenance,
            ))

        return publish

    def _conflict(self, engine: Engine | None, address: str) -> None:
        if engine is not None:
            engine.conflict(address)  # to the group announcing that address

    # The SIGHUP reloads (runtime/reload.py), made by the first SIGHUP.
    _reloader: Reloader | None = None

    def _reload(self) -> None:
        """SIGHUP: read and parse the file off the loop, then apply it (`_apply_reload`).

        The file is parsed in a child process with a time and a memory limit, so neither a huge
        nor a broken file can stall heartbeats and leases; over a limit the reload is refused.
        Checks, notify hooks and log level apply live; the rest is refused.
        """
        if not self._running:
            self._reload_due = True
            return
        if self._reloader is None:
            from hafailover.runtime.reload import Reloader

            self._reloader = Reloader(self.config_path, self._apply_reload, self._refuse_reload)
        self._reloader.request()

    def _refuse_reload(self, reason: str) -> None:
        log.error("reload refused, the old configuration stays in force: %s", reason)

    def _apply_reload(self, loaded: LoadedConfig) -> None:
        if self.engine.stopping:
            log.info("reload not applied: the daemon is stopping")
            return
        new = loaded.config
        for w in loaded.warnings:
            log.warning("%s", w)
        old = self.config
        fixed = {
            "cluster name": (old.cluster.name, new.cluster.name),
            "membership (nodes)": (old.nodes, new.nodes),
            "port": (old.cluster.port, new.cluster.port),
            "key_file": (old.cluster.key_file, new.cluster.key_file),
            "vips": (old.vips, new.vips),
            # A group's election and addresses: which groups, their VIPs, priorities,
            # preemption and the interfaces they track. A group's checks and hooks may change.
            "groups (names, VIPs, priorities, preempt, track_interfaces)": (
                _group_shapes(old), _group_shapes(new)
            ),
            "timings": (old.cluster.timings, new.cluster.timings),
            "preempt": (old.cluster.preempt, new.cluster.preempt),
            "link_settle": (old.cluster.link_settle, new.cluster.link_settle),
            "control_socket": (old.control_socket, new.control_socket),
            "control_group": (old.control_group, new.control_group),
            "state_dir": (old.state_dir, new.state_dir),
            "announce": (old.announce, new.announce),
            "max_loop_lag": (old.cluster.max_loop_lag, new.cluster.max_loop_lag),
            "watchdog": (old.cluster.watchdog, new.cluster.watchdog),
            "vip_lifetime": (old.cluster.vip_lifetime, new.cluster.vip_lifetime),
            "metrics": (old.metrics, new.metrics),
        }
        changed = [name for name, (a, b) in fixed.items() if a != b]
        if changed:
            log.error(
                "reload refused: %s cannot change while running (restart the daemon, one node "
                "at a time); the old configuration stays in force", ", ".join(changed)
            )
            return
        setup_logging(new.log_level, self.me.name)
        engine = self.engine
        notifiers = self._notifiers(new)
        engine.ports.notifiers = notifiers
        engine.ports.notifier = notifiers[new.groups[0].name]
        old_checks = self.checks
        specs = check_specs(new)
        self.health.configure(new, specs)
        self.health.rejudge()
        checks = CheckRunner(specs, _ignore, on_check=self.health.on_check)
        self.checks = checks
        self.handler.checks = checks

        async def swap() -> None:
            await old_checks.stop()
            # Each group keeps the verdicts of the checks that still exist until the new
            # runner has its own (GroupHealth.rejudge).
            await checks.start()

        asyncio.get_running_loop().create_task(swap())
        self.config = new
        log.info("reloaded: %d checks, %d notify hooks, log level %s",
                 len(new.checks), len(notify_hooks(new)), new.log_level)
