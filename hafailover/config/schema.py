"""The whole configuration file as one typed, immutable object, and the rules that span sections.

Each section's model and its own rules are in `sections`, scalar types and their messages in
`fields`; here are `Config`, the rules that relate sections to each other (unique names, a
group's VIPs and priorities against the nodes), the warnings, and the conversion to the core's
`ClusterSpec`. The resolved groups and the fingerprint are computed by `groups`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hafailover.config.excerpt import excerpt
from hafailover.config.fields import (
    FilePath,
    HostPort,
    IPAddress,
    Issue,
    KeyPath,
    LogLevel,
    Name,
    SchemaError,
    none_is,
)
from hafailover.config.groups import Fingerprint, Group, fingerprint, group_spec, normalize_groups
from hafailover.config.sections import (
    AnnounceConfig,
    CheckConfig,
    CheckKind,
    ClusterConfig,
    GroupConfig,
    MetricsConfig,
    NodeConfig,
    NotifyConfig,
    Section,
    VipConfig,
    unique_issues,
)
from hafailover.core.spec import ClusterSpec, NodeSpec

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


class Config(Section):
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
        issues = unique_issues(enumerate(n.name for n in nodes), "name", lambda v: f"node name {v}")
        issues += unique_issues(
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
        issues = unique_issues(enumerate(v.ip for v in vips), "address", lambda v: f"VIP {v}")
        if issues:
            raise SchemaError(issues)
        return vips

    @field_validator("checks")
    @classmethod
    def _checks_unique(cls, checks: tuple[CheckConfig, ...]) -> tuple[CheckConfig, ...]:
        issues = unique_issues(
            enumerate(c.name for c in checks), "name", lambda v: f"check name {v}"
        )
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
        issues = unique_issues(
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
        return normalize_groups(self)

    def group(self, name: str) -> Group:
        """The group called `name`; KeyError if there is none."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def group_spec(self, name: str) -> ClusterSpec:
        """The core's spec for group `name`: its priorities, preempt and preempt_delay."""
        return group_spec(self, self.group(name))

    @property
    def all_vips(self) -> tuple[VipConfig, ...]:
        """Every VIP of every group (the top-level vips when no groups are written)."""
        return tuple(vip for group in self.groups for vip in group.vips)

    def fingerprint(self) -> Fingerprint:
        """Per-section digests of the cluster-wide settings every node must share."""
        return fingerprint(self, self.groups)


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
