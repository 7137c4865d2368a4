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
import functools
import json
import logging
import os
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
from lab.cluster import HaCluster
from tests.integration.faultlab import running_cluster, wait_for
from tests.nobody import as_nobody

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


# 11 000 checks: within the loader's limits (1 MiB, 100 000 lines, list items and keys), just
# under the size limit, and seconds of CPU time to parse.
SLOW_CHECKS = 11_000


def _check_line(i: int) -> str:
    return f"  - {{name: pad{i:05d}-{'x' * 30}, script: [/bin/true], interval: 1s}}"


def _config(tmp_path: Path, checks: int, *, name: str = "lab") -> Path:
    """A valid configuration with `checks` checks."""
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
        *(_check_line(i) for i in range(checks)),
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
        ({"cpu_seconds": 0.5}, "took more than 0.5s of CPU time (the limit"),
        ({"memory": 64 * 1024 * 1024}, "needed more than 64 MiB (the limit)"),
        ({"timeout": 0.2}, "did not finish within 0.2s (the limit)"),
    ],
)
def test_reload_over_a_limit_is_refused_and_the_loop_stays_on_time(
    tmp_path: Path, limits: dict[str, Any], expected: str
) -> None:
    # Parsed on the loop, this file stalls it for seconds.
    path = _config(tmp_path, SLOW_CHECKS)
    assert 900_000 < path.stat().st_size < 1024 * 1024
    load_config(path)  # within the loader's limits: it is the reload's limits that refuse it
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
    """Run the CLI as `nobody` (in a forked child); returns its exit code and output."""
    from click.testing import CliRunner

    from hafailover.cli import cli

    def work() -> bytes:
        result = CliRunner().invoke(cli, args, env=env)
        return json.dumps([result.exit_code, result.output]).encode()

    code, output = json.loads(as_nobody(work))
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
    # Bounded: before the reader drained its pipes, wait() could hang here for good.
    reload = asyncio.wait_for(load_config_off_loop(path, cpu_seconds=30), 120)
    error, lag = asyncio.run(_with_lag(reload))
    assert isinstance(error, ReloadError), error
    assert "the parsed configuration is larger than 256 KiB (the limit" in str(error)
    assert lag < 0.1


# -------------------------------------------------------- reload on a leader (netns lab)


def _log_since(cluster: HaCluster, node: str, offset: int) -> str:
    return cluster.log(node)[offset:]


def _refusal(cluster: HaCluster, node: str, offset: int) -> str | None:
    """The "reload refused" line logged since `offset`, with the next line (the loader's)."""
    lines = _log_since(cluster, node, offset).splitlines()
    at = next((i for i, x in enumerate(lines) if "reload refused" in x), None)
    return None if at is None else "\n".join(lines[at : at + 2])


@pytest.mark.netns
def test_reload_of_oversized_configs_on_the_leader_keeps_its_timing_and_its_vip() -> None:
    """SIGHUP on the leader with a file just under the 1 MiB limit that takes seconds of CPU to
    parse, then with one over the limit: both refused with a clear line, and meanwhile the loop
    stays within max_loop_lag, the leader keeps the VIP and no other node takes it."""
    with running_cluster() as rig:
        cluster, leader = rig.cluster, rig.first_holder
        path = cluster.config_path(leader)
        original = path.read_text()
        term = rig.term(leader)
        service = next(line for line in original.splitlines() if "{name: service," in line)
        extra = [_check_line(i) for i in range(SLOW_CHECKS)]
        slow = original.replace(service, "\n".join([service, *extra]))
        assert 900_000 < len(slow) < 1024 * 1024
        cases = [("slow", slow), ("oversized", slow + "#" * (1024 * 1024) + "\n")]
        for what, text in cases:
            path.write_text(text)
            assert (len(text) < 1024 * 1024) == (what == "slow")
            offset = len(cluster.log(leader))
            t_reload = cluster.reload(leader)
            try:
                line = wait_for(functools.partial(_refusal, cluster, leader, offset), 60.0,
                                f"the {what} reload to be refused")
            except AssertionError:
                print(_log_since(cluster, leader, offset)[-3000:])
                raise
            elapsed = time.monotonic() - t_reload
            print(f"{what} ({len(text)} bytes) refused after {elapsed:.1f}s: {line}")
            assert "(the limit" in line or "KiB limit for a configuration file" in line, line
            time.sleep(1.0)  # a few heartbeats after the refusal, too
            log = _log_since(cluster, leader, offset)
            assert "ms late" not in log, log[-2000:]
            status = cluster.status(leader)
            assert status["holds_vip"] and status["term"] == term, status
            assert not rig.changes(leader, present=False, after=t_reload)
            assert [n for n in rig.nodes if n != leader and rig.changes(n, True, t_reload)] == []
        rig.assert_no_dual()
        # The file fixed: the next SIGHUP applies it.
        path.write_text(original)
        offset = len(cluster.log(leader))
        cluster.reload(leader)
        wait_for(lambda: "reloaded:" in _log_since(cluster, leader, offset), 30.0, "the reload")
        assert rig.term(leader) == term
