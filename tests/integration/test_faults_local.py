"""Local faults (issue 12): what a file or a local client feeds the daemon must not stall its
loop or crash a command.

* the key file is bounded in size, and the error names the limit without echoing the content;
* a SIGHUP reload of an oversized or slow-to-parse configuration on a leader runs off the event
  loop: no stall over max_loop_lag, never two VIP holders, the reload refused with a clear line;
* the CLI answers a socket it may not use with exit 3 and the permission message, however the
  socket was named.

The netns tests build the lab (10.213.0.0/16, nothing joined to the host) and remove it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pwd
import socket
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hafailover.config import LoadedConfig, load_config
from hafailover.runtime.reload import Reloader, ReloadError, load_config_off_loop
from hafailover.wire.keys import MAX_KEY_FILE_BYTES, KeyFileError, generate_key, load_key

T = TypeVar("T")

# ------------------------------------------------------------------------------- key file


def _key_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "cluster.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


def test_key_file_at_the_limit_is_read(tmp_path: Path) -> None:
    key = generate_key().encode()
    padded = key + b"\n" + b" " * (MAX_KEY_FILE_BYTES - len(key) - 1)
    assert len(padded) == MAX_KEY_FILE_BYTES
    assert load_key(_key_file(tmp_path, padded)) == base64.b64decode(key)


@pytest.mark.parametrize("size", [MAX_KEY_FILE_BYTES + 1, 8 * 1024 * 1024])
def test_oversized_key_file_is_refused_naming_the_limit(tmp_path: Path, size: int) -> None:
    # Valid base64 throughout: before the limit, an 8 MiB file was accepted as a 6 MiB key.
    secret = base64.b64encode(b"\x5a" * (size * 3 // 4 + 3))[:size]
    path = _key_file(tmp_path, secret)
    tracemalloc.start()
    try:
        start = time.monotonic()
        with pytest.raises(KeyFileError) as info:
            load_key(path)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert f"larger than {MAX_KEY_FILE_BYTES} bytes (the limit" in message
    assert "WlpaWlpa" not in message  # nothing of the content is echoed
    assert len(message) < 400
    assert elapsed < 0.5 and peak < 64 * 1024, (elapsed, peak)


# ------------------------------------------------------------------------ off-loop reload


def _config(tmp_path: Path, checks: int, *, name: str = "lab") -> Path:
    """A valid configuration with `checks` checks (18 000 of them: just under the 1 MiB limit
    for a configuration file, seconds of CPU time to parse)."""
    lines = [
        "cluster:",
        f"  name: {name}",
        f"  key_file: {tmp_path / 'cluster.key'}",
        "nodes:",
        "  - {name: n1, address: 10.213.0.11, priority: 150}",
        "  - {name: n2, address: 10.213.0.12, priority: 100}",
        "vips:",
        "  - {address: 10.213.0.100/24, interface: eth0}",
        "checks:",
        *(f"  - {{name: c{i}, script: [/bin/true], interval: 1s}}" for i in range(checks)),
    ]
    path = tmp_path / "hafailover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _with_lag(coro: Awaitable[T]) -> tuple[T | BaseException, float]:
    """Run `coro`, measuring the loop's worst lateness meanwhile (10 ms ticks)."""
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - t - 0.01)

    task = asyncio.create_task(ticker())
    try:
        result: T | BaseException = await coro
    except Exception as e:
        result = e
    finally:
        task.cancel()
    return result, worst


def test_reload_reads_a_valid_file_off_the_loop(tmp_path: Path) -> None:
    path = _config(tmp_path, 3)
    loaded, lag = asyncio.run(_with_lag(load_config_off_loop(path)))
    assert isinstance(loaded, LoadedConfig)
    assert loaded.config == load_config(path).config
    assert lag < 0.1


def test_reload_of_an_invalid_file_is_refused_with_its_lines(tmp_path: Path) -> None:
    path = _config(tmp_path, 1)
    path.write_text(path.read_text().replace("priority: 100", "priority: lots"))
    error, _ = asyncio.run(_with_lag(load_config_off_loop(path)))
    assert isinstance(error, ReloadError)
    assert str(error).startswith("configuration invalid:\n")
    assert f"{path}:6: nodes[1].priority" in str(error)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"cpu_seconds": 1}, "took more than 1s of CPU time (the limit"),
        ({"memory": 64 * 1024 * 1024}, "needed more than 64 MiB (the limit)"),
        ({"timeout": 0.2}, "did not finish within 0.2s (the limit)"),
    ],
)
def test_reload_over_a_limit_is_refused_and_the_loop_stays_on_time(
    tmp_path: Path, limits: dict[str, Any], expected: str
) -> None:
    # Parsed on the loop, this file stalls it for seconds.
    path = _config(tmp_path, 18_000)
    assert 900_000 < path.stat().st_size < 1024 * 1024
    start = time.monotonic()
    error, lag = asyncio.run(_with_lag(load_config_off_loop(path, **limits)))
    elapsed = time.monotonic() - start
    assert isinstance(error, ReloadError), error
    assert expected in str(error) and str(path) in str(error)
    assert lag < 0.1, f"loop {lag * 1000:.0f} ms late"
    print(f"refused after {elapsed:.1f}s: {error}")


def test_reloader_runs_one_reload_at_a_time_and_reads_the_last_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(tmp_path, 1, name="first")
    applied: list[str] = []
    refused: list[str] = []

    async def main() -> None:
        reloader = Reloader(path, lambda c: applied.append(c.config.cluster.name), refused.append)
        reloader.request()
        await asyncio.sleep(0)
        _config(tmp_path, 1, name="second")  # edited while the first read runs
        reloader.request()
        reloader.request()
        await reloader.wait()

    caplog.set_level(logging.INFO)
    asyncio.run(main())
    assert refused == [] and applied[-1] == "second" and len(applied) <= 2
    assert "reload already running" in caplog.text


# ------------------------------------------------------------------------- CLI exit codes

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the test drops a forked child to the `nobody` user"
)


def _cli_as_nobody(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in a forked child that dropped to `nobody` (who may not read the venv, so
    nothing is exec'd); returns its exit code and output."""
    from click.testing import CliRunner

    from hafailover.cli import cli

    nobody = pwd.getpwnam("nobody")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only os._exit
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = CliRunner().invoke(cli, args, env=env)
            os.write(wfd, json.dumps([result.exit_code, result.output]).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    code, output = json.loads(b"".join(chunks))
    return int(code), str(output)


@pytest.fixture
def root_only_socket() -> Iterator[Path]:
    """A control socket file as the daemon leaves it for a group `nobody` is not in (0660)."""
    d = Path(tempfile.mkdtemp(prefix="h12sock-"))
    d.chmod(0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(d / "control.sock"))
        sock.listen()
        (d / "control.sock").chmod(0o660)
        yield d / "control.sock"
    finally:
        sock.close()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


@needs_root
@pytest.mark.parametrize("how", ["--socket", "HAFAILOVER_SOCKET", "-c"])
def test_socket_permission_denied_exits_3_however_it_is_named(
    root_only_socket: Path, how: str
) -> None:
    env: dict[str, str] = {}
    if how == "--socket":
        args = ["--socket", str(root_only_socket), "status"]
    elif how == "HAFAILOVER_SOCKET":
        args, env = ["status"], {"HAFAILOVER_SOCKET": str(root_only_socket)}
    else:
        config = _config(root_only_socket.parent, 1)
        config.write_text(config.read_text() + f"control_socket: {root_only_socket}\n")
        config.chmod(0o644)
        args = ["-c", str(config), "status"]
    code, output = _cli_as_nobody(args, env)
    assert code == 3, output
    assert f"permission denied on {root_only_socket}" in output
    assert "control group" in output and "not readable" not in output


def test_reload_whose_parsed_result_is_oversized_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, 2_000)  # ~110 KB of YAML, ~450 KB parsed: no real configuration
    error, lag = asyncio.run(_with_lag(load_config_off_loop(path, cpu_seconds=30)))
    assert isinstance(error, ReloadError), error
    assert "the parsed configuration is larger than 256 KiB (the limit" in str(error)
    assert lag < 0.1
