"""The configuration as typed, immutable objects, and the rules that span several keys.

Scalar types and their messages live in `fields`; here are the sections, the rules that relate
keys to each other (one probe per check, unique names, timings the core accepts), the warnings,
and the conversion to the core's `ClusterSpec`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hafailover.config.durations import format_duration
from hafailover.config.fields import (
    Bool,
    ClockDrift,
    Count,
    Duration,
    FilePath,
    Hook,
    HostPort,
    HttpUrl,
    InterfaceName,
    IPAddress,
    Issue,
    KeyPath,
    LogLevel,
    LoopLag,
    Name,
    NodeAddress,
    OptionalPort,
    OptionalText,
    Port,
    PositiveDuration,
    Priority,
    SchemaError,
    Script,
    StatusRange,
    TcpTarget,
    VipAddress,
    none_is,
)
from hafailover.core.spec import ClusterSpec, NodeSpec, TimingError, Timings

__all__ = [
    "SECTION_MODELS",
    "AnnounceConfig",
    "CheckConfig",
    "CheckKind",
    "ClusterConfig",
    "Config",
    "HostPort",
    "NodeConfig",
    "NotifyConfig",
    "VipConfig",
    "section_model",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections --------------------------------------------------------------------------------

# Which key names the first one in a TimingError message is, so the error lands on that key.
_TIMING_KEYS = ("heartbeat_interval", "failover_timeout", "clock_drift", "lease_guard")
_TIMING_FIX = {
    "heartbeat_interval": "set heartbeat_interval to e.g. 100ms",
    "lease_guard": "lower lease_guard or raise heartbeat_interval",
    "clock_drift": "use e.g. 0.01",
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
    clock_drift: ClockDrift = 0.01
    max_loop_lag: LoopLag = 0.5
    watchdog: Bool = True

    @property
    def timings(self) -> Timings:
        return Timings(
            heartbeat_interval=self.heartbeat_interval,
            failover_timeout=self.failover_timeout,
            clock_drift=self.clock_drift,
            lease_guard=self.lease_guard,
            preempt_delay=self.preempt_delay,
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
    announce: Annotated[AnnounceConfig, BeforeValidator(none_is({}))] = AnnounceConfig()
    checks: Annotated[tuple[CheckConfig, ...], BeforeValidator(none_is(()))] = ()
    notify: Annotated[NotifyConfig, BeforeValidator(none_is({}))] = NotifyConfig()
    control_socket: FilePath = Path("/run/hafailover/control.sock")
    control_group: Name = "hafailover"
    state_dir: FilePath = Path("/var/lib/hafailover")
    log_level: LogLevel = "info"

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
                ("vips", i, "address"),
                f"{vip.ip} is node {owners[vip.ip]}'s own address. A VIP must be an extra "
                "address that no node has permanently",
            )
            for i, vip in enumerate(self.vips)
            if vip.ip in owners
        ]
        if issues:
            raise SchemaError(issues)
        return self

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
        if not self.vips:
            found.append(
                Issue(("vips",), "no VIPs: the leader only runs notify hooks. Add vips entries")
            )
        return tuple(found)

    def node(self, name: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.name == name), None)

    def port_of(self, node: NodeConfig) -> int:
        return node.port if node.port is not None else self.cluster.port

    def cluster_spec(self) -> ClusterSpec:
        return ClusterSpec(
            nodes=tuple(NodeSpec(n.name, n.priority, n.witness) for n in self.nodes),
            timings=self.cluster.timings,
            preempt=self.cluster.preempt,
        )


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
}


def section_model(path: KeyPath) -> type[BaseModel] | None:
    return SECTION_MODELS.get(tuple(p for p in path if isinstance(p, str)))
