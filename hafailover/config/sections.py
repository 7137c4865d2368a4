"""Each section of the configuration file as a typed, immutable model, with its own rules.

The rules that relate one section to another (unique names across entries, a group's VIPs and
priorities against the nodes) and the whole file's model, `Config`, are in `schema`; the scalar
types and their messages are in `fields`. `groups` builds on these models without needing
`Config` itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator

from hafailover.config.durations import format_duration
from hafailover.config.fields import (
    Bool,
    ClockDrift,
    Count,
    Duration,
    FilePath,
    Hook,
    HttpUrl,
    InterfaceList,
    InterfaceName,
    IPAddress,
    Issue,
    Lifetime,
    ListenAddress,
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
from hafailover.core.spec import TimingError, Timings

__all__ = [
    "AnnounceConfig",
    "CheckConfig",
    "CheckKind",
    "ClusterConfig",
    "GroupConfig",
    "MetricsConfig",
    "NodeConfig",
    "NotifyConfig",
    "Section",
    "VipConfig",
    "unique_issues",
]


class Section(BaseModel):
    """Every section: unknown keys are errors, and a loaded configuration never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ClusterConfig(Section):
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


class NodeConfig(Section):
    """One entry of `nodes`: every node votes; a witness never holds the VIPs."""

    name: Name
    address: NodeAddress
    priority: Priority = 100
    witness: Bool = False
    # None: the node listens on cluster.port. Set it to run several nodes on one address (a lab).
    port: OptionalPort = None


class VipConfig(Section):
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


class AnnounceConfig(Section):
    """Gratuitous ARP / unsolicited NA after taking the VIPs; refresh 0 means no repeats."""

    count: Count = 3
    interval: PositiveDuration = 0.1
    refresh: Duration = 0.0


class CheckKind(StrEnum):
    SCRIPT = "script"
    HTTP = "http"
    TCP = "tcp"


class CheckConfig(Section):
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


class NotifyConfig(Section):
    """Hooks as argv tuples (None: not configured) and how long one may run."""

    leader: Hook = None
    follower: Hook = None
    unhealthy: Hook = None
    maintenance: Hook = None
    stop: Hook = None
    timeout: PositiveDuration = 10.0


class MetricsConfig(Section):
    """The optional `metrics` section: where the Prometheus endpoint listens (absent: off)."""

    listen: ListenAddress


class GroupConfig(Section):
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
        issues = unique_issues(enumerate(v.ip for v in vips), "address", lambda v: f"VIP {v}")
        if issues:
            raise SchemaError(issues)
        return vips


def unique_issues(
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
