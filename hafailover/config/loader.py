"""Read the YAML file and report every problem as `FILE:LINE: key.path: message. How to fix`.

The file is composed into YAML nodes first (they carry line numbers), indexed by key path, and
only then constructed into plain data for the schema. Errors from the schema carry key paths,
which the index turns back into lines. All problems found are raised together in one ConfigError.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from hafailover.config.excerpt import excerpt, shorten
from hafailover.config.fields import KeyPath, SchemaError, describe, format_key
from hafailover.config.schema import Config, section_model
from hafailover.errors import LocalError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "ConfigProblem",
    "LoadedConfig",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/hafailover/hafailover.yaml")
# Far above any real configuration (a few kilobytes even with hundreds of groups), far below
# what would take the parser seconds or the process hundreds of megabytes.
MAX_CONFIG_BYTES = 1 << 20
# Every YAML node costs about 10 us to parse, index and build, and 300 bytes: a file may have at
# most this many places where one can start (lines, `,`, `[`, `{`, `: `, `- `). A real file with
# a thousand groups has about 30000.
MAX_ITEMS = 100_000
# Real files nest 5 deep (groups[0].notify.leader[0]); the YAML composer recurses per level.
MAX_DEPTH = 20
# More problems than this are summarized: fixing the first ones usually removes the rest.
MAX_PROBLEMS = 50
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_DOCS = "see docs/configuration.md"
_TOO_BIG = (
    f"over the {MAX_CONFIG_BYTES // 1024} KiB limit for a configuration file. A configuration "
    "is a few kilobytes: check that this is the right file"
)


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


class ConfigError(LocalError):
    """The file cannot be used; `problems` lists everything wrong that could be found at once.

    At most MAX_PROBLEMS are kept, then one line saying how many more there were.
    """

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        kept = list(problems[:MAX_PROBLEMS])
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            kept.append(ConfigProblem(kept[0].file, None, "", f"{more} more problems not shown"))
        self.problems = tuple(kept)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[tuple[ConfigProblem, ...]]]:
        # Survives pickling (a reader process hands it back) with its problems, not as text.
        return (type(self), (self.problems,))


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


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[ConfigProblem, ...]
    file: str
    index: _LineIndex = field(default_factory=_LineIndex, compare=False, repr=False)

    def line_of(self, path: KeyPath) -> int:
        """The line of the key at `path` (e.g. ("groups", 0, "track_interfaces", 1)), or of the
        nearest parent key the file writes; for placing problems found after loading."""
        return self.index.line(path)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        """A problem at `path`, placed on its line, e.g. from a host check."""
        return ConfigProblem(self.file, self.line_of(path), format_key(path), message)


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> LoadedConfig:
    """Read and validate the file at `path`; relative paths in it are relative to its directory.

    A file over MAX_CONFIG_BYTES is refused before it is read (and a pipe or device after that
    many bytes), so a wrong or hostile file costs neither time nor memory.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as stream:
            info = os.fstat(stream.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    [
                        ConfigProblem(
                            file, None, "", f"the file has {info.st_size} bytes, {_TOO_BIG}"
                        )
                    ]
                )
            data = stream.read(MAX_CONFIG_BYTES + 1)
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
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(file, None, "", f"the input is {_TOO_BIG}")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [ConfigProblem(file, line, "", f"not UTF-8 text ({exc.reason}). Save it as UTF-8")]
        ) from None
    return parse_config(text, file, base_dir=Path(os.path.abspath(file)).parent)


def parse_config(text: str, file: str = "<config>", base_dir: Path | None = None) -> LoadedConfig:
    """Validate configuration text; `file` only names it in messages."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(file, None, "", f"the text is {_TOO_BIG}")])
    items = sum(text.count(s) for s in ("\n", ",", "[", "{", ": ", "- "))
    if items > MAX_ITEMS:
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    None,
                    "",
                    f"the file has {items} lines, list items and keys, over the limit of "
                    f"{MAX_ITEMS} for a configuration. A configuration has a few hundred: check "
                    "that this is the right file",
                )
            ]
        )
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
    return LoadedConfig(config, tuple(warnings), file, index)


# --- YAML with lines ---------------------------------------------------------------------------


class _Values:
    """Every value error while building data is placed on its node (a YAML error, not a crash)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError) as exc:
            # int() of 5000 digits, a timestamp like 2024-13-45: a value YAML cannot build.
            raise ConstructorError(
                None, None, f"cannot read this value ({shorten(str(exc))})", node.start_mark
            ) from None


class _PyLoader(_Values, yaml.SafeLoader):
    """The pure-Python safe loader, only when PyYAML was built without libyaml.

    Its composer recurses once per nesting level, so it gets the nesting limit libyaml has.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml parses and composes about 7 times faster than the pure-Python loader (a 1 MiB file in
# about a second rather than seven) and refuses nesting deeper than 1000 levels by itself.
_Loader: type[yaml.SafeLoader | yaml.CSafeLoader] = _PyLoader
if yaml.__with_libyaml__:

    class _CLoader(_Values, yaml.CSafeLoader):
        pass

    _Loader = _CLoader


def _read_yaml(text: str, file: str) -> tuple[Any, _LineIndex]:
    index = _LineIndex()
    problems: list[ConfigProblem] = []
    loader: yaml.SafeLoader | yaml.CSafeLoader | None = None
    try:
        # The reader checks every character when it is created: keep that inside the try.
        loader = _Loader(text)
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
    except ReaderError as exc:
        # libyaml counts the position in UTF-8 bytes, the Python reader in characters.
        before = text[: exc.position] if yaml.__with_libyaml__ is False else None
        if before is None:
            before = text.encode("utf-8", "surrogatepass")[: exc.position].decode(
                "utf-8", "replace"
            )
        at = before.count("\n") + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    at,
                    "",
                    f"invalid YAML: the character U+{ord(char):04X} ({_char_name(char)}) is not "
                    "allowed anywhere in YAML, not even in quotes or comments. Remove it",
                )
            ]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = shorten(" ".join(str(p) for p in (exc.context, exc.problem) if p), 200)
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
        raise ConfigError(
            [ConfigProblem(file, None, "", f"invalid YAML: {shorten(str(exc), 200)}")]
        ) from None
    except RecursionError:
        raise ConfigError(
            [ConfigProblem(file, None, "", "invalid YAML: nested too deeply. Flatten it")]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, index


def _char_name(char: str) -> str:
    names = {"\0": "NUL", "\x0c": "form feed", "\x1b": "escape", "\x7f": "delete"}
    return names.get(char, "a control character")


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
    if len(path) >= MAX_DEPTH and isinstance(node, yaml.CollectionNode):
        problems.append(
            ConfigProblem(
                file,
                node.start_mark.line + 1,
                format_key(path[:3]) + "...",
                f"nested deeper than {MAX_DEPTH} levels, more than any setting. Flatten it",
            )
        )
        return
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
                        f"key {excerpt(shown)} is not a name (YAML "
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
    known = sorted(f.alias or k for k, f in model.model_fields.items()) if model else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) if len(key) < 100 else []
    if close:
        return f"unknown key {excerpt(key)}. Did you mean {close[0]!r}?"
    where = format_key(loc[:-1]) or "the top level"
    return f"unknown key {excerpt(key)}. Known keys in {where}: {', '.join(known)}"
