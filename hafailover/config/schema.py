"""The configuration as typed, immutable objects, and the rules that span several keys.

Scalar types and their messages live in `fields`; here are the sections, the rules that relate
keys to each other (one probe per check, unique names, timings the core accepts), the warnings,
and the conversion to the core's `ClusterSpec`.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hafailover.config.durations import format_duration
from hafailover.config.excerpt import excerpt
from hafailover.config.fields import (
    Bool,
    ClockDrift,
    Count,
    Duration,
    FilePath,
    Hook,
    HostPort,
    HttpUrl,
    InterfaceList,
    InterfaceName,
    IPAddress,
    Issue,
    KeyPath,
    Lifetime,
    ListenAddress,
    LogLevel,
    LoopLag,
    Name,
    NameList,
    NodeAddress,
    OptionalBool,
    OptionalDuration,
    OptionalPort,
    OptionalText,
    Port,
    PositiveDuration,
    Priority,
    PriorityMap,
    SchemaError,
    Script,
    StatusRange,
    TcpTarget,
    VipAddress,
    none_is,
)
from hafailover.core.spec import ClusterSpec, NodeSpec, TimingError, Timings

if TYPE_CHECKING:
    from hafailover.config.groups import Fingerprint, Group

__all__ = [
    "SECTION_MODELS",
    "AnnounceConfig",
    "CheckConfig",
    "CheckKind",
    "ClusterConfig",
    "Config",
    "GroupConfig",
    "HostPort",
    "MetricsConfig",
    "NodeConfig",
    "NotifyConfig",
    "VipConfig",
    "section_model",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections --------------------------------------------------------------------------------

# Which key names the first one in a TimingError message is, so the error lands on that key.
_TIMING_KEYS = (
    "heartbeat_interval",
    "failover_timeout",
    "clock_drift",
    "lease_guard",
    "startup_settle",
)
_TIMING_FIX = {
    "heartbeat_interval": "set heartbeat_interval to e.g. 100ms",
    "lease_guard": "lower lease_guard or raise heartbeat_interval",
    "clock_drift": "use e.g. 0.01",
    "startup_settle": "use e.g. 1s",
}


class ClusterConfig(_Section):
    """The `cluster` section: identity, port and the protocol timings (in seconds)."""

    name: Name
    key_file: FilePath = Path("/etc/hafailover/cluster.key")
    port: Port = 5405
    heartbeat_interval: Duration = 0.1
    failover_timeout: Duration = 0.6
    lease_guard: Duration = 0.05
    preempt: Bool = False
    preempt_delay: Duration = 30.0
    startup_settle: Duration = 1.0
    clock_drift: ClockDrift = 0.01
    max_loop_lag: LoopLag = 0.5
    watchdog: Bool = True
    # Seconds the kernel keeps a VIP unless the leader renews it (None: forever). A backstop for
    # a daemon that stops without releasing (SIGSTOP, a hung host): the address expires by itself.
    vip_lifetime: Lifetime = 2.0
    # How long a tracked link must have been up before this node is eligible again.
    link_settle: Duration = 1.0

    @property
    def timings(self) -> Timings:
        return Timings(
            heartbeat_interval=self.heartbeat_interval,
            failover_timeout=self.failover_timeout,
            clock_drift=self.clock_drift,
            lease_guard=self.lease_guard,
            preempt_delay=self.preempt_delay,
            startup_settle=self.startup_settle,
        )

    @property
    def max_loop_lag_seconds(self) -> float:
        """Event-loop lag beyond which this node reports itself unhealthy."""
        return self.max_loop_lag * self.failover_timeout

    @model_validator(mode="after")
    def _timings_work(self) -> Self:
        # The core owns the timing rules; we only place its verdict on a key.
        try:
            self.timings.validate()
        except TimingError as exc:
            text = str(exc)
            # Report on the first key the message names, preferring keys the file sets: a
            # default the operator never wrote is a poor place to point at.
            named = sorted((text.find(k), k) for k in _TIMING_KEYS if k in text)
            keys = [k for _, k in named] or ["failover_timeout"]
            key = next((k for k in keys if k in self.model_fields_set), keys[0])
            if ":" not in text and keys[0] in _TIMING_FIX:
                text += f": {_TIMING_FIX[keys[0]]}"
            raise SchemaError.at(key, text) from None
        lifetime = self.vip_lifetime
        if lifetime is not None and lifetime < 2 * self.heartbeat_interval:
            raise SchemaError.at(
                "vip_lifetime",
                f"vip_lifetime ({format_duration(lifetime)}) is shorter than two heartbeats "
                f"({format_duration(2 * self.heartbeat_interval)}): the leader could not renew "
                "its VIPs in time. Raise vip_lifetime or lower heartbeat_interval",
            )
        return self


class NodeConfig(_Section):
    """One entry of `nodes`: every node votes; a witness never holds the VIPs."""

    name: Name
    address: NodeAddress
    priority: Priority = 100
    witness: Bool = False
    # None: the node listens on cluster.port. Set it to run several nodes on one address (a lab).
    port: OptionalPort = None


class VipConfig(_Section):
    """One entry of `vips`: `address` is the VIP with its prefix, `interface` the device name."""

    # `address` keeps the prefix (an ip_interface) because the VIP is added with it, which
    # also tells the kernel its subnet; `interface` is the network device it lives on.
    address: VipAddress
    interface: InterfaceName

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return self.address.network


class AnnounceConfig(_Section):
    """Gratuitous ARP / unsolicited NA after taking the VIPs; refresh 0 means no repeats."""

    count: Count = 3
    interval: PositiveDuration = 0.1
    refresh: Duration = 0.0


class CheckKind(StrEnum):
    SCRIPT = "script"
    HTTP = "http"
    TCP = "tcp"


class CheckConfig(_Section):
    """One health check; exactly one of script/http/tcp is set, which gives its `kind`."""

    name: Name
    shell: Bool = False  # before `script`: the script validator reads it
    script: Script = None
    http: HttpUrl = None
    tcp: TcpTarget = None
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 1.0
    fall: Count = 2
    rise: Count = 2
    critical: Bool = True
    expect_status: StatusRange = (200, 399)
    expect_body: OptionalText = None
    # Run once when the check turns failing, after this node handed its groups over.
    recover: Hook = None
    recover_timeout: PositiveDuration = 30.0

    @property
    def kind(self) -> CheckKind:
        if self.script is not None:
            return CheckKind.SCRIPT
        return CheckKind.HTTP if self.http is not None else CheckKind.TCP

    @property
    def argv(self) -> tuple[str, ...]:
        """What to exec for a script check: with shell, `/bin/sh -c script[0] script[1:]...`."""
        if self.script is None:
            raise ValueError(f"check {self.name} is a {self.kind.value} check, not a script")
        return ("/bin/sh", "-c", *self.script) if self.shell else self.script

    @model_validator(mode="after")
    def _one_probe(self) -> Self:
        given = [k for k in ("script", "http", "tcp") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none is set" if not given else f"{' and '.join(given)} are set"
            raise ValueError(
                f"a check needs exactly one of script, http or tcp, but {what}. Split it into "
                "one check per probe"
            )
        issues = []
        if self.shell and self.script is None:
            issues.append(Issue(("shell",), "shell applies only to script checks. Remove it"))
        if self.http is None:
            issues += [
                Issue((k,), f"{k} applies only to http checks. Remove it")
                for k in ("expect_status", "expect_body")
                if k in self.model_fields_set
            ]
        if self.recover is None and "recover_timeout" in self.model_fields_set:
            issues.append(
                Issue(("recover_timeout",), "recover_timeout applies only with recover. Remove it")
            )
        if self.timeout > self.fall * self.interval:
            issues.append(
                Issue(
                    ("timeout",),
                    f"timeout ({format_duration(self.timeout)}) is longer than fall x interval "
                    f"({format_duration(self.fall * self.interval)}): one hung probe would delay "
                    "failover more than `fall` failed probes. Lower timeout or raise interval",
                )
            )
        if issues:
            raise SchemaError(issues)
        return self


class NotifyConfig(_Section):
    """Hooks as argv tuples (None: not configured) and how long one may run."""

    leader: Hook = None
    follower: Hook = None
    unhealthy: Hook = None
    maintenance: Hook = None
    stop: Hook = None
    timeout: PositiveDuration = 10.0


class MetricsConfig(_Section):
    """The optional `metrics` section: where the Prometheus endpoint listens (absent: off)."""

    listen: ListenAddress


class GroupConfig(_Section):
    """One entry of `groups` as written; `Config.groups` holds them with defaults resolved."""

    name: Name
    vips: Annotated[tuple[VipConfig, ...], BeforeValidator(none_is(()))] = ()
    # Nodes left out use their nodes[].priority.
    priority: Annotated[PriorityMap, BeforeValidator(none_is({}))] = {}
    # None: every critical check.
    checks: NameList = None
    preempt: OptionalBool = None
    preempt_delay: OptionalDuration = None
    track_interfaces: Annotated[InterfaceList, BeforeValidator(none_is(()))] = ()
    # Hooks set here replace the top-level ones for this group; the others are inherited.
    notify: NotifyConfig | None = None

    @field_validator("vips")
    @classmethod
    def _vips_unique(cls, vips: tuple[VipConfig, ...]) -> tuple[VipConfig, ...]:
        issues = _unique(enumerate(v.ip for v in vips), "address", lambda v: f"VIP {v}")
        if issues:
            raise SchemaError(issues)
        return vips


def _unique(
    items: Iterable[tuple[int, object]], key: str, what: Callable[[object], str]
) -> list[Issue]:
    seen: dict[object, int] = {}
    issues = []
    for index, value in items:
        if value in seen:
            issues.append(
                Issue(
                    (index, key),
                    f"{what(value)} is already used by entry [{seen[value]}]. Each must be unique",
                )
            )
        else:
            seen[value] = index
    return issues


class Config(_Section):
    """A whole configuration file. Sections not in the file take their defaults."""

    cluster: ClusterConfig
    nodes: tuple[NodeConfig, ...]
    vips: Annotated[tuple[VipConfig, ...], BeforeValidator(none_is(()))] = ()
    # The `groups` key as written; `groups` (below) is the normalized list, never empty.
    group_entries: Annotated[tuple[GroupConfig, ...], BeforeValidator(none_is(()))] = Field(
        default=(), alias="groups"
    )
    announce: Annotated[AnnounceConfig, BeforeValidator(none_is({}))] = AnnounceConfig()
    checks: Annotated[tuple[CheckConfig, ...], BeforeValidator(none_is(()))] = ()
    notify: Annotated[NotifyConfig, BeforeValidator(none_is({}))] = NotifyConfig()
    control_socket: FilePath = Path("/run/hafailover/control.sock")
    control_group: Name = "hafailover"
    state_dir: FilePath = Path("/var/lib/hafailover")
    log_level: LogLevel = "info"
    metrics: MetricsConfig | None = None

    @field_validator("nodes")
    @classmethod
    def _nodes_form_a_cluster(
        cls, nodes: tuple[NodeConfig, ...], info: ValidationInfo
    ) -> tuple[NodeConfig, ...]:
        if not nodes:
            raise ValueError(
                "no nodes, so no voters: list every node of the cluster (the same list on all)"
            )
        cluster = info.data.get("cluster")
        default_port = cluster.port if isinstance(cluster, ClusterConfig) else None
        issues = _unique(enumerate(n.name for n in nodes), "name", lambda v: f"node name {v}")
        issues += _unique(
            enumerate((n.address, n.port or default_port) for n in nodes),
            "address",
            lambda v: f"address {v[0]} (port {v[1]})" if isinstance(v, tuple) else str(v),
        )
        if all(n.witness for n in nodes):
            issues.append(
                Issue(
                    (),
                    "every node is a witness, so none can hold the VIPs. Remove "
                    "`witness: true` from at least one node",
                )
            )
        if issues:
            raise SchemaError(issues)
        return nodes

    @field_validator("vips")
    @classmethod
    def _vips_unique(cls, vips: tuple[VipConfig, ...]) -> tuple[VipConfig, ...]:
        issues = _unique(enumerate(v.ip for v in vips), "address", lambda v: f"VIP {v}")
        if issues:
            raise SchemaError(issues)
        return vips

    @field_validator("checks")
    @classmethod
    def _checks_unique(cls, checks: tuple[CheckConfig, ...]) -> tuple[CheckConfig, ...]:
        issues = _unique(enumerate(c.name for c in checks), "name", lambda v: f"check name {v}")
        if issues:
            raise SchemaError(issues)
        return checks

    @model_validator(mode="after")
    def _vips_are_not_node_addresses(self) -> Self:
        owners = {n.address: n.name for n in self.nodes}
        issues = [
            Issue(
                (*path, "address"),
                f"{vip.ip} is node {owners[vip.ip]}'s own address. A VIP must be an extra "
                "address that no node has permanently",
            )
            for path, vip in self._vip_paths()
            if vip.ip in owners
        ]
        if issues:
            raise SchemaError(issues)
        return self

    @model_validator(mode="after")
    def _groups_fit_the_cluster(self) -> Self:
        if not self.group_entries:
            return self
        if self.vips:
            raise SchemaError.at(
                "groups",
                "groups and top-level vips are both set. Move the top-level vips into a group "
                "(or remove groups: to keep the single group named default)",
            )
        issues = _unique(
            enumerate(g.name for g in self.group_entries), "name", lambda v: f"group name {v}"
        )
        issues = [Issue(("groups", *i.path), i.message) for i in issues]
        nodes = [n.name for n in self.nodes]
        checks = [c.name for c in self.checks]
        holder: dict[IPAddress, tuple[str, int, int]] = {}
        for g, group in enumerate(self.group_entries):
            at: KeyPath = ("groups", g)
            for name in group.priority:
                if name not in nodes:
                    issues.append(Issue((*at, "priority", name), _no_such("node", name, nodes)))
            for c, name in enumerate(group.checks or ()):
                if name not in checks:
                    issues.append(Issue((*at, "checks", c), _no_such("check", name, checks)))
            for v, vip in enumerate(group.vips):
                first = holder.setdefault(vip.ip, (group.name, g, v))
                if first[1] != g:
                    issues.append(
                        Issue(
                            (*at, "vips", v, "address"),
                            f"VIP {vip.ip} is already in group {first[0]} "
                            f"(groups[{first[1]}].vips[{first[2]}]). A VIP belongs to one group",
                        )
                    )
        if issues:
            raise SchemaError(issues)
        return self

    def _vip_paths(self) -> Iterable[tuple[KeyPath, VipConfig]]:
        for i, vip in enumerate(self.vips):
            yield ("vips", i), vip
        for g, group in enumerate(self.group_entries):
            for i, vip in enumerate(group.vips):
                yield ("groups", g, "vips", i), vip

    def warnings(self) -> tuple[Issue, ...]:
        """Legal but probably unintended settings; paths are from the top of the file."""
        found = []
        voters = len(self.nodes)
        if voters == 1:
            found.append(
                Issue(("nodes",), "only one node: there is nothing to fail over to. Add nodes")
            )
        elif voters % 2 == 0:
            quorum = voters // 2 + 1
            found.append(
                Issue(
                    ("nodes",),
                    f"{voters} voting nodes need {quorum} for a majority, so the cluster "
                    f"survives only {voters - quorum} failure(s), as many as with {voters - 1}. "
                    "Add a witness node (`witness: true`, any small host) to make "
                    "the number of voters odd",
                )
            )
        if not self.vips and not self.group_entries:
            found.append(
                Issue(("vips",), "no VIPs: the leader only runs notify hooks. Add vips entries")
            )
        witnesses = {n.name for n in self.nodes if n.witness}
        for g, group in enumerate(self.group_entries):
            if not group.vips:
                found.append(
                    Issue(
                        ("groups", g, "vips"),
                        f"group {group.name} has no VIPs: its leader only runs notify hooks. "
                        "Add vips entries",
                    )
                )
            found += [
                Issue(
                    ("groups", g, "priority", name),
                    f"{name} is a witness and never holds VIPs: its priority has no effect. "
                    "Remove it",
                )
                for name in group.priority
                if name in witnesses
            ]
        return tuple(found)

    def node(self, name: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.name == name), None)

    def port_of(self, node: NodeConfig) -> int:
        return node.port if node.port is not None else self.cluster.port

    def cluster_spec(self) -> ClusterSpec:
        """The core's spec with the cluster-wide priorities and preemption (no group's)."""
        return ClusterSpec(
            nodes=tuple(NodeSpec(n.name, n.priority, n.witness) for n in self.nodes),
            timings=self.cluster.timings,
            preempt=self.cluster.preempt,
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("groups", None)  # computed from the fields, which may have changed
        return copied

    @cached_property
    def groups(self) -> tuple[Group, ...]:
        """Every group with its defaults resolved; top-level vips are one group named default."""
        from hafailover.config.groups import normalize_groups

        return normalize_groups(self)

    def group(self, name: str) -> Group:
        """The group called `name`; KeyError if there is none."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def group_spec(self, name: str) -> ClusterSpec:
        """The core's spec for group `name`: its priorities, preempt and preempt_delay."""
        from hafailover.config.groups import group_spec

        return group_spec(self, self.group(name))

    @property
    def all_vips(self) -> tuple[VipConfig, ...]:
        """Every VIP of every group (the top-level vips when no groups are written)."""
        return tuple(vip for group in self.groups for vip in group.vips)

    def fingerprint(self) -> Fingerprint:
        """Per-section digests of the cluster-wide settings every node must share."""
        from hafailover.config.groups import fingerprint

        return fingerprint(self)


def _no_such(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if len(name) < 100 else []
    hint = f"Did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(known[:10]) or "none"
    if len(known) > 10:
        listed += f", ... ({len(known)} in all)"
    return f"no {what} is named {excerpt(name)}. {hint}Known {what}s: {listed}"


# Each section's model by its key path with list indices dropped; the loader uses it to list
# the known keys at an unknown one, and the docs test to check every key is documented.
SECTION_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config,
    ("cluster",): ClusterConfig,
    ("nodes",): NodeConfig,
    ("vips",): VipConfig,
    ("announce",): AnnounceConfig,
    ("checks",): CheckConfig,
    ("notify",): NotifyConfig,
    ("metrics",): MetricsConfig,
    ("groups",): GroupConfig,
    ("groups", "vips"): VipConfig,
    ("groups", "notify"): NotifyConfig,
}


def section_model(path: KeyPath) -> type[BaseModel] | None:
    return SECTION_MODELS.get(tuple(p for p in path if isinstance(p, str)))
