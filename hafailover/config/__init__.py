"""Configuration: the YAML file every node shares, as typed immutable objects.

Only `durations` and `resolve` are cheap to import; the names below that need pydantic and YAML
(`Config`, `load_config`, ...) are imported on first use so `import hafailover.config` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hafailover.config.durations import DurationError, format_duration, parse_duration

if TYPE_CHECKING:
    from hafailover.config.groups import Fingerprint, Group
    from hafailover.config.loader import (
        DEFAULT_CONFIG_PATH,
        ConfigError,
        ConfigProblem,
        LoadedConfig,
        load_config,
        parse_config,
    )
    from hafailover.config.resolve import (
        NodeResolutionError,
        missing_interfaces,
        resolve_self,
        vip_subnet_issues,
        vip_subnet_problems,
    )
    from hafailover.config.schema import (
        AnnounceConfig,
        CheckConfig,
        CheckKind,
        ClusterConfig,
        Config,
        GroupConfig,
        HostPort,
        MetricsConfig,
        NodeConfig,
        NotifyConfig,
        VipConfig,
    )

_LAZY = {
    "Fingerprint": "groups",
    "Group": "groups",
    "DEFAULT_CONFIG_PATH": "loader",
    "ConfigError": "loader",
    "ConfigProblem": "loader",
    "LoadedConfig": "loader",
    "load_config": "loader",
    "parse_config": "loader",
    "NodeResolutionError": "resolve",
    "resolve_self": "resolve",
    "missing_interfaces": "resolve",
    "vip_subnet_issues": "resolve",
    "vip_subnet_problems": "resolve",
    "AnnounceConfig": "schema",
    "CheckConfig": "schema",
    "CheckKind": "schema",
    "ClusterConfig": "schema",
    "Config": "schema",
    "GroupConfig": "schema",
    "HostPort": "schema",
    "MetricsConfig": "schema",
    "NodeConfig": "schema",
    "NotifyConfig": "schema",
    "VipConfig": "schema",
}

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AnnounceConfig",
    "CheckConfig",
    "CheckKind",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DurationError",
    "Fingerprint",
    "Group",
    "GroupConfig",
    "HostPort",
    "LoadedConfig",
    "MetricsConfig",
    "NodeConfig",
    "NodeResolutionError",
    "NotifyConfig",
    "VipConfig",
    "format_duration",
    "load_config",
    "missing_interfaces",
    "parse_config",
    "parse_duration",
    "resolve_self",
    "vip_subnet_issues",
    "vip_subnet_problems",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
