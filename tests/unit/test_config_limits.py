"""What a wrong or hostile file can cost: sizes refused up front, values excerpted, every YAML
error a `FILE:LINE: message` problem, in bounded time and memory."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from hafailover.config.loader import (
    MAX_CONFIG_BYTES,
    MAX_PROBLEMS,
    ConfigError,
    load_config,
    parse_config,
)
from hafailover.errors import LocalError

BASE = "cluster:\n  name: web\nnodes:\n  - {name: node1, address: 10.0.0.11}\n"
MB = 1 << 20


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml")
    return [str(p) for p in caught.value.problems]


def load_problems(path: Path) -> tuple[list[str], float, int]:
    """The problems, the seconds it took and the peak of Python allocations in bytes."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        took = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return [str(p) for p in caught.value.problems], took, peak


def test_config_error_is_this_hosts_fault() -> None:
    assert issubclass(ConfigError, LocalError)


def test_config_error_and_loaded_config_survive_pickling() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + "log_level: loud\n", "t.yaml")
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.problems == caught.value.problems and str(again) == str(caught.value)
    loaded = parse_config(BASE, "t.yaml")
    copy = pickle.loads(pickle.dumps(loaded))
    assert copy == loaded and copy.config.groups == loaded.config.groups
    assert copy.line_of(("nodes", 0, "address")) == 4


# --- size ------------------------------------------------------------------------------------


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as f:  # a real 50 MB cluster.name, not a sparse file
        f.write("cluster:\n  name: ")
        chunk = "a" * MB
        for _ in range(50):
            f.write(chunk)
        f.write("\n")
    size = path.stat().st_size
    problems, took, peak = load_problems(path)
    assert problems == [
        f"{path}: the file has {size} bytes, over the 1024 KiB limit for a configuration file. "
        "A configuration is a few kilobytes: check that this is the right file"
    ]
    assert took < 0.5
    assert peak < 256 * 1024  # nothing of the file was read


def test_an_endless_stream_is_refused_after_the_limit() -> None:
    problems, took, peak = load_problems(Path("/dev/zero"))
    assert problems == [
        "/dev/zero: the input is over the 1024 KiB limit for a configuration file. A "
        "configuration is a few kilobytes: check that this is the right file"
    ]
    assert took < 1.0
    assert peak < 3 * MB  # the limit plus one byte, read once


def test_parse_config_has_the_same_limit() -> None:
    assert problems_of("#" * (MAX_CONFIG_BYTES + 1)) == [
        "t.yaml: the text is over the 1024 KiB limit for a configuration file. A configuration "
        "is a few kilobytes: check that this is the right file"
    ]


def test_too_many_items_are_refused_before_parsing() -> None:
    text = BASE + "x: [" + "1," * 150_000 + "1]\n"
    assert len(text) < MAX_CONFIG_BYTES
    start = time.monotonic()
    assert problems_of(text) == [
        "t.yaml: the file has 150013 lines, list items and keys, over the limit of 100000 for a "
        "configuration. A configuration has a few hundred: check that this is the right file"
    ]
    assert time.monotonic() - start < 0.5


def test_the_worst_file_within_the_limits_is_parsed_in_bounded_time() -> None:
    # 99 000 one-character list items: the most YAML nodes the limits let through.
    text = BASE + "x: [" + "1," * 99_000 + "1]\n"
    start = time.monotonic()
    assert problems_of(text)[0].startswith("t.yaml:5: x: unknown key 'x'.")
    # About 0.5 s on an idle laptop; generous for a loaded CI machine.
    assert time.monotonic() - start < 15


def test_at_most_max_problems_are_listed() -> None:
    text = BASE + "".join(f"k{i}: 1\n" for i in range(200))
    found = problems_of(text)
    assert len(found) == MAX_PROBLEMS + 1
    assert found[-1] == f"t.yaml: {200 - MAX_PROBLEMS} more problems not shown"


# --- excerpts --------------------------------------------------------------------------------


def test_a_long_bad_value_is_excerpted() -> None:
    name = "a b" * 100_000
    (problem,) = problems_of(BASE.replace("name: web", f"name: {name}"))
    assert problem == (
        f"t.yaml:2: cluster.name: {name[:60]!r}…(300000 chars) is not a valid name. Use "
        "letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)"
    )


@pytest.mark.parametrize(
    "line",
    [
        "log_level: {}",
        "state_dir: {}\n  extra: 1",
        "announce: {{interval: {}}}",
        "nodes:\n  - {{name: node1, address: {}}}",
        "vips:\n  - {{address: {}, interface: eth0}}",
        "vips:\n  - {{address: 10.0.0.100/24, interface: {}}}",
        "notify: {{leader: {}}}",
        "checks:\n  - {{name: c, http: {}}}",
        "checks:\n  - {{name: c, tcp: {}}}",
        "metrics: {{listen: {}}}",
        "groups:\n  - {{name: g, checks: [{}]}}",
        "groups:\n  - {{name: g, priority: {{{}: 1}}}}",
        "{}: 1",
    ],
)
def test_no_message_echoes_a_long_value(line: str) -> None:
    value = "x y/" * 25_000  # 100 000 characters
    text = BASE.replace("nodes:\n  - {name: node1, address: 10.0.0.11}\n", "")
    if "nodes:" not in line:
        text += "nodes:\n  - {name: node1, address: 10.0.0.11}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text + line.format(f"'{value}'") + "\n", "t.yaml")
    assert len(str(caught.value)) < 1000, str(caught.value)[:2000]


# --- YAML errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "name"),
    [("\0", "NUL"), ("\x0c", "form feed"), ("\x1b", "escape"), ("\x07", "a control character")],
)
def test_control_characters_are_a_problem_on_their_line(char: str, name: str) -> None:
    text = BASE + f"log_level: in{char}fo\n"
    assert problems_of(text) == [
        f"t.yaml:5: invalid YAML: the character U+{ord(char):04X} ({name}) is not allowed "
        "anywhere in YAML, not even in quotes or comments. Remove it"
    ]


def test_control_character_line_counts_characters_not_bytes() -> None:
    text = "# café, naïve, 東京\n" * 3 + BASE + "# \x0c\n"
    assert problems_of(text)[0].startswith("t.yaml:8: invalid YAML: the character U+000C")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE + "port: 1" + "0" * 5000 + "\n",
            "t.yaml:5: invalid YAML: cannot read this value (Exceeds the limit (4300 digits) for "
            "integer string conversio…(",
        ),
        (BASE + "x: 2024-13-45\n", "t.yaml:5: invalid YAML: cannot read this value (month must"),
        (
            BASE + "x: !!python/object/apply:os.system [true]\n",
            "t.yaml:5: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (BASE + "---\nx: 1\n", "t.yaml:5: invalid YAML: expected a single document"),
        (BASE + "x: *nothing\n", "t.yaml:5: invalid YAML: found undefined alias"),
        (BASE + "x: [1, 2\n", "t.yaml:6: invalid YAML: while parsing a flow sequence"),
        (BASE + "x:\n\t- 1\n", "t.yaml:6: invalid YAML: while scanning"),
        (BASE + "x: " + "[" * 30 + "]" * 30 + "\n", "t.yaml:5: x[0][0]...: nested deeper than 20"),
        (BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n", "t.yaml:5: invalid YAML: "),
        (BASE + "log_level: info\nlog_level: debug\n", "t.yaml:6: log_level: appears twice"),
    ],
)
def test_every_yaml_error_is_a_placed_problem(text: str, expected: str) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith(expected), problem


def test_a_long_duplicate_key_is_excerpted() -> None:
    key = "k" * 1000  # YAML's longest simple key (1024)
    (problem,) = problems_of(BASE + f"{key}: 1\n{key}: 2\n")
    assert problem.startswith(f"t.yaml:6: {'k' * 60}…(1000 chars): appears twice (first on line 5)")
    assert len(problem) < 300


def test_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(BASE.encode() + b"log_level: \xff\n")
    problems, _, _ = load_problems(path)
    assert problems == [f"{path}:5: not UTF-8 text (invalid start byte). Save it as UTF-8"]


# --- the commands ----------------------------------------------------------------------------


def hafailover(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from hafailover.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HAFAILOVER_SOCKET": ""},
    )


@pytest.fixture
def nul_config(tmp_path: Path) -> Path:
    path = tmp_path / "nul.yaml"
    path.write_text(BASE + "log_level: in\0fo\n")
    return path


PROBLEM = "nul.yaml:5: invalid YAML: the character U+0000 (NUL) is not allowed"


def test_run_exits_78_without_a_traceback(nul_config: Path) -> None:
    result = hafailover("run", "-c", str(nul_config), "--node", "node1")
    assert result.returncode == 78, result.stderr
    assert PROBLEM in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_exits_1_without_a_traceback(nul_config: Path) -> None:
    result = hafailover("check-config", "-c", str(nul_config), "--no-host")
    assert result.returncode == 1
    assert PROBLEM in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_status_with_a_broken_config_exits_3_without_a_traceback(nul_config: Path) -> None:
    result = hafailover("status", "-c", str(nul_config))
    assert result.returncode == 3
    assert f"cannot find the control socket in {nul_config}:" in result.stderr
    assert PROBLEM in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_of_a_50_mb_file_is_quick(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(50 * MB)
    start = time.monotonic()
    result = hafailover("check-config", "-c", str(path), "--no-host")
    assert result.returncode == 1
    assert "over the 1024 KiB limit" in result.stdout + result.stderr
    assert time.monotonic() - start < 30  # the interpreter's start-up, mostly
