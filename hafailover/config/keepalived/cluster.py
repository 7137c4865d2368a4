"""Several hosts' keepalived configurations merged into one hafailover cluster layout.

A keepalived.conf describes one host; hafailover's file describes the cluster. Hosts are matched
by what they share: an instance (or sync group) on one host is the same group as the one on
another host that has a VIP in common (by name when neither has VIPs). Nodes come from the files
(one per host), their `unicast_src_ip` and `unicast_peer` addresses and `--node-name IP=NAME`.
Priorities of nodes whose file was not given are guessed from the first host's; see
`docs/migration.md` for the rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hafailover.config.keepalived.host import (
    Host,
    Instance,
    IPAddress,
    Script,
    Vip,
    command_argv,
)
from hafailover.config.keepalived.nodes import Node, resolve_nodes, unique_name
from hafailover.config.keepalived.parse import Note, Where

__all__ = ["Check", "Group", "Layout", "build_layout"]

_DEFAULT_TIMING = (0.1, 0.6)  # hafailover's heartbeat_interval and failover_timeout
_WEIGHT_NOTE = (
    "has no equivalent: hafailover does no priority arithmetic. The {what} counts for the "
    "group: while it {fails} this node is ineligible and hands the group over (keepalived's "
    "weight 0 behaviour)"
)


@dataclass
class Check:
    name: str
    script: Script
    argv: list[str]
    shell: bool
    timeout: float


@dataclass
class Unit:
    """What one host runs for one group: a sync group's instances or a lone instance."""

    host: int
    name: str
    where: Where
    kind: str  # "vrrp_instance" or "vrrp_sync_group"
    instances: list[Instance]
    hooks: dict[str, list[tuple[str, Where]]]


@dataclass
class Group:
    name: str
    units: dict[int, Unit] = field(default_factory=dict)
    vips: list[Vip] = field(default_factory=list)
    priority: dict[str, int] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    preempt: bool = True
    preempt_delay: float | None = None
    track_interfaces: list[str] = field(default_factory=list)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    # (node, "track_script NAME" or "track_interface NAME", weight, where) for the notes.
    weights: list[tuple[str, str, int, Where]] = field(default_factory=list)

    @property
    def first(self) -> Unit:
        return self.units[min(self.units)]


@dataclass
class Layout:
    nodes: list[Node]
    checks: list[Check]
    groups: list[Group]
    heartbeat_interval: float
    failover_timeout: float
    advert_int: float
    notes: list[Note]
    sources: list[str]


def build_layout(
    hosts: Sequence[Host],
    host_names: Sequence[str | None],
    node_names: Mapping[IPAddress, str],
) -> Layout:
    notes: list[Note] = []
    for host in hosts:
        notes += host.notes
    groups = _match_groups(hosts, notes)
    vips = {v.address.ip for g in groups for u in g.units.values() for v in _vips(u)}
    nodes = resolve_nodes(hosts, host_names, node_names, vips, notes)
    checks = _checks(hosts, groups, notes)
    by_host = {n.host: n for n in nodes if n.host is not None}
    for group in groups:
        _fill_group(group, hosts, nodes, by_host, checks, notes)
    _guess_priorities(groups, nodes, hosts, notes)
    _one_group_per_vip(groups, notes)
    known = all(n.host is not None for n in nodes)
    for group in groups:
        notes += _weight_notes(group, known)
    advert = min((i.advert_int for h in hosts for i in h.instances), default=1.0)
    heartbeat, timeout = _timing(advert)
    auth = [w for h in hosts for w in h.authenticated]
    if auth:
        notes.append(
            Note(
                auth[0],
                f"authentication ({len(auth)} block(s)) not carried over: hafailover "
                "authenticates every message with a shared key. Run `hafailover genkey` and "
                "copy the key file to every node",
            )
        )
    return Layout(
        nodes,
        list(checks.values()),
        groups,
        heartbeat,
        timeout,
        advert,
        notes,
        [h.source for h in hosts],
    )


# --- groups -----------------------------------------------------------------------------------


def _units(index: int, host: Host, notes: list[Note]) -> list[Unit]:
    by_name = {i.name: i for i in host.instances}
    taken: dict[str, str] = {}
    units = []
    for sync in host.sync_groups:
        members = []
        for name in sync.members:
            if name not in by_name:
                notes.append(
                    Note(
                        sync.where,
                        f"vrrp_sync_group {sync.name} names {name}, which is not a "
                        "vrrp_instance here: ignored",
                    )
                )
            elif name in taken:
                notes.append(
                    Note(
                        sync.where,
                        f"{name} is already in vrrp_sync_group {taken[name]}: kept there only",
                    )
                )
            else:
                taken[name] = sync.name
                members.append(by_name[name])
        if not members:
            continue
        hooks: dict[str, list[tuple[str, Where]]] = {}
        for source in [sync.hooks, *(m.hooks for m in members)]:
            for hook, commands in source.items():
                hooks.setdefault(hook, []).extend(commands)
        units.append(Unit(index, sync.name, sync.where, "vrrp_sync_group", members, hooks))
    for inst in host.instances:
        if inst.name not in taken:
            units.append(Unit(index, inst.name, inst.where, "vrrp_instance", [inst], inst.hooks))
    return units


def _unit_ips(unit: Unit) -> set[IPAddress]:
    return {v.address.ip for i in unit.instances for v in i.vips}


def _match_groups(hosts: Sequence[Host], notes: list[Note]) -> list[Group]:
    groups: list[Group] = []
    for index, host in enumerate(hosts):
        for unit in _units(index, host, notes):
            ips = _unit_ips(unit)
            match = next(
                (
                    g
                    for g in groups
                    if index not in g.units
                    and (
                        ips & {v.address.ip for u in g.units.values() for v in _vips(u)}
                        if ips
                        else g.first.name == unit.name
                    )
                ),
                None,
            )
            if match is None:
                match = Group(unique_name(unit.name, {g.name for g in groups}, "group"))
                groups.append(match)
            match.units[index] = unit
    return groups


def _vips(unit: Unit) -> list[Vip]:
    return [v for i in unit.instances for v in i.vips]


def _fill_group(
    group: Group,
    hosts: Sequence[Host],
    nodes: list[Node],
    by_host: Mapping[int, Node],
    checks: Mapping[str, Check],
    notes: list[Note],
) -> None:
    seen: dict[IPAddress, Vip] = {}
    for index, unit in sorted(group.units.items()):
        for vip in _vips(unit):
            first = seen.get(vip.address.ip)
            if first is None:
                seen[vip.address.ip] = vip
                group.vips.append(vip)
            elif first.where.file == vip.where.file:
                notes.append(
                    Note(
                        vip.where,
                        f"VIP {vip.address.ip} is written twice (first at "
                        f"{first.where}): imported once",
                    )
                )
            elif (first.address, first.interface) != (vip.address, vip.interface):
                notes.append(
                    Note(
                        vip.where,
                        f"VIP {vip.address} on {vip.interface} differs from "
                        f"{first.address} on {first.interface} ({first.where}): the first "
                        "is imported",
                    )
                )
        instances = unit.instances
        node = by_host[index]
        assert node.name is not None
        group.priority[node.name] = max(i.priority for i in instances)
        if len({i.priority for i in instances}) > 1:
            notes.append(
                Note(
                    unit.where,
                    f"{unit.kind} {unit.name}: its instances have different "
                    f"priorities; the highest ({group.priority[node.name]}) is used",
                )
            )
        if any(i.nopreempt for i in instances):
            group.preempt = False
        delays = [i.preempt_delay for i in instances if i.preempt_delay is not None]
        if delays:
            group.preempt_delay = max([*delays, group.preempt_delay or 0.0])
        vip_ifs = {v.interface for v in group.vips}
        for inst in instances:
            tracked = [(inst.interface, 0, inst.where)] if not inst.dont_track_primary else []
            for name, weight, where in [*tracked, *inst.track_interfaces]:
                if name is None:
                    continue
                if weight:
                    group.weights.append((node.name, f"track_interface {name}", weight, where))
                if name not in vip_ifs and name not in group.track_interfaces:
                    group.track_interfaces.append(name)
            _group_checks(group, node.name, inst, hosts[index], checks, notes)
        if index == min(group.units):
            for hook, commands in unit.hooks.items():
                group.hooks[hook] = _hook(commands, notes)
        elif {h: [c for c, _ in cs] for h, cs in unit.hooks.items()} != {
            h: [c for c, _ in cs] for h, cs in group.first.hooks.items()
        }:
            notes.append(
                Note(
                    unit.where,
                    f"{unit.kind} {unit.name}: its notify scripts differ from "
                    f"{group.first.where}'s; hafailover runs the same hooks on every node: "
                    "the first file's are imported",
                )
            )
    mixed = {i.nopreempt for u in group.units.values() for i in u.instances}
    if len(mixed) > 1:
        notes.append(
            Note(
                group.first.where,
                f"group {group.name}: nopreempt is set on some instances "
                "only: the group does not preempt",
            )
        )


def _group_checks(
    group: Group,
    node: str,
    inst: Instance,
    host: Host,
    checks: Mapping[str, Check],
    notes: list[Note],
) -> None:
    for name, weight, where in inst.track_scripts:
        script = host.scripts.get(name)
        check = checks.get(name) if script and script.command else None
        if script is None or check is None:
            why = "no vrrp_script of that name" if script is None else "the script has no command"
            notes.append(Note(where, f"track_script {name} in {inst.name} not carried over: {why}"))
            continue
        effective = script.weight if weight is None else weight
        if effective:
            group.weights.append((node, f"track_script {name}", effective, where))
        if check.name not in group.checks:
            group.checks.append(check.name)


def _one_group_per_vip(groups: list[Group], notes: list[Note]) -> None:
    owner: dict[IPAddress, tuple[Group, Vip]] = {}
    for group in groups:
        kept = []
        for vip in group.vips:
            first = owner.get(vip.address.ip)
            if first is None:
                owner[vip.address.ip] = (group, vip)
                kept.append(vip)
                continue
            notes.append(
                Note(
                    vip.where,
                    f"VIP {vip.address.ip} is also in {first[0].name} ({first[1].where}): two "
                    f"keepalived instances would fight over it. Imported in {first[0].name} only",
                )
            )
        group.vips = kept


def _weight_notes(group: Group, known: bool) -> list[Note]:
    """One note per weight; when every priority is known, say if no weight could move the group."""

    def could_move(node: str, weight: int) -> bool:
        mine = group.priority[node]
        low, high = (mine + weight, mine) if weight < 0 else (mine, mine + weight)
        return any(low < p < high for n, p in group.priority.items() if n != node)

    idle = {
        what
        for _, what, _, _ in group.weights
        if known and not any(could_move(n, w) for n, t, w, _ in group.weights if t == what)
    }
    notes = []
    for _node, what, weight, where in group.weights:
        kind = "check" if what.startswith("track_script") else "interface"
        text = f"{what} weight {weight} " + _WEIGHT_NOTE.format(
            what=kind, fails="fails" if kind == "check" else "is down"
        )
        if what in idle:
            priorities = ", ".join(f"{n} {p}" for n, p in group.priority.items())
            text += (
                f". With the priorities {priorities}, no node's weight could change which node "
                f"leads {group.name} in keepalived: it had no effect on failover there. Remove "
                "it from the group to keep that"
            )
        notes.append(Note(where, text))
    return notes


def _hook(commands: list[tuple[str, Where]], notes: list[Note]) -> list[str]:
    unique = list(dict.fromkeys(c for c, _ in commands))
    if len(unique) == 1:
        argv, shell = command_argv(unique[0])
        if shell:
            notes.append(
                Note(
                    commands[0][1],
                    "this notify command uses shell syntax (; | < > $ ...): "
                    "its hook runs it with /bin/sh -c",
                )
            )
        return argv
    notes.append(
        Note(
            commands[0][1],
            "several notify commands for one event (a specific and a generic "
            "notify, or a sync group's and its instances'): hafailover runs one hook per "
            "event, so they run one after the other in one /bin/sh -c command",
        )
    )
    return ["/bin/sh", "-c", "; ".join(unique)]


def _guess_priorities(
    groups: list[Group], nodes: list[Node], hosts: Sequence[Host], notes: list[Note]
) -> None:
    guessed = [n for n in nodes if n.host is None]
    for group in groups:
        for index in range(len(hosts)):
            node = next(n for n in nodes if n.host == index)
            if index not in group.units:
                assert node.name is not None
                group.priority[node.name] = 0
                notes.append(
                    Note(
                        group.first.where,
                        f"group {group.name}: {hosts[index].source} has no "
                        f"matching instance; node {node.name} gets priority 0 for it (every "
                        "node stands for every group in hafailover)",
                    )
                )
    if not guessed:
        return
    reference = 0
    own = [
        max(i.priority for i in g.units[reference].instances)
        for g in groups
        if reference in g.units
    ]
    low, high = (min(own), max(own)) if own else (100, 100)
    for group in groups:
        unit = group.units.get(reference) or group.first
        mine = max(i.priority for i in unit.instances)
        if high > low:
            theirs = min(255, max(0, high + low - mine))
        elif any(i.state == "MASTER" for i in unit.instances):
            theirs = max(mine - 10, 1)
        else:
            theirs = mine
        for node in guessed:
            assert node.name is not None
            group.priority[node.name] = theirs
    names = ", ".join(n.name or "?" for n in guessed)
    notes.append(
        Note(
            None,
            f"the priorities of {names} are guessed (no file of theirs was given): "
            f"mirrored from {hosts[reference].source}'s when its instances have different "
            "priorities (active/active), else 10 lower for its MASTER instances and equal for "
            "BACKUP ones. Import every host's file at once to carry over the real ones",
        )
    )


# --- checks and timing ------------------------------------------------------------------------


def _checks(hosts: Sequence[Host], groups: list[Group], notes: list[Note]) -> dict[str, Check]:
    """The checks by vrrp_script name: the first host's script of each name."""
    checks: list[Check] = []
    by_name: dict[str, Check] = {}
    used = {
        (u.host, name)
        for g in groups
        for u in g.units.values()
        for i in u.instances
        for name, _, _ in i.track_scripts
    }
    for index, host in enumerate(hosts):
        for script in host.scripts.values():
            if (index, script.name) not in used:
                if index == 0 or script.name not in by_name:
                    notes.append(
                        Note(
                            script.where,
                            f"vrrp_script {script.name} is tracked by no instance: not imported",
                        )
                    )
                continue
            if script.command is None:
                notes.append(
                    Note(
                        script.where,
                        f"vrrp_script {script.name} has no script "
                        "command (conditional lines skipped?): not imported",
                    )
                )
                continue
            known = by_name.get(script.name)
            if known is not None:
                if known.script.command != script.command:
                    notes.append(
                        Note(
                            script.where,
                            f"vrrp_script {script.name} runs "
                            f"{script.command!r} here but {known.script.command!r} at "
                            f"{known.script.where}: hafailover runs one command on every node; "
                            "the first is imported",
                        )
                    )
                continue
            checks.append(_check(script, {c.name for c in checks}, notes))
            by_name[script.name] = checks[-1]
    return by_name


def _check(script: Script, taken: set[str], notes: list[Note]) -> Check:
    assert script.command is not None
    argv, shell = command_argv(script.command)
    if shell:
        argv = [script.command]
        notes.append(
            Note(
                script.where,
                f"vrrp_script {script.name}: {script.command!r} uses shell "
                "syntax: imported with `shell: true` (run by /bin/sh -c)",
            )
        )
    for what in ("fall", "rise"):
        if getattr(script, what) > 100:
            notes.append(
                Note(
                    script.where,
                    f"vrrp_script {script.name}: {what} "
                    f"{getattr(script, what)} lowered to 100, the largest allowed",
                )
            )
            setattr(script, what, 100)
    timeout = script.timeout if script.timeout is not None else script.interval
    if timeout > script.fall * script.interval:
        notes.append(
            Note(
                script.where,
                f"vrrp_script {script.name}: timeout {timeout:g}s is longer "
                f"than fall x interval ({script.fall * script.interval:g}s); lowered to that, "
                "so a hung probe cannot delay failover more than `fall` failed ones",
            )
        )
        timeout = script.fall * script.interval
    name = unique_name(script.name, taken, "check")
    return Check(name, script, argv, shell, timeout)


def _timing(advert_int: float) -> tuple[float, float]:
    """hafailover's timings for keepalived's advert_int: its detection time or better."""
    # keepalived declares a MASTER dead after 3 x advert_int plus a skew of up to advert_int.
    if 3 * advert_int >= _DEFAULT_TIMING[1]:
        return _DEFAULT_TIMING
    return advert_int, 3 * advert_int
