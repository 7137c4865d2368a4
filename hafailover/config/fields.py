"""Scalar field types for the configuration schema: each a pydantic Annotated type whose validator
accepts only what YAML should give for it and explains, in operator terms, how to fix anything else.

No pydantic coercion is used: YAML already yields typed values, so a quoted `"5405"` for a port or
`yes` for a name is a mistake to report, not a value to convert. `SchemaError` lets one validator
report several problems, each at a key path relative to the model that raised it; the loader
turns those paths into file lines.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NamedTuple, TypeVar
from urllib.parse import urlsplit

from pydantic import PlainValidator, ValidationInfo

from hafailover.config.durations import parse_duration
from hafailover.config.excerpt import excerpt, shorten
from hafailover.errors import LocalError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
KeyPath = tuple[str | int, ...]
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Issue:
    """One problem (or warning) at `path`, relative to whatever reports it."""

    path: KeyPath
    message: str


def format_key(path: KeyPath) -> str:
    """('checks', 1, 'timeout') -> 'checks[1].timeout'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = shorten(part)  # a key can be as long as the file: name it, don't echo it
            out += f".{name}" if out else name
    return out


class SchemaError(LocalError, ValueError):
    """Raised inside validators; pydantic keeps the instance so the loader can place each issue."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{format_key(i.path)}: {i.message}" for i in self.issues))

    @classmethod
    def at(cls, key: str | int, message: str) -> SchemaError:
        return cls([Issue((key,), message)])


# --- scalar validators -----------------------------------------------------------------------


def describe(value: object) -> str:
    """How a YAML value reads to an operator, for 'expected X, got Y' messages."""
    if value is None:
        return "nothing (the value is empty)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean; quote it if you meant text)"
    if isinstance(value, int | float):
        return f"the number {value:g}" if isinstance(value, float) else f"the number {value}"
    if isinstance(value, str):
        return f"the text {excerpt(value)}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {describe(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _name(value: object) -> str:
    text = _text(value)
    if not _NAME.fullmatch(text):
        raise ValueError(
            f"{excerpt(text)} is not a valid name. Use letters, digits, '.', '_' and '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ". Remove the quotes" if isinstance(value, str) and value.isdigit() else ""
            raise ValueError(f"expected a whole number, got {describe(value)}{hint}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range: use a number from {low} to {high}")
        return value

    return check


def _duration(value: object) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as 100ms or 2s, got {describe(value)}")
    return parse_duration(value)


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _clock_drift(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number such as 0.01 (1%), got {describe(value)}")
    if not 0 <= value < 0.1:
        raise ValueError(f"{value:g} is out of range: use a fraction from 0 up to (not incl.) 0.1")
    return float(value)


def _loop_lag(value: object) -> float:
    if isinstance(value, str):
        raise ValueError(
            f"expected a fraction of failover_timeout such as 0.5, got {describe(value)}. "
            "max_loop_lag is not a duration: for 300ms with a 600ms failover_timeout write 0.5"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a fraction such as 0.5, got {describe(value)}")
    if not 0 < value <= 1:
        raise ValueError(f"{value:g} is out of range: use a fraction above 0 and at most 1")
    return float(value)


def _path(value: object, info: ValidationInfo) -> Path:
    text = _text(value)
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    path = Path(text)
    # Relative paths are relative to the configuration file, not to the daemon's working
    # directory (which is / under systemd), so a lab can keep everything in one directory.
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and isinstance(base, Path):
        path = base / path
    return path


def _ip_address(value: object) -> IPAddress:
    text = _text(value)
    if "/" in text:
        bare = text.split("/", 1)[0]
        raise ValueError(
            f"a node address takes no prefix length: write {shorten(bare)}, not {shorten(text)}"
        )
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{excerpt(text)} is not an IP address. Write an IPv4 (10.0.0.11) or IPv6 "
            "(fd00::11) address"
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text} cannot be a node address: use the node's own unicast address")
    return address


def _vip_address(value: object) -> IPInterface:
    text = _text(value)
    if "/" not in text:
        raise ValueError(
            f"a VIP needs a prefix length: write {shorten(text)}/24 (or whatever prefix the "
            "subnet on the interface has)"
        )
    try:
        vip = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(
            f"{excerpt(text)} is not an address with prefix length. Write it like 10.0.0.100/24"
        ) from None
    ip = vip.ip
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError(f"{ip} cannot float between hosts: use a unicast address in a LAN subnet")
    net = vip.network
    # /31 and /32 have no network or broadcast address to collide with.
    if net.version == 4 and net.prefixlen <= 30 and ip in (net[0], net[-1]):
        raise ValueError(f"{ip} is the network or broadcast address of {net}: pick a host address")
    return vip


def _ifname(value: object) -> str:
    text = _text(value)
    # Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are rejected by the kernel.
    if len(text) > 15 or text in (".", "..") or any(c in text for c in "/: \t"):
        raise ValueError(f"{excerpt(text)} is not a network interface name (like eth0 or ens3)")
    return text


def _argv(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected {what}, got {describe(value)}")
    if not value:
        raise ValueError(f"the list is empty: expected {what}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"every argument must be non-empty text, got {describe(item)}")
    return tuple(value)


def _hook(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(
                f"{excerpt(value)} is not a single path. For a command with arguments write an "
                "argv list: [/etc/hafailover/on-leader, --verbose]"
            )
        return (value,)
    return _argv(value, "a program path or an argv list")


def _script(value: object, info: ValidationInfo) -> tuple[str, ...]:
    if isinstance(value, str):
        # `shell` is declared before `script`, so its validated value is already in info.data.
        if info.data.get("shell") is not True:
            raise ValueError(
                "script is a single string. Give an argv list such as [/usr/local/bin/check-db, "
                "--deep], or set shell: true to run the string with /bin/sh -c"
            )
        _text(value)
        return (value,)
    return _argv(value, "an argv list such as [/usr/local/bin/check-db, --deep]")


def _http_url(value: object) -> str:
    text = _text(value)
    try:
        url = urlsplit(text)
        port_ok = url.port is None or url.port > 0
    except ValueError:
        port_ok = False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
        raise ValueError(
            f"{excerpt(text)} is not an http(s) URL. Write e.g. http://127.0.0.1:8080/healthz"
        )
    return text


class HostPort(NamedTuple):
    host: str
    port: int


def _host_port(value: object) -> HostPort:
    text = _text(value)
    fix = "Write host:port, e.g. 127.0.0.1:5432 or [::1]:5432"
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{excerpt(text)}: put an IPv6 address in brackets. {fix}")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{excerpt(text)} is not host:port with a port from 1 to 65535. {fix}")
    return HostPort(host, int(port))


def _status_range(value: object) -> tuple[int, int]:
    fix = "Write a status code (200) or an inclusive range (200-399)"
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d{3}(-\d{3})?", value.strip()):
        first, _, last = value.strip().partition("-")
        low, high = int(first), int(last or first)
    else:
        raise ValueError(f"expected an HTTP status or range, got {describe(value)}. {fix}")
    if not 100 <= low <= high <= 599:
        raise ValueError(f"{value} is not a valid status range (100-599, low first). {fix}")
    return (low, high)


def _log_level(value: object) -> str:
    text = _text(value)
    if text not in LOG_LEVELS:
        close = difflib.get_close_matches(text.lower(), LOG_LEVELS, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown log level {excerpt(text)}. {hint}Use one of: {', '.join(LOG_LEVELS)}"
        )
    return text


def _lifetime(value: object) -> float | None:
    # false or 0 turns the kernel-backed lifetime off (None: the address lives forever).
    if value is False:
        return None
    if value is True:
        raise ValueError("expected a duration such as 2s, or false (or 0) to turn it off")
    seconds = _duration(value)
    if seconds == 0:
        return None
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(
            f"{shorten(str(value))} is not a whole number of seconds: the kernel counts address "
            "lifetimes in seconds. Write e.g. 2s, or false to turn it off"
        )
    return seconds


def _listen(value: object) -> HostPort:
    address = _host_port(value)
    if address.host != "localhost":
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise ValueError(
                f"{excerpt(address.host)} is not an IP address to listen on. Write an address "
                "of this host, e.g. 127.0.0.1:9405, 0.0.0.0:9405 or [::]:9405"
            ) from None
    return address


def _each(check: Callable[[object], _T], what: str) -> Callable[[object], tuple[_T, ...]]:
    """A list whose items all pass `check`; a bad item is reported at its own index."""

    def check_all(value: object) -> tuple[_T, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of {what}, got {describe(value)}")
        items, issues = [], []
        for i, item in enumerate(value):
            try:
                items.append(check(item))
            except ValueError as e:
                issues.append(Issue((i,), str(e)))
        if issues:
            raise SchemaError(issues)
        return tuple(items)

    return check_all


def _priority_map(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a mapping of node names to priorities such as {{node1: 150, node2: 100}}, "
            f"got {describe(value)}"
        )
    priorities, issues = {}, []
    for name, priority in value.items():
        try:
            priorities[_name(name)] = _int_in(0, 255)(priority)
        except ValueError as e:
            issues.append(Issue((str(name),), str(e)))
    if issues:
        raise SchemaError(issues)
    return priorities


def _optional(check: Callable[[object], _T]) -> Callable[[object], _T | None]:
    return lambda value: None if value is None else check(value)


def none_is(default: object) -> Callable[[object], object]:
    """An empty optional section (every entry commented out) means its default, not an error."""
    return lambda value: default if value is None else value


Name = Annotated[str, PlainValidator(_name)]
Text = Annotated[str, PlainValidator(_text)]
Bool = Annotated[bool, PlainValidator(_bool)]
Port = Annotated[int, PlainValidator(_int_in(1, 65535))]
Duration = Annotated[float, PlainValidator(_duration)]
PositiveDuration = Annotated[float, PlainValidator(_positive_duration)]
FilePath = Annotated[Path, PlainValidator(_path)]
Hook = Annotated[tuple[str, ...] | None, PlainValidator(_optional(_hook))]

ClockDrift = Annotated[float, PlainValidator(_clock_drift)]
LoopLag = Annotated[float, PlainValidator(_loop_lag)]
Priority = Annotated[int, PlainValidator(_int_in(0, 255))]
Count = Annotated[int, PlainValidator(_int_in(1, 100))]
OptionalPort = Annotated[int | None, PlainValidator(_optional(_int_in(1, 65535)))]
NodeAddress = Annotated[IPAddress, PlainValidator(_ip_address)]
VipAddress = Annotated[IPInterface, PlainValidator(_vip_address)]
InterfaceName = Annotated[str, PlainValidator(_ifname)]
Script = Annotated[tuple[str, ...] | None, PlainValidator(_script)]
HttpUrl = Annotated[str | None, PlainValidator(_optional(_http_url))]
TcpTarget = Annotated[HostPort | None, PlainValidator(_optional(_host_port))]
StatusRange = Annotated[tuple[int, int], PlainValidator(_status_range)]
OptionalText = Annotated[str | None, PlainValidator(_optional(_text))]
LogLevel = Annotated[str, PlainValidator(_log_level)]
OptionalBool = Annotated[bool | None, PlainValidator(_optional(_bool))]
OptionalDuration = Annotated[float | None, PlainValidator(_optional(_duration))]
Lifetime = Annotated[float | None, PlainValidator(_lifetime)]
ListenAddress = Annotated[HostPort, PlainValidator(_listen)]
PriorityMap = Annotated[dict[str, int], PlainValidator(_priority_map)]
NameList = Annotated[tuple[str, ...] | None, PlainValidator(_optional(_each(_name, "names")))]
InterfaceList = Annotated[
    tuple[str, ...], PlainValidator(_each(_ifname, "interface names such as [eth1]"))
]
