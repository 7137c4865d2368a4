"""`hafailover import-keepalived`: keepalived configurations in, one hafailover YAML out.

Pure functions: text (or files) in, `ImportResult(yaml, notes)` out. The YAML is checked with
the real configuration loader before it is returned, so what comes out always loads; `notes`
lists everything not carried over (or changed on the way) with FILE:LINE.

How keepalived's keys map, and the choices made where there is no equivalent, are documented in
docs/migration.md.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from hafailover.config.keepalived.cluster import build_layout
from hafailover.config.keepalived.emit import render
from hafailover.config.keepalived.host import IPAddress, read_host
from hafailover.config.keepalived.parse import (
    KeepalivedReadError,
    KeepalivedSyntaxError,
    Note,
    ParseResult,
    Where,
    parse_file,
    parse_text,
)
from hafailover.errors import LocalError

__all__ = [
    "ImportResult",
    "KeepalivedImportError",
    "KeepalivedReadError",
    "KeepalivedSyntaxError",
    "Note",
    "Where",
    "import_files",
    "import_texts",
]


class KeepalivedImportError(LocalError):
    """The files parse, but the result cannot be a valid hafailover configuration."""


@dataclass(frozen=True)
class ImportResult:
    yaml: str
    notes: tuple[Note, ...]


def import_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    node_names: Mapping[str, str] | None = None,
    config_ids: Sequence[str | None] = (),
    cluster_name: str = "keepalived",
) -> ImportResult:
    """Import one keepalived.conf per host (with their includes) as one cluster."""
    ids = _ids(config_ids, len(paths))
    parsed = [parse_file(p, ids[i]) for i, p in enumerate(paths)]
    stems = [Path(p).stem for p in paths]
    return _convert(parsed, stems, ids, node_names or {}, cluster_name)


def import_texts(
    texts: Sequence[tuple[str, str]],
    *,
    node_names: Mapping[str, str] | None = None,
    config_ids: Sequence[str | None] = (),
    cluster_name: str = "keepalived",
) -> ImportResult:
    """Like `import_files` for (name, text) pairs; `include` is relative to the working dir."""
    ids = _ids(config_ids, len(texts))
    parsed = [parse_text(text, name, ids[i]) for i, (name, text) in enumerate(texts)]
    stems = [Path(name).stem for name, _ in texts]
    return _convert(parsed, stems, ids, node_names or {}, cluster_name)


def _ids(config_ids: Sequence[str | None], count: int) -> list[str | None]:
    if not config_ids:
        return [None] * count
    if len(config_ids) == 1:
        return list(config_ids) * count
    if len(config_ids) != count:
        raise ValueError(
            f"{len(config_ids)} config ids for {count} files: give one for all, or one per file"
        )
    return list(config_ids)


def _convert(
    parsed: Sequence[ParseResult],
    stems: Sequence[str],
    ids: Sequence[str | None],
    node_names: Mapping[str, str],
    cluster_name: str,
) -> ImportResult:
    if not parsed:
        raise ValueError("no keepalived configuration given")
    names: dict[IPAddress, str] = {}
    for address, name in node_names.items():
        names[ipaddress.ip_address(address)] = name
    hosts = []
    notes: list[Note] = []
    for result in parsed:
        notes += result.notes
        hosts.append(read_host(result.statements, result.files[0] if result.files else "?"))
    host_names = [ident or _host_name(stem) for ident, stem in zip(ids, stems, strict=True)]
    if len(set(host_names)) != len(host_names):
        host_names = [None] * len(host_names)
    layout = build_layout(hosts, host_names, names)
    _check_vips(layout.groups)
    text = render(layout, cluster_name)
    notes += layout.notes
    notes += _validate(text)
    unique = list(dict.fromkeys(notes))
    return ImportResult(text, tuple(sorted(unique, key=_order)))


def _host_name(stem: str) -> str | None:
    # /etc/keepalived/keepalived.conf names no host; lb1.conf does.
    return None if stem.lower() in ("keepalived", "") else stem


def _order(note: Note) -> tuple[int, Where]:
    return (0, note.where) if note.where else (1, Where("", 0))


def _check_vips(groups: Sequence[object]) -> None:
    from hafailover.config.keepalived.cluster import Group
    from hafailover.config.schema import VipConfig

    for group in groups:
        assert isinstance(group, Group)
        for vip in group.vips:
            try:
                VipConfig.model_validate({"address": str(vip.address), "interface": vip.interface})
            except ValidationError as exc:
                reason = "; ".join(
                    str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()
                )
                raise KeepalivedSyntaxError(
                    vip.where, f"VIP {vip.address} on {vip.interface} cannot be imported: {reason}"
                ) from None


def _validate(text: str) -> list[Note]:
    """The loader's warnings on the result, as notes; its errors are the importer's bug."""
    from hafailover.config.loader import ConfigError, parse_config

    try:
        loaded = parse_config(text, "<imported>")
        return [
            Note(None, f"check-config will warn: {w.key}: {w.message}") for w in loaded.warnings
        ]
    except ConfigError as exc:
        raise KeepalivedImportError(
            "the result does not pass hafailover's configuration loader (a problem in the "
            "input that the importer does not catch, or a bug in the importer):\n"
            + "\n".join(str(p) for p in exc.problems)
        ) from None
