"""Durations as operators write them: `100ms`, `2s`, `1.5s`, `5m`, `1h`, or plain seconds.

Kept free of pydantic and YAML so that the CLI and the runtime can parse a `--timeout 2s` the same
way the configuration does.
"""

from __future__ import annotations

import math
import re

from hafailover.config.excerpt import excerpt, shorten
from hafailover.errors import LocalError

__all__ = ["DurationError", "format_duration", "parse_duration"]

# Lower-case units only: `1M` could be read as months or megaseconds, and one spelling per unit
# keeps configuration files greppable.
_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h)?")
_HOW = "write a number with a unit (100ms, 1.5s, 2m, 1h) or a plain number of seconds (0.1)"


class DurationError(LocalError, ValueError):
    """A value that is not a duration; the message says what was wrong and what to write."""


def parse_duration(value: str | int | float) -> float:
    """Return `value` in seconds. Raises DurationError for anything else, including negatives."""
    # bool is a subclass of int: `interval: yes` would otherwise silently mean one second.
    if isinstance(value, bool):
        raise DurationError(f"expected a duration, got {str(value).lower()}: {_HOW}")
    if isinstance(value, int | float):
        seconds = float(value)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            hint = ""
            if value.strip().startswith("-"):
                hint = " (durations cannot be negative)"
            raise DurationError(f"{excerpt(value)} is not a duration{hint}: {_HOW}")
        unit = match.group("unit") or "s"
        seconds = float(match.group("number")) * _UNITS[unit]
        shown = shorten(value.strip())
    else:
        raise DurationError(f"expected a duration, got a {type(value).__name__}: {_HOW}")
    if not math.isfinite(seconds):
        raise DurationError(f"{shown} is not a finite duration: {_HOW}")
    if seconds < 0:
        raise DurationError(f"{shown} is negative: a duration must be 0 or more")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling that `parse_duration` reads back: 0.1 -> '100ms', 30 -> '30s'."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.6g}ms"
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:.6g}s"
