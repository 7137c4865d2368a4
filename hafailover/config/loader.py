"""Read the YAML file and report every problem as `FILE:LINE: key.path: message. How to fix`.

The file is composed into YAML nodes first (they carry line numbers), indexed by key path, and
only then constructed into plain data for the schema. Errors from the schema carry key paths,
which the index turns back into lines. All problems found are raised together in one ConfigError.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hafailover.config.fields import KeyPath, SchemaError, describe, format_key
from hafailover.config.schema import Config, section_model

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "ConfigProblem",
    "LoadedConfig",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/hafailover/hafailover.yaml")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_DOCS = "see docs/configuration.md"


@dataclass(frozen=True)
class ConfigProblem:
    """One error or warning. `line` is 1-based; None when the problem is not on a line."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The file cannot be used; `problems` lists everything wrong that could be found at once."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[ConfigProblem, ...]
    file: str


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> LoadedConfig:
    """Read and validate the file at `path`; relative paths in it are relative to its directory."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8") as stream:
            text = stream.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(file, None, "", f"not UTF-8 text ({exc.reason}). Save it as UTF-8")]
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    None,
                    "",
                    f"cannot read the configuration: {reason}. Check the path and its "
                    "permissions, or pass another file with --config",
                )
            ]
        ) from None
    return parse_config(text, file, base_dir=Path(os.path.abspath(file)).parent)


def parse_config(text: str, file: str = "<config>", base_dir: Path | None = None) -> LoadedConfig:
    """Validate configuration text; `file` only names it in messages."""
    data, index = _read_yaml(text, file)
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [p for err in exc.errors(include_url=False) for p in _translate(err, index)]
        problems.sort(key=lambda p: (p.line or 0, p.key))
        raise ConfigError([ConfigProblem(file, *p.args()) for p in problems]) from None
    warnings = [
        ConfigProblem(file, index.line(w.path), format_key(w.path), w.message)
        for w in config.warnings()
    ]
    return LoadedConfig(config, tuple(warnings), file)


# --- YAML with lines ---------------------------------------------------------------------------


class _LineIndex:
    """Key path -> 1-based line of its key (or list item); unknown paths fall back to a parent."""

    def __init__(self) -> None:
        self.lines: dict[KeyPath, int] = {}

    def line(self, path: KeyPath) -> int:
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return 1


def _read_yaml(text: str, file: str) -> tuple[Any, _LineIndex]:
    index = _LineIndex()
    problems: list[ConfigProblem] = []
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            problems.append(
                ConfigProblem(
                    file,
                    1,
                    "",
                    "the file is empty. Start from the example etc/hafailover/hafailover.yaml",
                )
            )
        elif not isinstance(root, yaml.MappingNode):
            problems.append(
                ConfigProblem(
                    file,
                    root.start_mark.line + 1,
                    "",
                    "the top level must be a mapping of sections (cluster:, nodes:, ...). "
                    "Start from the example etc/hafailover/hafailover.yaml",
                )
            )
        else:
            index.lines[()] = root.start_mark.line + 1
            _index(root, (), index, problems, file, set())
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    line,
                    "",
                    f"invalid YAML: {what}. Check indentation, quoting and colons around this line",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return data, index


def _index(
    node: yaml.Node,
    path: KeyPath,
    index: _LineIndex,
    problems: list[ConfigProblem],
    file: str,
    seen: set[int],
) -> None:
    # Aliases share node objects: visit each once (also stops recursive aliases).
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), index, problems, file, seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                problems.append(
                    ConfigProblem(
                        file,
                        line,
                        format_key(path),
                        f"key {shown!r} is not a name (YAML "
                        "reads it as a number, boolean or collection). Quote it or fix it",
                    )
                )
                continue
            key = key_node.value
            sub = (*path, key)
            if key in first:
                problems.append(
                    ConfigProblem(
                        file,
                        line,
                        format_key(sub),
                        f"appears twice (first on line "
                        f"{first[key]}). Remove one: YAML would silently keep only the last",
                    )
                )
                continue
            first[key] = line
            index.lines[sub] = line
            _index(value_node, sub, index, problems, file, seen)


# --- schema errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    line: int
    key: str
    message: str

    def args(self) -> tuple[int, str, str]:
        return (self.line, self.key, self.message)


def _translate(err: Any, index: _LineIndex) -> Iterator[_Placed]:
    loc: KeyPath = tuple(err["loc"])
    kind: str = err["type"]
    value = err.get("input")
    error = (err.get("ctx") or {}).get("error")
    if isinstance(error, SchemaError):
        for issue in error.issues:
            path = (*loc, *issue.path)
            yield _Placed(index.line(path), format_key(path), issue.message)
        return
    if kind == "value_error" and error is not None:
        message = str(error)
    elif kind == "missing":
        message = f"required key is missing. Add `{loc[-1]}:` here ({_DOCS})"
    elif kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping of keys, got {describe(value)} ({_DOCS})"
    elif kind in ("tuple_type", "list_type", "too_short"):
        message = f"expected a list of entries (lines starting with '- '), got {describe(value)}"
    else:
        message = f"{err['msg']} ({_DOCS})"
    yield _Placed(index.line(loc), format_key(loc), message)


def _unknown_key(loc: KeyPath) -> str:
    key = str(loc[-1])
    model = section_model(loc[:-1])
    known = sorted(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}. Did you mean {close[0]!r}?"
    where = format_key(loc[:-1]) or "the top level"
    return f"unknown key {key!r}. Known keys in {where}: {', '.join(known)}"
