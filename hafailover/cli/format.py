"""Human-readable rendering of control-socket results, and the status exit code.

Everything here takes the plain JSON dicts the daemon sends (documented in docs/cli.md) and is
defensive about missing keys: a newer daemon may add fields, an older one may lack some, and the
CLI must still print what it can instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import click

EXIT_OK: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_NO_HOLDER: Final = 2
EXIT_UNREACHABLE: Final = 3

TRANSITIONS_SHOWN: Final = 5
OUTPUT_TAIL_LINES: Final = 5


def records(value: object) -> list[Mapping[str, Any]]:
    """The dict items of a JSON list (anything else: empty), for tolerant rendering."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def group_holder(status: Mapping[str, Any], group: str | None) -> str | None:
    """The holder of `group` (None: the only or first group) in a status object."""
    groups = records(status.get("groups"))
    if group is None or not groups:
        return status.get("vip_holder") if not groups else groups[0].get("holder")
    for g in groups:
        if g.get("name") == group:
            holder = g.get("holder")
            return str(holder) if holder else None
    return None


def status_verdict(status: Mapping[str, Any]) -> tuple[int, str]:
    """The `status` exit code and a one-line reason for it; the worst group decides.

    0: some node holds every group's VIPs and every node is reachable, healthy and out of
    maintenance, with the same configuration. 1: every group has a holder but something is
    degraded. 2: some group has no holder. A witness reports no health (null), which is not
    counted against it; for a data node an unknown health (null) is counted as degraded, since
    it cannot be shown to be healthy.
    """
    groups = records(status.get("groups"))
    if groups:
        none = [str(g.get("name", "?")) for g in groups if not g.get("holder")]
        if none:
            what = "group " + ", ".join(none) if len(groups) > 1 else "the VIP"
            return EXIT_NO_HOLDER, f"no node holds {what}"
    elif not status.get("vip_holder"):
        return EXIT_NO_HOLDER, "no node holds the VIP"
    problems: list[str] = []
    for node in records(status.get("nodes")):
        name = str(node.get("name", "?"))
        if node.get("reachable") is False:
            problems.append(f"{name} unreachable")
        elif node.get("healthy") is False:
            problems.append(f"{name} unhealthy")
        elif node.get("healthy") is None and not node.get("witness"):
            problems.append(f"{name} health unknown")
        if node.get("maintenance") is True:
            problems.append(f"{name} in maintenance")
    me = status.get("node", "this node")
    no_quorum = [str(g.get("name", "?")) for g in groups if g.get("quorum") is False]
    if len(groups) > 1 and no_quorum:
        problems.append(f"{me} has no quorum for {', '.join(no_quorum)}")
    elif status.get("quorum") is False or no_quorum:
        problems.append(f"{me} has no quorum")
    for drift in records(status.get("drift")):
        sections = ", ".join(str(x) for x in drift.get("sections") or ())
        problems.append(f"{drift.get('node', '?')} has a different configuration ({sections})")
    if problems:
        return EXIT_DEGRADED, "degraded: " + ", ".join(problems)
    return EXIT_OK, "healthy"


def _ms(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _uptime(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def _flag(value: object, yes: str, no: str) -> str:
    return (yes if value else no) if isinstance(value, bool) else "?"


def _or_none(value: object) -> str:
    return "none" if value is None or value == "" else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; widths ignore colour codes so styled cells still line up."""

    def pad(cell: str, width: int) -> str:
        return cell + " " * (width - len(click.unstyle(cell)))

    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(click.unstyle(c))) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(pad(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "  ".join(pad(h, w) for h, w in zip(headers, widths, strict=True)).rstrip()
    return "\n".join([click.style(head, bold=True), *lines])


def _health(node: Mapping[str, Any]) -> str:
    if node.get("reachable") is False:
        return click.style("unreachable", fg="red")
    healthy = node.get("healthy")
    if healthy is True:
        return click.style("healthy", fg="green")
    if healthy is False:
        return click.style("UNHEALTHY", fg="red")
    return "-" if node.get("witness") else "unknown"


def _node_row(node: Mapping[str, Any], me: object) -> list[str]:
    name = str(node.get("name", "?"))
    role = str(node.get("role", "?"))
    if node.get("witness"):
        role += " (witness)"
    if name == me:
        heard = "(this node)"
    elif node.get("last_heard_ms") is None:
        heard = "never" if node.get("reachable") is False else "-"
    else:
        heard = _ms(node.get("last_heard_ms")) + " ago"
    return [
        name + (" *" if name == me else ""),
        role,
        _health(node),
        str(node.get("priority", "?")),
        _flag(node.get("maintenance"), "ON", "off"),
        heard,
    ]


def _group_row(group: Mapping[str, Any]) -> list[str]:
    eligible = "yes" if group.get("eligible") else "no: " + "; ".join(
        str(w) for w in group.get("not_eligible") or ["?"]
    )
    return [
        str(group.get("name", "?")),
        _or_none(group.get("holder")),
        str(group.get("term", "?")),
        _or_none(group.get("preferred")),
        eligible,
    ]


def format_event(event: Mapping[str, Any]) -> str:
    """`2024-05-01T12:00:00.123Z  #42 node1 [web] term 7 elected: won the election ...`."""
    message = event.get("message") or ""
    group = event.get("group")
    term = event.get("term")
    return (
        f"{event.get('time', '?')}  #{event.get('seq', '?')} {event.get('node', '?')} "
        + (f"[{group}] " if group and group != "default" else "")
        + (f"term {term} " if term is not None else "")
        + f"{event.get('reason', '?')}"
        + (f": {message}" if message else "")
    )


def _indent_tail(text: str) -> list[str]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return [f"      | {line}" for line in lines[-OUTPUT_TAIL_LINES:]]


def _single_header(status: Mapping[str, Any]) -> tuple[str, str]:
    """The top two lines for one election (no groups, or only one): its term, leader, holder."""
    lease = status.get("lease_remaining_ms")
    header = (
        f"cluster {status.get('cluster', '?')}  term {status.get('term', '?')}  "
        f"leader {_or_none(status.get('leader'))}  "
        f"VIP holder {_or_none(status.get('vip_holder'))}  "
        f"quorum {_flag(status.get('quorum'), 'yes', 'NO')}"
    )
    local = (
        f"this node: {status.get('node')} ({status.get('role', '?')}"
        + (", in maintenance" if status.get("maintenance") else "")
        + (", holds the VIP" if status.get("holds_vip") else "")
        + (f", lease {_ms(lease)}" if lease is not None else "")
        + f", up {_uptime(status.get('uptime_s'))})"
    )
    return header, local


def _groups_header(
    status: Mapping[str, Any], groups: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """The top two lines with several groups: nothing in them is one group's election (each
    group has its own leader, holder and term, shown in the group table)."""
    held = sum(1 for g in groups if g.get("holder"))
    no_quorum = [str(g.get("name", "?")) for g in groups if g.get("quorum") is not True]
    drift = sorted({str(d.get("node", "?")) for d in records(status.get("drift"))})
    header = (
        f"cluster {status.get('cluster', '?')}  {len(groups)} groups, {held} held  "
        + (f"quorum NO ({', '.join(no_quorum)})" if no_quorum else "quorum yes")
        + f"  config drift {', '.join(drift) if drift else 'none'}"
    )
    mine = [str(g.get("name", "?")) for g in groups if g.get("holds_vip")]
    local = (
        f"this node: {status.get('node')} ("
        + (f"holds {', '.join(mine)}" if mine else "holds no group")
        + (", in maintenance" if status.get("maintenance") else "")
        + f", up {_uptime(status.get('uptime_s'))})"
    )
    return header, local


def format_status(status: Mapping[str, Any]) -> str:
    code, verdict = status_verdict(status)
    colour = {EXIT_OK: "green", EXIT_DEGRADED: "yellow"}.get(code, "red")
    me = status.get("node")
    groups = records(status.get("groups"))
    if len(groups) > 1:
        header, local = _groups_header(status, groups)
    else:
        header, local = _single_header(status)
    out = [click.style(header, bold=True), local, click.style(verdict, fg=colour), ""]
    nodes = records(status.get("nodes"))
    out.append(
        table(
            ["NODE", "ROLE", "HEALTH", "PRIO", "MAINT", "LAST HEARD"],
            [_node_row(n, me) for n in nodes],
        )
    )
    if groups:
        out += ["", table(["GROUP", "HOLDER", "TERM", "PREFERRED", f"{me} ELIGIBLE"],
                          [_group_row(g) for g in groups])]
    failing = [c for c in records(status.get("checks")) if c.get("ok") is False]
    if failing:
        out += ["", click.style(f"Failing checks on {me}:", bold=True)]
        for check in failing:
            kind = "critical" if check.get("critical") else "non-critical"
            since = f", since {check['last_change']}" if check.get("last_change") else ""
            out.append(
                f"  {click.style(str(check.get('name', '?')), fg='red')} "
                f"({check.get('kind', '?')}, {kind}, took {_ms(check.get('last_duration_ms'))}"
                f"{since})"
            )
            out += _indent_tail(str(check.get("output_tail") or ""))
    vips = records(status.get("vips"))
    if vips:
        out += ["", click.style(f"VIPs on {me}:", bold=True)]
        for vip in vips:
            present = "present" if vip.get("present") else "absent"
            out.append(f"  {vip.get('address', '?')} on {vip.get('interface', '?')}: {present}")
    transitions = records(status.get("last_transitions"))[-TRANSITIONS_SHOWN:]
    if transitions:
        out += ["", click.style("Last transitions:", bold=True)]
        out += [f"  {format_event(e)}" for e in transitions]
    drops = status.get("drops")
    if isinstance(drops, Mapping) and any(drops.values()):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v)
        out += ["", f"Dropped packets: {counts}"]
    return "\n".join(out)


def format_outcome(action: str, result: Mapping[str, Any]) -> str:
    """`switchover refused: target-unhealthy (node2 fails check nginx)`."""
    detail = result.get("detail") or ""
    verdict = "accepted" if result.get("accepted") else "refused"
    return f"{action} {verdict}: {result.get('reason', '?')}" + (f" ({detail})" if detail else "")


class Report:
    """`check-config` output: one line per check, `OK`, `WARN` or `FAIL` first."""

    def __init__(self) -> None:
        self.failed = False

    def ok(self, text: str) -> None:
        self._line("OK", "green", text)

    def warn(self, text: str) -> None:
        self._line("WARN", "yellow", text)

    def fail(self, text: str) -> None:
        self.failed = True
        self._line("FAIL", "red", text)

    @staticmethod
    def _line(label: str, colour: str, text: str) -> None:
        click.echo(f"{click.style(label.ljust(4), fg=colour, bold=True)}  {text}")
