"""Text from outside (a control client, a peer) made safe to put in a log line.

Kept apart from `hafailover.runtime.logs` (which re-exports it) because the control server and
the wire layer sit below the runtime and must not import it; this module imports nothing.
"""

from __future__ import annotations

import re

# What must never reach a log line raw when the text comes from a control request or a peer:
# C0 controls (newline, CR, ESC, NUL, ...), DEL, C1 controls, the Unicode line and paragraph
# separators and the bidirectional overrides (which reorder what a terminal shows). The
# backslash is escaped too, so an escaped line cannot be mistaken for an escape sequence.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\\\\]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# Untrusted values are cut to this many characters (node names are at most 255).
PRINTABLE_LIMIT = 256


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, limit: int = PRINTABLE_LIMIT) -> str:
    """``value`` as text that stays on one log line and cannot forge another.

    For everything logged that a control client or a peer chose (a switchover target, a node
    name from a packet, a client's bad request): control characters become ``\\n``, ``\\x1b``,
    ``\\u2028`` ..., and text longer than ``limit`` characters is cut, with a marker.
    """
    text = value if isinstance(value, str) else str(value)
    extra = len(text) - limit
    if extra > 0:
        text = text[:limit]
    text = _UNSAFE.sub(_escape, text)
    return f"{text}...(+{extra} characters)" if extra > 0 else text
