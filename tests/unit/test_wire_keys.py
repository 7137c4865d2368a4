"""The cluster key file: generation, loading, and the operator messages for every failure."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hafailover.wire.keys import KeyFileError, generate_key, load_key, new_incarnation

HINT = "generate a new key with `(umask 077; python3 -m hafailover.wire.keys > {p})` and copy that file to every node"  # noqa: E501


def write_key(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


def expect_error(path: Path, message: str) -> None:
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert str(info.value) == message.format(p=path, hint=HINT.format(p=path))


def test_generated_key_is_32_random_bytes_in_base64() -> None:
    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a, validate=True)) == 32
    assert a != b


def test_generated_key_loads_back(tmp_path: Path) -> None:
    key = generate_key()
    path = write_key(tmp_path, key.encode() + b"\n")
    assert load_key(path) == base64.b64decode(key)
    assert load_key(str(path)) == base64.b64decode(key)


def test_running_the_module_prints_a_key() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hafailover.wire.keys"], capture_output=True, text=True, check=True
    ).stdout
    assert len(base64.b64decode(out.strip(), validate=True)) == 32


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "cluster.key", "key file {p} does not exist: {hint}")


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.mkdir(mode=0o700)
    expect_error(path, "key file {p} is not a regular file: remove it, then {hint}")


UNREADABLE = (
    "cannot read key file {p} (Permission denied): make it a file readable by the user "
    "hafailover runs as, then `chmod 600 {p}`"
)


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so simulate what a non-root daemon gets from open(2).
    def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    path = write_key(tmp_path, generate_key().encode())
    monkeypatch.setattr(os, "open", denied)
    expect_error(path, UNREADABLE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_no_read_permission(tmp_path: Path) -> None:
    expect_error(write_key(tmp_path, generate_key().encode(), 0o000), UNREADABLE)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    os.mkfifo(path, 0o600)
    expect_error(path, "key file {p} is not a regular file: remove it, then {hint}")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o602, 0o620])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path, generate_key().encode(), mode)
    expect_error(
        path,
        f"key file {{p}} is accessible by group or others (mode {mode:04o}): run `chmod 600 {{p}}`",
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_fine(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path, base64.b64encode(b"k" * 32), mode)
    assert load_key(path) == b"k" * 32


@pytest.mark.parametrize(
    "content", [b"not base64!", b"abc", "clé".encode(), b"\xff\xfe", b"ab cd=="]
)
def test_invalid_base64(tmp_path: Path, content: bytes) -> None:
    expect_error(write_key(tmp_path, content), "key file {p} does not hold valid base64: {hint}")


@pytest.mark.parametrize(("size", "content"), [(15, base64.b64encode(b"k" * 15)), (0, b"\n")])
def test_short_key(tmp_path: Path, size: int, content: bytes) -> None:
    expect_error(
        write_key(tmp_path, content),
        f"key file {{p}} holds a {size}-byte key, at least 16 bytes are needed: {{hint}}",
    )


def test_sixteen_bytes_is_enough(tmp_path: Path) -> None:
    assert load_key(write_key(tmp_path, base64.b64encode(b"k" * 16))) == b"k" * 16


def test_key_file_error_is_a_value_error() -> None:
    assert issubclass(KeyFileError, ValueError)


def test_incarnation_is_the_wall_clock_in_ns() -> None:
    before = time.time_ns()
    incarnation = new_incarnation()
    assert before <= incarnation <= time.time_ns()
    assert incarnation < 2**64
