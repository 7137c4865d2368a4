"""Read keepalived.conf text into a tree of statements, the way keepalived's own parser reads it.

keepalived's syntax is line based: a statement is a keyword and its arguments on one line; a
`{` opens a block (on the keyword's line, or alone on the next one) and `}` closes it, also on the
same line (`track_script { chk }`). `#` and `!` start a comment outside double quotes; a double-
quoted string is one argument. `include PATTERN` reads every file the glob matches, relative to
the directory of the file that includes it, in sorted order. A line starting `@ID` applies only
when keepalived runs with config id ID (`-i ID`), one starting `@^ID` only when it does not.
`$NAME=value` defines a parameter that `$NAME` or `${NAME}` in later lines is replaced by.

Input is bounded: files over `MAX_FILE_BYTES`, includes deeper than `MAX_INCLUDE_DEPTH`, more than
`MAX_FILES` files, include loops, binary data and unbalanced braces are errors with FILE:LINE.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hafailover.errors import LocalError

__all__ = [
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "KeepalivedReadError",
    "KeepalivedSyntaxError",
    "Note",
    "ParseResult",
    "Statement",
    "Where",
    "parse_file",
    "parse_text",
]

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_TOTAL_BYTES = 32 * 1024 * 1024
MAX_INCLUDE_DEPTH = 8
MAX_FILES = 1000
_PARAM = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_DEFINE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


@dataclass(frozen=True, order=True)
class Where:
    """A place in the input: the file as named to the user, and a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Note:
    """Something not carried over (or changed on the way), and why: one operator sentence."""

    where: Where | None
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class KeepalivedSyntaxError(LocalError):
    """The input cannot be read as a keepalived configuration; the message starts FILE:LINE."""

    def __init__(self, where: Where | None, message: str) -> None:
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


class KeepalivedReadError(KeepalivedSyntaxError):
    """A file named on the command line cannot be read at all."""


@dataclass
class Statement:
    """`key args...`, or a block `key args... { children }` when `children` is not None."""

    key: str
    args: list[str]
    where: Where
    children: list[Statement] | None = None

    def blocks(self, key: str) -> list[Statement]:
        return [c for c in self.children or () if c.key == key and c.children is not None]


@dataclass
class ParseResult:
    statements: list[Statement]
    notes: list[Note] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def parse_file(path: str | os.PathLike[str], config_id: str | None = None) -> ParseResult:
    """Parse the file at `path` and everything it includes."""
    reader = _Reader(config_id)
    root = Statement("", [], Where(os.fspath(path), 0), [])
    reader.read_file(Path(path), os.fspath(path), root, None, depth=0)
    reader.finish(root)
    return ParseResult(root.children or [], reader.notes, reader.files)


def parse_text(
    text: str, name: str = "<keepalived.conf>", config_id: str | None = None
) -> ParseResult:
    """Parse configuration text; `include` is relative to the current directory."""
    reader = _Reader(config_id)
    root = Statement("", [], Where(name, 0), [])
    reader.read_text(text, name, Path.cwd(), root)
    reader.finish(root)
    return ParseResult(root.children or [], reader.notes, reader.files)


class _Reader:
    def __init__(self, config_id: str | None) -> None:
        self.config_id = config_id
        self.notes: list[Note] = []
        self.files: list[str] = []
        self.total = 0
        self.active: list[Path] = []  # the include chain, to find loops
        self.stack: list[Statement] = []  # open blocks, innermost last
        self.params: dict[str, str] = {}
        self.skipped: dict[str, list[Where]] = {}

    # --- files ---------------------------------------------------------------------------

    def read_file(
        self, path: Path, shown: str, root: Statement, at: Where | None, depth: int
    ) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise KeepalivedSyntaxError(
                at, f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels: flatten them"
            )
        if len(self.files) >= MAX_FILES:
            raise KeepalivedSyntaxError(at, f"more than {MAX_FILES} files included")
        real = path.resolve()
        if real in self.active:
            chain = " -> ".join(str(p) for p in [*self.active, real])
            raise KeepalivedSyntaxError(at, f"include loop: {chain}")
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise KeepalivedSyntaxError(
                    at or Where(shown, 0),
                    f"{shown} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit: not a "
                    "keepalived configuration",
                )
            with open(path, "rb") as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            error = KeepalivedSyntaxError if at else KeepalivedReadError
            raise error(at, f"cannot read {shown}: {exc.strerror or exc}") from None
        self.total += len(data)
        if self.total > MAX_TOTAL_BYTES:
            raise KeepalivedSyntaxError(at, f"the included files exceed {MAX_TOTAL_BYTES} bytes")
        self.files.append(shown)
        self.active.append(real)
        try:
            self.read_text(_decode(data, shown), shown, path.parent, root)
        finally:
            self.active.pop()

    def include(self, pattern: str, where: Where, base: Path, root: Statement) -> None:
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            self.notes.append(
                Note(where, f"include {pattern} matches no file here: nothing read from it")
            )
            return
        for match in matches:
            if os.path.isdir(match):
                continue
            self.read_file(Path(match), match, root, where, depth=len(self.active))

    # --- lines ---------------------------------------------------------------------------

    def read_text(self, text: str, name: str, base: Path, root: Statement) -> None:
        if not self.stack:
            self.stack.append(root)
        depth_at_start = len(self.stack)
        for number, raw in enumerate(text.splitlines(), start=1):
            where = Where(name, number)
            line = raw.strip()
            if not line:
                continue
            if line.startswith("@"):
                applied = self._conditional(line, where)
                if applied is None:
                    continue
                line = applied
            if line.startswith("$"):
                define = _DEFINE.fullmatch(line)
                if define:
                    self.params[define.group(1)] = define.group(2).strip()
                    continue
            if "$" in line and self.params:
                line = self._substitute(line)
            tokens = _tokenize(line, where)
            if tokens and tokens[0] == "include":
                if len(tokens) < 2:
                    raise KeepalivedSyntaxError(where, "include needs a file name or pattern")
                self.include(tokens[1], where, base, root)
                continue
            self._statements(tokens, where)
        if len(self.stack) > depth_at_start and name != root.where.file:
            opened = self.stack[-1]
            raise KeepalivedSyntaxError(
                opened.where, f"block {opened.key} is not closed before the end of {name}"
            )

    def _conditional(self, line: str, where: Where) -> str | None:
        head, *tail = line.split(None, 1)
        rest = tail[0] if tail else ""
        negated = head.startswith("@^")
        ident = head[2:] if negated else head[1:]
        if self.config_id is None:
            self.skipped.setdefault(head, []).append(where)
            return None
        applies = (ident == self.config_id) != negated
        return rest.strip() if applies else None

    def _substitute(self, line: str) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1).strip("{}")
            return self.params.get(name, match.group(0))

        return _PARAM.sub(value, line)

    def _statements(self, tokens: list[str], where: Where) -> None:
        current: list[str] = []
        for token in tokens:
            if token == "{":
                parent = self.stack[-1]
                if current:
                    block = Statement(current[0], current[1:], where, [])
                    assert parent.children is not None
                    parent.children.append(block)
                elif parent.children and parent.children[-1].children is None:
                    # The brace alone on the line after its keyword.
                    block = parent.children[-1]
                    block.children = []
                else:
                    raise KeepalivedSyntaxError(where, "'{' without a keyword before it")
                self.stack.append(block)
                current = []
            elif token == "}":
                self._flush(current, where)
                current = []
                if len(self.stack) <= 1:
                    raise KeepalivedSyntaxError(where, "'}' closes no block: unbalanced braces")
                self.stack.pop()
            else:
                current.append(token)
        self._flush(current, where)

    def _flush(self, tokens: list[str], where: Where) -> None:
        if tokens:
            parent = self.stack[-1]
            assert parent.children is not None
            parent.children.append(Statement(tokens[0], tokens[1:], where))

    def finish(self, root: Statement) -> None:
        if len(self.stack) > 1:
            opened = self.stack[-1]
            raise KeepalivedSyntaxError(
                opened.where, f"block {opened.key} is never closed: unbalanced braces"
            )
        for head, places in sorted(self.skipped.items()):
            lines = ", ".join(str(w.line) for w in places[:10])
            self.notes.append(
                Note(
                    places[0],
                    f"{len(places)} line(s) conditional on `{head}` (lines {lines}) skipped: "
                    "keepalived applies them only under `-i ID`. Pass --config-id ID to apply "
                    "those of the host you import",
                )
            )


def _decode(data: bytes, shown: str) -> str:
    if b"\0" in data:
        raise KeepalivedSyntaxError(
            Where(shown, 1), "binary data (NUL bytes): not a keepalived configuration"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\r\n\f\v")
    if controls > max(8, len(text) // 100):
        raise KeepalivedSyntaxError(
            Where(shown, 1), "binary data (control characters): not a keepalived configuration"
        )
    return text


def _tokenize(line: str, where: Where) -> list[str]:
    """Split a line into words: double quotes group, `#`/`!` end it, braces are words."""
    tokens: list[str] = []
    word: list[str] = []
    quoted = False
    in_quotes = False
    for char in line:
        if in_quotes:
            if char == '"':
                in_quotes = False
            else:
                word.append(char)
            continue
        if char == '"':
            in_quotes = quoted = True
        elif char in "#!":
            break
        elif char in "{}" and not word:
            tokens.append(char)
        elif char in "{}":
            tokens.append("".join(word))
            word, quoted = [], False
            tokens.append(char)
        elif char.isspace():
            if word or quoted:
                tokens.append("".join(word))
            word, quoted = [], False
        else:
            word.append(char)
    if in_quotes:
        raise KeepalivedSyntaxError(where, "a double quote is never closed on this line")
    if word or quoted:
        tokens.append("".join(word))
    return tokens
