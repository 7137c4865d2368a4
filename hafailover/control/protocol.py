"""The control-socket wire format: versioned JSON, one newline-terminated request per connection.

Pure functions only (no sockets, no asyncio) so that every malformed input can be unit-tested
without a server. The server and the client both build on this module.

Request:  {"v": 1, "op": "status" | "events" | "switchover" | "maintenance" | "ping", ...}
Response: {"v": 1, "ok": true, "result": {...}}
          {"v": 1, "ok": false, "error": {"code": "...", "message": "..."}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, NoReturn

from hafailover.errors import RemoteError

PROTOCOL_VERSION: Final = 1
# A legitimate request is well under 200 bytes; the cap keeps a hostile or buggy client from
# making the daemon buffer unbounded input.
MAX_REQUEST_BYTES: Final = 64 * 1024
# A client that connects and then dribbles (or never sends the newline) holds one of the few
# connection slots; it gets this long to deliver a complete request.
READ_TIMEOUT_S: Final = 2.0
# Largest `limit` an events request may ask for; the daemon keeps a bounded history anyway.
MAX_EVENTS_LIMIT: Final = 10_000
# Node names are short identifiers; the cap only rejects garbage early.
MAX_NODE_NAME: Final = 255

BAD_REQUEST: Final = "bad-request"
UNSUPPORTED_VERSION: Final = "unsupported-version"
TOO_LARGE: Final = "too-large"
FORBIDDEN: Final = "forbidden"
UNKNOWN_OP: Final = "unknown-op"
REFUSED: Final = "refused"
INTERNAL: Final = "internal"
# Sent by the server when all connection slots are taken; the client may retry.
BUSY: Final = "busy"
# Only produced client-side, when the daemon's answer cannot be decoded.
BAD_RESPONSE: Final = "bad-response"

ERROR_CODES: Final = frozenset(
    {BAD_REQUEST, UNSUPPORTED_VERSION, TOO_LARGE, FORBIDDEN, UNKNOWN_OP, REFUSED, INTERNAL, BUSY}
)


class ProtocolError(RemoteError):
    """A request that cannot be served; `code` is one of ERROR_CODES and goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class EventsRequest:
    limit: int = 50
    # Only events with a sequence number strictly greater than this (for `events --follow`).
    after: int | None = None
    # Only the events of this VIP group (node-wide events, without a group, are kept too).
    group: str | None = None


@dataclass(frozen=True)
class SwitchoverRequest:
    # None: the leader picks the best other eligible node.
    to: str | None = None
    # The VIP group to move; None is fine while the daemon has a single group.
    group: str | None = None


@dataclass(frozen=True)
class MaintenanceRequest:
    on: bool
    # None: the node whose daemon receives the request.
    node: str | None = None


@dataclass(frozen=True)
class PingRequest:
    pass


Request = StatusRequest | EventsRequest | SwitchoverRequest | MaintenanceRequest | PingRequest

# Requests that change cluster state: only root and members of the socket's group may send them.
MUTATING_REQUESTS: Final = (SwitchoverRequest, MaintenanceRequest)

# Allowed fields per op besides "v" and "op". Unknown fields are rejected rather than ignored: a
# typo such as {"op": "switchover", "target": "node2"} must not silently mean "any node".
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "status": frozenset(),
    "events": frozenset({"limit", "after", "group"}),
    "switchover": frozenset({"to", "group"}),
    "maintenance": frozenset({"on", "node"}),
    "ping": frozenset(),
}


def is_mutating(request: Request) -> bool:
    return isinstance(request, MUTATING_REQUESTS)


def op_name(request: Request) -> str:
    return _OP_NAMES[type(request)]


_OP_NAMES: Final[dict[type, str]] = {
    StatusRequest: "status",
    EventsRequest: "events",
    SwitchoverRequest: "switchover",
    MaintenanceRequest: "maintenance",
    PingRequest: "ping",
}


def _bad(message: str) -> NoReturn:
    raise ProtocolError(BAD_REQUEST, message)


def _node_name(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        _bad(f"'{key}' must be a non-empty string or null")
    if len(value) > MAX_NODE_NAME:
        _bad(f"'{key}' is longer than {MAX_NODE_NAME} characters")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Refused, as the YAML loader does: last-wins would silently drop what the client meant.
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            _bad(f"duplicate key {key[:40]!r} in the request")
        obj[key] = value
    return obj


def _decode_json(line: bytes) -> object:
    """JSON from UTF-8 only: `json.loads(bytes)` would also take UTF-16 and UTF-32."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        _bad(f"request is not UTF-8 (byte {e.start}); the protocol is UTF-8 JSON")
    if "\0" in text:  # valid UTF-8, but what UTF-16 or UTF-32 looks like
        _bad("request contains NUL characters (UTF-16 or UTF-32?); the protocol is UTF-8 JSON")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        # The C decoder recurses per nesting level; no request nests more than two levels.
        _bad("request is nested too deeply")
    except ValueError as e:  # JSONDecodeError; its message never quotes the input
        _bad(f"request is not valid JSON: {e}")


def parse_request(line: bytes) -> Request:
    """Decode one request line (with or without its trailing newline) into a typed request.

    Raises ProtocolError with the code the client should see.
    """
    if len(line.rstrip(b"\r\n")) > MAX_REQUEST_BYTES:
        raise ProtocolError(TOO_LARGE, f"request exceeds {MAX_REQUEST_BYTES} bytes")
    obj = _decode_json(line)
    if not isinstance(obj, dict):
        _bad("request must be a JSON object")
    if "v" not in obj:
        _bad("missing protocol version field 'v'")
    version = obj["v"]
    if not isinstance(version, int) or isinstance(version, bool):
        # bool is a subclass of int in Python; JSON true must not pass as the number 1.
        _bad("'v' must be an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported (this daemon speaks {PROTOCOL_VERSION})",
        )
    op = obj.get("op")
    if not isinstance(op, str):
        _bad("missing or non-string 'op'")
    if op not in _FIELDS:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}; known: {', '.join(sorted(_FIELDS))}")
    extra = sorted(set(obj) - {"v", "op"} - _FIELDS[op])
    if extra:
        _bad(f"unknown field(s) for op {op!r}: {', '.join(extra)}")
    return _build(op, obj)


def _build(op: str, obj: dict[str, object]) -> Request:
    if op == "status":
        return StatusRequest()
    if op == "ping":
        return PingRequest()
    if op == "events":
        limit = obj.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool):
            _bad(f"'limit' must be an integer from 1 to {MAX_EVENTS_LIMIT}")
        if not 1 <= limit <= MAX_EVENTS_LIMIT:
            _bad(f"'limit' must be an integer from 1 to {MAX_EVENTS_LIMIT}")
        after = obj.get("after")
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            _bad("'after' must be a non-negative integer or null")
        if after is not None and after < 0:
            _bad("'after' must be a non-negative integer or null")
        return EventsRequest(limit=limit, after=after, group=_node_name(obj, "group"))
    if op == "switchover":
        return SwitchoverRequest(to=_node_name(obj, "to"), group=_node_name(obj, "group"))
    # maintenance
    if "on" not in obj or not isinstance(obj["on"], bool):
        _bad("'on' must be true or false")
    return MaintenanceRequest(on=obj["on"], node=_node_name(obj, "node"))


def request_to_dict(request: Request) -> dict[str, object]:
    """The wire form of a typed request (used by the client and by tests)."""
    out: dict[str, object] = {"v": PROTOCOL_VERSION, "op": op_name(request)}
    if isinstance(request, EventsRequest):
        out["limit"] = request.limit
        if request.after is not None:
            out["after"] = request.after
        if request.group is not None:
            out["group"] = request.group
    elif isinstance(request, SwitchoverRequest):
        out["to"] = request.to
        if request.group is not None:
            out["group"] = request.group
    elif isinstance(request, MaintenanceRequest):
        out["on"] = request.on
        out["node"] = request.node
    return out


def _line(obj: dict[str, object]) -> bytes:
    # Compact, ASCII-only, one line: the newline is the frame delimiter.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def encode_request(request: Request | dict[str, object]) -> bytes:
    obj = request if isinstance(request, dict) else request_to_dict(request)
    if "v" not in obj:
        obj = {"v": PROTOCOL_VERSION, **obj}
    return _line(obj)


def encode_result(result: dict[str, object]) -> bytes:
    return _line({"v": PROTOCOL_VERSION, "ok": True, "result": result})


def encode_error(code: str, message: str) -> bytes:
    return _line({"v": PROTOCOL_VERSION, "ok": False, "error": {"code": code, "message": message}})


def decode_response(data: bytes) -> dict[str, object]:
    """Client side: the `result` of a successful response, else ProtocolError(code, message).

    An undecodable answer raises ProtocolError(BAD_RESPONSE, ...).
    """
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(BAD_RESPONSE, f"daemon sent invalid JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ProtocolError(BAD_RESPONSE, "daemon response is not a protocol response object")
    if not obj["ok"]:
        # Surface the daemon's own error even under another version: it is usually
        # `unsupported-version`, which explains the mismatch better than we could.
        error = obj.get("error")
        if not isinstance(error, dict):
            raise ProtocolError(BAD_RESPONSE, "daemon error response has no error object")
        _raise_error(error)
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(BAD_RESPONSE, f"daemon answered with protocol version {obj.get('v')!r}")
    result = obj.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(BAD_RESPONSE, "daemon response has no result object")
    return result


def _raise_error(error: dict[str, object]) -> NoReturn:
    code = error.get("code")
    message = error.get("message")
    raise ProtocolError(
        code if isinstance(code, str) else INTERNAL,
        message if isinstance(message, str) else "(no message)",
    )
