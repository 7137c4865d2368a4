"""VIP groups with their defaults resolved, each group's core spec, and the config fingerprint.

`Config.groups` is built here: the `groups:` entries as written, or, for a file with top-level
`vips:` (every file from before groups), one group named `default` that behaves exactly like the
single cluster-wide election did. Code that runs groups reads only `Config.groups`, never the
top-level `vips`, so both spellings take the same path.

The fingerprint names what every node must agree on (membership, groups, their VIPs and
priorities, timings, port, cluster name) and leaves out what may differ per host (log level,
hook paths, key file path, checks). Each section has its own digest so a difference can be named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hafailover.config.sections import (
    CheckConfig,
    ClusterConfig,
    GroupConfig,
    NodeConfig,
    NotifyConfig,
    VipConfig,
)
from hafailover.core.spec import ClusterSpec, NodeSpec

__all__ = [
    "DEFAULT_GROUP",
    "FINGERPRINT_SECTIONS",
    "Fingerprint",
    "Group",
    "GroupSource",
    "fingerprint",
    "group_spec",
    "normalize_groups",
]

DEFAULT_GROUP = "default"
FINGERPRINT_SECTIONS = ("cluster", "nodes", "groups", "timings")
# Hex digits kept of each SHA-256: drift detection between authenticated peers, not a defence
# against forgery, so 64 bits are plenty and keep the heartbeat small.
_DIGEST_HEX = 16


@dataclass(frozen=True)
class Group:
    """One group as the runtime uses it: every default filled in.

    `priorities` has an entry for every node (witnesses included, which never hold VIPs);
    `checks` names the checks this group's eligibility depends on; `notify` is the top-level
    hooks with the group's own ones laid over them.
    """

    name: str
    vips: tuple[VipConfig, ...]
    priorities: Mapping[str, int] = field(hash=False)
    checks: tuple[str, ...]
    preempt: bool
    preempt_delay: float
    track_interfaces: tuple[str, ...]
    notify: NotifyConfig

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Every interface this group needs up: its VIPs' interfaces, then track_interfaces."""
        names = [v.interface for v in self.vips] + list(self.track_interfaces)
        return tuple(dict.fromkeys(names))


class GroupSource(Protocol):
    """What groups are resolved from: the sections of a configuration (`schema.Config` is one)."""

    @property
    def cluster(self) -> ClusterConfig: ...
    @property
    def nodes(self) -> tuple[NodeConfig, ...]: ...
    @property
    def vips(self) -> tuple[VipConfig, ...]: ...
    @property
    def group_entries(self) -> tuple[GroupConfig, ...]: ...
    @property
    def checks(self) -> tuple[CheckConfig, ...]: ...
    @property
    def notify(self) -> NotifyConfig: ...
    def port_of(self, node: NodeConfig) -> int: ...


def normalize_groups(config: GroupSource) -> tuple[Group, ...]:
    if not config.group_entries:
        return (_default_group(config),)
    return tuple(_resolve(config, entry) for entry in config.group_entries)


def _default_group(config: GroupSource) -> Group:
    return Group(
        name=DEFAULT_GROUP,
        vips=config.vips,
        priorities={n.name: n.priority for n in config.nodes},
        checks=tuple(c.name for c in config.checks if c.critical),
        preempt=config.cluster.preempt,
        preempt_delay=config.cluster.preempt_delay,
        track_interfaces=(),
        notify=config.notify,
    )


def _resolve(config: GroupSource, entry: GroupConfig) -> Group:
    notify = config.notify
    if entry.notify is not None:
        # Only the keys the group writes replace the top-level ones.
        own = {k: getattr(entry.notify, k) for k in entry.notify.model_fields_set}
        notify = notify.model_copy(update=own)
    checks = entry.checks
    if checks is None:
        checks = tuple(c.name for c in config.checks if c.critical)
    return Group(
        name=entry.name,
        vips=entry.vips,
        priorities={n.name: entry.priority.get(n.name, n.priority) for n in config.nodes},
        checks=checks,
        preempt=config.cluster.preempt if entry.preempt is None else entry.preempt,
        preempt_delay=(
            config.cluster.preempt_delay if entry.preempt_delay is None else entry.preempt_delay
        ),
        track_interfaces=entry.track_interfaces,
        notify=notify,
    )


def group_spec(config: GroupSource, group: Group) -> ClusterSpec:
    """The core's ClusterSpec for one group: same members and timings, the group's ranking."""
    return ClusterSpec(
        nodes=tuple(NodeSpec(n.name, group.priorities[n.name], n.witness) for n in config.nodes),
        timings=dataclasses.replace(config.cluster.timings, preempt_delay=group.preempt_delay),
        preempt=group.preempt,
    )


# --- fingerprint ---------------------------------------------------------------------------


class Fingerprint(Mapping[str, str]):
    """Section name -> hex digest, in FINGERPRINT_SECTIONS order; `digest` covers them all."""

    def __init__(self, sections: Mapping[str, str]) -> None:
        self._sections = dict(sections)

    def __getitem__(self, key: str) -> str:
        return self._sections[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def __repr__(self) -> str:
        return f"Fingerprint({self._sections!r})"

    def as_bytes(self) -> dict[str, bytes]:
        """Section -> raw digest bytes, as the wire carries them (8 bytes each)."""
        return {k: bytes.fromhex(v) for k, v in self._sections.items()}

    @classmethod
    def from_bytes(cls, sections: Mapping[str, bytes]) -> Fingerprint:
        """A peer's fingerprint as received, to compare with `differing`."""
        return cls({k: v.hex() for k, v in sections.items()})

    @property
    def digest(self) -> str:
        """One digest of every section: equal exactly when every section is."""
        return _digest("all", sorted(self._sections.items()))

    def differing(self, other: Mapping[str, str]) -> list[str]:
        """Sections whose digests differ from `other`'s (or that only one side has)."""
        names = list(self._sections) + [k for k in other if k not in self._sections]
        return [k for k in names if self._sections.get(k) != other.get(k)]


def fingerprint(config: GroupSource, groups: Sequence[Group]) -> Fingerprint:
    """The digests of `config` whose groups, resolved by `normalize_groups`, are `groups`."""
    cluster = config.cluster
    timings = dataclasses.asdict(cluster.timings)
    # Preemption is per group: its delay is part of each group's digest, not of the timings.
    timings.pop("preempt_delay", None)
    nodes = sorted(
        (n.name, str(n.address), config.port_of(n), n.priority, n.witness) for n in config.nodes
    )
    rows = sorted(
        (
            g.name,
            sorted((str(v.address), v.interface) for v in g.vips),
            sorted(g.priorities.items()),
            g.preempt,
            g.preempt_delay,
        )
        for g in groups
    )
    content: dict[str, object] = {
        "cluster": {"name": cluster.name, "port": cluster.port},
        "nodes": nodes,
        "groups": rows,
        "timings": timings,
    }
    return Fingerprint({k: _digest(k, content[k]) for k in FINGERPRINT_SECTIONS})


def _digest(section: str, content: object) -> str:
    text = json.dumps([section, content], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_HEX]
