"""One host's keepalived.conf as the importer needs it: instances, sync groups and scripts.

Everything read is kept with its place (FILE:LINE); every statement that is not used is reported
as a `Note` saying why it has no equivalent, so nothing disappears without a word.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from hafailover.config.keepalived.parse import KeepalivedSyntaxError, Note, Statement, Where

__all__ = [
    "HOOK_EVENTS",
    "Host",
    "Instance",
    "Script",
    "SyncGroup",
    "Vip",
    "command_argv",
    "read_host",
]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# keepalived notify keyword -> hafailover hook, and the state word a generic `notify` gets.
HOOK_EVENTS = {
    "notify_master": ("leader", "MASTER"),
    "notify_backup": ("follower", "BACKUP"),
    "notify_fault": ("unhealthy", "FAULT"),
    "notify_stop": ("stop", "STOP"),
}
_SHELL_CHARS = re.compile(r"[|&;<>()$`*?~\[\]{}]")
# VIP options with a value, and flags, as keepalived's virtual_ipaddress accepts them.
_VIP_VALUE_OPTIONS = {
    "dev",
    "brd",
    "broadcast",
    "scope",
    "label",
    "peer",
    "preferred_lft",
    "track_group",
    "metric",
    "table",
    "protocol",
    "src",
    "via",
    "gw",
}
_VIP_FLAGS = {"home", "-nodad", "nodad", "noprefixroute", "autojoin", "no_track"}

_WHY = {
    "smtp_alert": "hafailover sends no mail: send it from a notify hook",
    "garp": "hafailover announces a VIP it takes with `announce.count` gratuitous ARP/NA "
    "messages (see the announce section)",
    "use_vmac": "hafailover moves the address, not a virtual MAC; neighbours learn the new "
    "holder from gratuitous ARP/NA",
    "vmac_xmit_base": "hafailover moves the address, not a virtual MAC",
    "version": "VRRP's version has no meaning here: hafailover has its own protocol",
    "lvs_sync_daemon_interface": "LVS connection sync is part of keepalived's load balancer, "
    "which is not imported",
    "virtual_routes": "routes that follow the VIPs: add them in the group's leader hook",
    "virtual_rules": "rules that follow the VIPs: add them in the group's leader hook",
    "track_file": "express the file's state as a script check",
    "track_process": "express it as a script check (e.g. pidof PROCESS)",
    "track_bfd": "BFD is not supported: use a check",
    "mcast_dst_ip": "hafailover talks unicast UDP to every node address",
    "unicast_ttl": "hafailover talks unicast UDP to every node address",
    "notify_master_rx_lower_pri": "no equivalent event",
    "notify_deleted": "no equivalent event",
    "debug": "use log_level",
}


@dataclass
class Vip:
    address: IPInterface
    interface: str
    where: Where


@dataclass
class Script:
    name: str
    where: Where
    command: str | None = None
    interval: float = 1.0
    timeout: float | None = None
    fall: int = 1
    rise: int = 1
    weight: int = 0


@dataclass
class Instance:
    name: str
    where: Where
    interface: str | None = None
    state: str = "BACKUP"
    priority: int = 100
    vrid: int | None = None
    advert_int: float = 1.0
    vips: list[Vip] = field(default_factory=list)
    track_interfaces: list[tuple[str, int, Where]] = field(default_factory=list)
    track_scripts: list[tuple[str, int | None, Where]] = field(default_factory=list)
    nopreempt: bool = False
    preempt_delay: float | None = None
    dont_track_primary: bool = False
    # hook name -> commands (keepalived runs a specific and a generic notify both).
    hooks: dict[str, list[tuple[str, Where]]] = field(default_factory=dict)
    unicast_src: IPAddress | None = None
    unicast_peers: list[IPAddress] = field(default_factory=list)


@dataclass
class SyncGroup:
    name: str
    where: Where
    members: list[str] = field(default_factory=list)
    hooks: dict[str, list[tuple[str, Where]]] = field(default_factory=dict)


@dataclass
class Host:
    """One keepalived.conf (with its includes): what one host runs."""

    source: str
    instances: list[Instance] = field(default_factory=list)
    sync_groups: list[SyncGroup] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    authenticated: list[Where] = field(default_factory=list)


def command_argv(command: str) -> tuple[list[str], bool]:
    """keepalived's command string as an argv, and whether it needs a shell to mean the same."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return ["/bin/sh", "-c", command], True
    if _SHELL_CHARS.search(command) or not argv:
        return ["/bin/sh", "-c", command], True
    return argv, False


def read_host(statements: list[Statement], source: str) -> Host:
    host = Host(source)
    for stmt in statements:
        key = stmt.key
        if key == "vrrp_instance" and stmt.children is not None:
            host.instances.append(_instance(stmt, host))
        elif key == "vrrp_script" and stmt.children is not None:
            script = _script(stmt, host)
            host.scripts[script.name] = script
        elif key == "vrrp_sync_group" and stmt.children is not None:
            _sync_group(stmt, host)
        elif key in ("virtual_server", "virtual_server_group", "real_server"):
            what = " ".join([key, *stmt.args])
            host.notes.append(
                Note(
                    stmt.where,
                    f"LVS `{what}` is load balancing, not address failover: not imported. Keep "
                    "running it with keepalived's LVS part (or ipvsadm) next to hafailover",
                )
            )
        elif key == "global_defs":
            keys = sorted({c.key for c in stmt.children or ()})
            if keys:
                host.notes.append(
                    Note(
                        stmt.where,
                        f"global_defs ({', '.join(keys)}) not carried over: mail, router_id and "
                        "script security have no equivalent (hafailover runs hooks and checks "
                        "as root, without a shell unless asked)",
                    )
                )
        elif key in ("static_routes", "static_ipaddress", "static_rules"):
            host.notes.append(
                Note(
                    stmt.where,
                    f"{key} not carried over: they do not move; configure them "
                    "with the host's network configuration",
                )
            )
        elif key == "local_address_group":
            host.notes.append(
                Note(stmt.where, "local_address_group (LVS local addresses) not imported")
            )
        else:
            host.notes.append(
                Note(stmt.where, f"`{key}` not carried over: hafailover has no equivalent")
            )
    return host


def _arg(stmt: Statement, index: int = 0) -> str:
    if len(stmt.args) <= index:
        raise KeepalivedSyntaxError(stmt.where, f"{stmt.key} needs a value")
    return stmt.args[index].rstrip(";")


def _number(stmt: Statement, low: float, high: float) -> float:
    text = _arg(stmt)
    try:
        value = float(text)
    except ValueError:
        raise KeepalivedSyntaxError(stmt.where, f"{stmt.key} {text}: expected a number") from None
    if not low <= value <= high:
        raise KeepalivedSyntaxError(
            stmt.where, f"{stmt.key} {text} is out of range ({low:g} to {high:g})"
        )
    return value


def _integer(stmt: Statement, low: int, high: int) -> int:
    value = _number(stmt, low, high)
    if value != int(value):
        raise KeepalivedSyntaxError(stmt.where, f"{stmt.key} {_arg(stmt)}: expected a whole number")
    return int(value)


def _command(stmt: Statement) -> str:
    if not stmt.args:
        raise KeepalivedSyntaxError(stmt.where, f"{stmt.key} needs a command")
    return " ".join(stmt.args)


def _address(text: str, where: Where) -> IPAddress:
    bare = text.split("/", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        raise KeepalivedSyntaxError(where, f"{text!r} is not an IP address") from None


def _script(stmt: Statement, host: Host) -> Script:
    script = Script(stmt.args[0] if stmt.args else "script", stmt.where)
    for child in stmt.children or ():
        if child.key == "script":
            script.command = _command(child)
        elif child.key == "interval":
            script.interval = _number(child, 0.001, 1e6)
        elif child.key == "timeout":
            script.timeout = _number(child, 0.001, 1e6)
        elif child.key == "fall":
            script.fall = _integer(child, 1, 1_000_000)
        elif child.key == "rise":
            script.rise = _integer(child, 1, 1_000_000)
        elif child.key == "weight":
            script.weight = _integer(child, -254, 254)
        else:
            host.notes.append(
                Note(
                    child.where,
                    f"vrrp_script {script.name}: `{child.key}` not carried over: no equivalent",
                )
            )
    return script


def _sync_group(stmt: Statement, host: Host) -> None:
    name = stmt.args[0] if stmt.args else "sync_group"
    group = SyncGroup(name, stmt.where)
    blocks = stmt.blocks("group")
    for child in stmt.children or ():
        if child.key == "group" and child.children is not None:
            group.members += [m.key for m in child.children]
        elif child.key in HOOK_EVENTS:
            group.hooks.setdefault(HOOK_EVENTS[child.key][0], []).append(
                (_command(child), child.where)
            )
        elif child.key == "notify":
            _generic_notify(group.hooks, _command(child), "GROUP", name, child.where)
        elif not blocks and child.children is None and not child.args:
            pass  # a member name in the pre-1.2 form, reported below
        else:
            host.notes.append(
                Note(
                    child.where,
                    f"vrrp_sync_group {name}: `{child.key}` not carried over: no equivalent",
                )
            )
    if not blocks:
        old = [c.key for c in stmt.children or () if c.children is None and not c.args]
        host.notes.append(
            Note(
                stmt.where,
                f"vrrp_sync_group {name} has no `group {{ }}` block (the pre-1.2 form "
                f"{' '.join(old)}, which keepalived ignores today): its instances are imported "
                "as separate groups",
            )
        )
        return
    host.sync_groups.append(group)


def _generic_notify(
    hooks: dict[str, list[tuple[str, Where]]], command: str, kind: str, name: str, where: Where
) -> None:
    # keepalived calls a generic notify as `COMMAND TYPE NAME STATE PRIORITY`.
    for hook, state in HOOK_EVENTS.values():
        args = " ".join(shlex.quote(a) for a in (kind, name, state))
        hooks.setdefault(hook, []).append((f"{command} {args}", where))


def _instance(stmt: Statement, host: Host) -> Instance:
    inst = Instance(stmt.args[0] if stmt.args else "instance", stmt.where)
    pending_vips: list[Statement] = []
    for child in stmt.children or ():
        key = child.key
        if key == "interface":
            inst.interface = _arg(child)
        elif key == "state":
            inst.state = _arg(child).upper()
        elif key == "priority":
            inst.priority = _integer(child, 0, 255)
        elif key == "virtual_router_id":
            inst.vrid = _integer(child, 0, 255)
        elif key == "advert_int":
            inst.advert_int = _number(child, 0.001, 255)
        elif key in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
            pending_vips += child.children or []
        elif key == "track_interface":
            for item in child.children or ():
                inst.track_interfaces.append((item.key, _weight(item), item.where))
        elif key == "track_script":
            for item in child.children or ():
                weight = _weight(item) if item.args else None
                inst.track_scripts.append((item.key, weight, item.where))
        elif key == "nopreempt":
            inst.nopreempt = True
        elif key == "preempt":
            inst.nopreempt = False
        elif key == "preempt_delay":
            inst.preempt_delay = _number(child, 0, 1000)
        elif key == "dont_track_primary":
            inst.dont_track_primary = True
        elif key in HOOK_EVENTS:
            inst.hooks.setdefault(HOOK_EVENTS[key][0], []).append((_command(child), child.where))
        elif key == "notify":
            _generic_notify(inst.hooks, _command(child), "INSTANCE", inst.name, child.where)
        elif key in ("unicast_src_ip", "mcast_src_ip"):
            inst.unicast_src = _address(_arg(child), child.where)
        elif key == "unicast_peer":
            inst.unicast_peers += [_address(p.key, p.where) for p in child.children or ()]
        elif key == "authentication":
            host.authenticated.append(child.where)
        else:
            topic = "garp" if key.startswith(("garp_", "gna_")) else key
            why = _WHY.get(topic, "no equivalent")
            host.notes.append(
                Note(child.where, f"vrrp_instance {inst.name}: `{key}` not carried over: {why}")
            )
    for item in pending_vips:
        inst.vips.append(_vip(item, inst, host))
    return inst


def _weight(item: Statement) -> int:
    if len(item.args) >= 2 and item.args[0] == "weight":
        try:
            return int(item.args[1])
        except ValueError:
            pass
    if item.args:
        raise KeepalivedSyntaxError(
            item.where, f"{item.key} {' '.join(item.args)}: expected `NAME [weight N]`"
        )
    return 0


def _vip(item: Statement, inst: Instance, host: Host) -> Vip:
    text = item.key
    words = item.args
    device = inst.interface
    dropped: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _VIP_VALUE_OPTIONS and i + 1 < len(words):
            if word == "dev":
                device = words[i + 1]
            else:
                dropped.append(f"{word} {words[i + 1]}")
            i += 2
        elif word in _VIP_FLAGS:
            dropped.append(word)
            i += 1
        else:
            raise KeepalivedSyntaxError(item.where, f"VIP {text}: unknown option {word!r}")
    try:
        if "/" in text:
            address: IPInterface = ipaddress.ip_interface(text)
        else:
            ip = ipaddress.ip_address(text)
            address = ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")
    except ValueError:
        raise KeepalivedSyntaxError(
            item.where, f"{text!r} in virtual_ipaddress is not an address"
        ) from None
    if device is None:
        raise KeepalivedSyntaxError(
            item.where,
            f"VIP {text} has no interface: vrrp_instance {inst.name} sets no `interface` and "
            "the VIP no `dev`",
        )
    if dropped:
        host.notes.append(
            Note(
                item.where,
                f"VIP {address}: {', '.join(dropped)} not carried over: "
                "hafailover adds the address with its prefix on its interface, nothing more",
            )
        )
    return Vip(address, device, item.where)
