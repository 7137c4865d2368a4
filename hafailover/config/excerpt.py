"""Short excerpts of values for error messages: a bad value is named, never echoed whole.

A configuration value can be as long as the file (a 900 KB `cluster.name`); an error message that
repeats it would flood the terminal and the journal. Kept free of pydantic and YAML like
`durations`, which uses it too.
"""

from __future__ import annotations

__all__ = ["EXCERPT_CHARS", "excerpt", "shorten"]

EXCERPT_CHARS = 60


def shorten(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` itself when short, else its first `limit` characters and `…(N chars)`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`repr(text)` when short, else the repr of its first `limit` characters and `…(N chars)`."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} chars)"
