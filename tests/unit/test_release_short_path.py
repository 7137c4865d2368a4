"""`python -m hafailover release-vips` (the unit's ExecStopPost): the short path from the record,
and where it leaves the work to the click command. The removal itself is tested in a network
namespace by tests/unit/test_vip.py and tests/integration/test_daemon.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hafailover.__main__ import DEFAULT_CONFIG, release_config, run_options
from hafailover.cli import DEFAULT_CONFIG as CLI_DEFAULT_CONFIG
from hafailover.net.record import DEFAULT_STATE_DIR, record_state_dir

ROOT = Path(__file__).resolve().parents[2]


def python(code: str, env: dict[str, str] | None = None, *argv: str,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_short_path_and_the_cli_share_the_default_configuration() -> None:
    assert str(CLI_DEFAULT_CONFIG) == DEFAULT_CONFIG


@pytest.mark.parametrize(("args", "config"), [
    ([], DEFAULT_CONFIG),
    (["-c", "/etc/x.yaml"], "/etc/x.yaml"),
    (["--config", "x.yaml"], "x.yaml"),
    (["--config=x.yaml"], "x.yaml"),
    (["--config="], None),
    (["-c"], None),
    (["-c", "--help"], None),
    (["--help"], None),
    (["-c", "x.yaml", "--socket", "s"], None),
    (["--bogus"], None),
])
def test_only_the_options_it_knows_take_the_short_path(args: list[str],
                                                         config: str | None) -> None:
    assert release_config(args) == config


def test_the_record_is_where_systemd_says_else_only_for_the_default_configuration() -> None:
    assert record_state_dir(False, {"STATE_DIRECTORY": "/s1:/s2"}) == "/s1"
    assert record_state_dir(True, {"STATE_DIRECTORY": "/s1"}) == "/s1"
    assert record_state_dir(True, {}) == DEFAULT_STATE_DIR
    assert record_state_dir(False, {"STATE_DIRECTORY": ""}) is None


PROBE = """
import sys
sys.argv = ["hafailover", "release-vips", "-c", sys.argv[1]]
import hafailover.__main__ as entry
status = entry.release_vips(sys.argv[2:])
heavy = [m for m in ("click", "hafailover.cli", "hafailover.config.schema", "pydantic",
                     "pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack")
         if m in sys.modules]
print(status, heavy)
"""


def test_a_record_is_released_without_the_cli_the_configuration_or_all_of_pyroute2(
    tmp_path: Path,
) -> None:
    # An interface that does not exist: nothing is present, so nothing touches netlink.
    record = {"version": 1, "vips": [{"address": "10.213.0.201/24", "interface": "hfnosuch0"}]}
    (tmp_path / "vips.json").write_text(json.dumps(record))
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [")
    r = python(PROBE, {"STATE_DIRECTORY": str(tmp_path)}, str(broken))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["no recorded VIP was present", "0 []"]


def test_the_short_path_exits_at_once_with_its_output_flushed(tmp_path: Path) -> None:
    """main() ends the process with os._exit: what it printed still arrives (stdout is a pipe
    here, block-buffered, as the journal's stream is)."""
    record = {"version": 1, "vips": [{"address": "10.213.0.201/24", "interface": "hfnosuch0"}]}
    (tmp_path / "vips.json").write_text(json.dumps(record))
    r = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "sys.argv[1:] = ['release-vips', '-c', sys.argv[2]]; "
         "import atexit; atexit.register(print, 'interpreter shutdown'); "
         "import hafailover.__main__ as m; m.main()", str(ROOT), str(tmp_path / "x.yaml")],
        capture_output=True, text=True, timeout=60, env={"STATE_DIRECTORY": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "no recorded VIP was present\n"  # and no shutdown: no atexit handler


@pytest.mark.parametrize(("args", "options"), [
    ([], (DEFAULT_CONFIG, None)),
    (["-c", "/etc/x.yaml"], ("/etc/x.yaml", None)),
    (["--config=x.yaml", "--node", "node1"], ("x.yaml", "node1")),
    (["--node", "node1", "--config", "x.yaml"], ("x.yaml", "node1")),
    (["--node=node2"], (DEFAULT_CONFIG, "node2")),
    (["-c", "a.yaml", "-c", "b.yaml"], None),
    (["--node"], None),
    (["--node", "-c", "x.yaml"], None),
    (["--socket", "s"], None),
    (["--help"], None),
    (["x.yaml"], None),
])
def test_run_takes_the_short_path_only_with_the_options_it_knows(
    args: list[str], options: tuple[str, str | None] | None,
) -> None:
    assert run_options(args) == options


RUN_PROBE = """
import gc, sys
import hafailover.__main__ as entry
status = entry.run(sys.argv[1:])
print(status, "click" in sys.modules, "hafailover.cli" in sys.modules, gc.isenabled())
"""


def test_run_starts_the_daemon_without_the_cli(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("nodes: [")
    r = python(RUN_PROBE, None, "-c", str(broken), "--node", "node1")
    # The daemon's own answer to a broken file: exit 78 (EX_CONFIG), and no click imported.
    # The garbage collector, off while the daemon's modules were imported, is on again.
    assert r.stdout.split() == ["78", "False", "False", "True"], r.stderr
    assert "invalid configuration" in r.stderr
    # A directory for the file: left to click, which says so (exit 2).
    r = subprocess.run([sys.executable, "-m", "hafailover", "run", "-c", str(tmp_path)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "is a directory" in r.stderr, r.stderr


@pytest.mark.parametrize("record", [None, "{not json"])
def test_without_a_usable_record_the_cli_reads_the_configuration(
    tmp_path: Path, record: str | None
) -> None:
    if record is not None:
        (tmp_path / "vips.json").write_text(record)
    r = subprocess.run(
        [sys.executable, "-m", "hafailover", "release-vips", "-c", str(tmp_path / "none.yaml")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(tmp_path)},
    )
    assert r.returncode == 1
    assert "invalid configuration" in r.stderr  # the click command's answer
    assert ("is not a VIP record" in r.stderr) == (record is not None)


LIGHT = """
import sys
from hafailover.net.record import load_async_iproute_only
light = load_async_iproute_only()
from pyroute2 import AsyncIPRoute
loaded = sum(1 for m in sys.modules if m.startswith("pyroute2"))
print(light, AsyncIPRoute.__module__, AsyncIPRoute.__qualname__, loaded,
      "pyroute2.ndb.main" in sys.modules, load_async_iproute_only())
"""


def test_async_iproute_alone_is_the_same_class_with_fewer_modules() -> None:
    light = python(LIGHT)
    assert light.returncode == 0, light.stderr
    ok, module, name, loaded, ndb, again = light.stdout.split()
    assert (ok, ndb, again) == ("True", "False", "False")
    full = python("import sys, pyroute2; from pyroute2 import AsyncIPRoute; "
                  "print(AsyncIPRoute.__module__, AsyncIPRoute.__qualname__, "
                  "sum(1 for m in sys.modules if m.startswith('pyroute2')))")
    assert full.returncode == 0, full.stderr
    f_module, f_name, f_loaded = full.stdout.split()
    assert (module, name) == (f_module, f_name)
    # 99 of 163 modules with pyroute2 0.9.7 (the rest: ndb, ipdb, conntrack, ethtool, ...)
    assert int(loaded) < int(f_loaded) * 0.7, (loaded, f_loaded)
