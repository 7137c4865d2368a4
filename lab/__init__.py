"""Network-namespace lab: a throwaway cluster for integration tests, the demo and benchmarks.

Generic on purpose (it starts whatever command it is given) and independent of hafailover's
internals, so the same lab measures keepalived too.

    from lab import echo, monitor, probe

    with Lab(3) as lab:
        echo.start(lab)
        monitor.start(lab, "10.213.0.100")
        prober = probe.start(lab, "10.213.0.100", duration=10.0)
        ...
        monitor.timeline(lab).dual_holder_ms()

The services (echo, probe, monitor) depend on netns (Lab, LabProcess), never the other way:
each starts itself in a lab. They are also run as `python -m lab.<name>`; importing them
here eagerly would make runpy warn (and load them twice), so their names are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lab.netns import (
    CLIENT,
    CLIENT_ADDRESS,
    Lab,
    LabCommandError,
    LabError,
    LabProcess,
    cleanup_stale,
)

if TYPE_CHECKING:
    from lab.monitor import (
        HolderTimeline,
        NodeTimeline,
        dual_holder_ms,
        holder_at,
        load_timeline,
    )
    from lab.probe import (
        Gap,
        ProbeRecord,
        ProbeRun,
        Span,
        longest_outage_ms,
        outages,
        responders_over_time,
    )

_LAZY = {
    **{n: "lab.monitor" for n in (
        "HolderTimeline", "NodeTimeline", "dual_holder_ms", "holder_at", "load_timeline")},
    **{n: "lab.probe" for n in (
        "Gap", "ProbeRecord", "ProbeRun", "Span", "longest_outage_ms", "outages",
        "responders_over_time")},
}

__all__ = [
    "CLIENT", "CLIENT_ADDRESS", "Gap", "HolderTimeline", "Lab", "LabCommandError", "LabError",
    "LabProcess", "NodeTimeline", "ProbeRecord", "ProbeRun", "Span", "cleanup_stale",
    "dual_holder_ms", "holder_at", "load_timeline", "longest_outage_ms", "outages",
    "responders_over_time",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
