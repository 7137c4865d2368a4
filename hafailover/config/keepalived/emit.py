"""The merged layout written as hafailover YAML, commented with where each part came from."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from hafailover.config.durations import format_duration
from hafailover.config.keepalived.cluster import Check, Group, Layout

__all__ = ["render"]

# Plain (unquoted) only what YAML cannot read as anything but this text: a name or path that
# starts with a letter, '_' or '/', or a dotted IPv4 address (with prefix); everything else is
# written double-quoted.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_/.:@+=,-]*|\d+\.\d+\.\d+\.\d+(/\d+)?")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def scalar(value: object) -> str:
    """A YAML flow scalar that reads back as exactly `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text, ensure_ascii=False)


def flow_list(items: Iterable[object]) -> str:
    return "[" + ", ".join(scalar(i) for i in items) + "]"


def render(layout: Layout, cluster_name: str) -> str:
    out: list[str] = [
        "# hafailover configuration imported from keepalived by `hafailover import-keepalived`",
        f"# from: {', '.join(layout.sources)}",
        "# Read the notes printed with it (what was not carried over), run `hafailover genkey`,",
        "# copy this file and the key to every node, then `hafailover check-config` on each.",
        "",
        "cluster:",
        f"  name: {scalar(cluster_name)}",
        "  key_file: /etc/hafailover/cluster.key",
        f"  # keepalived: advert_int {layout.advert_int:g}s, so a dead MASTER was noticed after "
        f"{3 * layout.advert_int:g}s or more",
        "  # (3 x advert_int + skew); hafailover fails over after failover_timeout.",
        f"  heartbeat_interval: {format_duration(layout.heartbeat_interval)}",
        f"  failover_timeout: {format_duration(layout.failover_timeout)}",
    ]
    if layout.heartbeat_interval < 0.1:
        out.append(f"  lease_guard: {format_duration(layout.heartbeat_interval / 2)}")
    out += ["", "nodes:"]
    for node in layout.nodes:
        comment = node.source if node.host is not None else f"from {node.source}"
        if node.aliases:
            comment += f"; also {', '.join(str(a) for a in node.aliases)}"
        out.append(
            f"  - {{name: {scalar(node.name)}, address: {scalar(str(node.address))}}}  # {comment}"
        )
    voters = len(layout.nodes)
    if voters % 2 == 0:
        out += [
            f"  # {voters} voters need {voters // 2 + 1} for a majority: with one node down the "
            "rest cannot",
            "  # elect a leader. Add a third voter, e.g. a witness (any small host; it never "
            "holds VIPs):",
            "  # - {name: witness, address: ADDRESS, witness: true}",
        ]
    if layout.checks:
        out += ["", "checks:"]
        for check in layout.checks:
            out += _check(check)
    out += ["", "groups:"]
    for group in layout.groups:
        out += _group(group, bool(layout.checks))
    return "\n".join(out) + "\n"


def _check(check: Check) -> list[str]:
    script = check.script
    lines = [f"  - name: {scalar(check.name)}  # vrrp_script {script.name} ({script.where})"]
    if check.shell:
        lines += ["    shell: true", f"    script: {scalar(check.argv[0])}"]
    else:
        lines.append(f"    script: {flow_list(check.argv)}")
    lines += [
        f"    interval: {format_duration(script.interval)}",
        f"    timeout: {format_duration(check.timeout)}",
        f"    fall: {script.fall}",
        f"    rise: {script.rise}",
    ]
    return lines


def _group(group: Group, any_checks: bool) -> list[str]:
    unit = group.first
    vrids = sorted({i.vrid for i in unit.instances if i.vrid is not None})
    origin = f"{unit.kind} {unit.name} ({unit.where})"
    if vrids:
        origin += f", virtual_router_id {', '.join(str(v) for v in vrids)}"
    lines = [f"  - name: {scalar(group.name)}  # {origin}", "    vips:"]
    if not group.vips:
        lines[-1] = "    vips: []"
    for vip in group.vips:
        lines.append(
            f"      - {{address: {scalar(str(vip.address))}, interface: {scalar(vip.interface)}}}"
        )
    pairs = ", ".join(f"{scalar(n)}: {p}" for n, p in group.priority.items())
    lines.append(f"    priority: {{{pairs}}}")
    if any_checks:
        lines.append(f"    checks: {flow_list(group.checks)}")
    lines.append(f"    preempt: {scalar(group.preempt)}")
    if group.preempt_delay is not None:
        lines.append(f"    preempt_delay: {format_duration(group.preempt_delay)}")
    elif group.preempt:
        lines.append(
            "    # keepalived preempts at once; hafailover waits cluster.preempt_delay (30s)"
        )
    if group.track_interfaces:
        lines.append(f"    track_interfaces: {flow_list(group.track_interfaces)}")
    if group.hooks:
        lines.append("    notify:")
        for hook in ("leader", "follower", "unhealthy", "stop"):
            if hook in group.hooks:
                lines.append(f"      {hook}: {flow_list(group.hooks[hook])}")
    return lines
