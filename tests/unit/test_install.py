"""packaging/install.sh (`./dev install`) into a temporary root: files, modes, no overwrites.

Runs with `--root DIR --no-venv`, so nothing outside DIR changes: no venv in /opt, no group on
this host, no systemctl (a fake `systemctl` on PATH fails the test if it is called).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hafailover.wire.keys import load_key

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "packaging" / "install.sh"
UNIT = REPO / "systemd" / "hafailover.service"
EXAMPLE = REPO / "etc" / "hafailover" / "hafailover.yaml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH directory whose systemctl records that it was called (it must not be)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.called\nexit 1\n')
    systemctl.chmod(0o755)
    return bin_dir


def run_install(
    root: Path, fake_bin: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # The venv's bin first: install.sh --no-venv generates the key with the `hafailover` on PATH.
    path = os.pathsep.join([str(fake_bin), str(Path(sys.executable).parent), os.environ["PATH"]])
    r = subprocess.run(
        [str(INSTALL), "--root", str(root), "--no-venv", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": path},
    )
    if check:
        assert r.returncode == 0, f"install.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert not (fake_bin.parent / "systemctl.called").exists(), "systemctl ran under --root"
    return r


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target root with the group files groupadd --prefix edits."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "gshadow").write_text("root:*::\n")
    return root


def test_fresh_install(root: Path, fake_bin: Path) -> None:
    run_install(root, fake_bin)

    unit = root / "etc/systemd/system/hafailover.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert mode(unit) == 0o644

    link = root / "usr/local/bin/hafailover"
    assert link.is_symlink()
    # The same program the unit's ExecStart runs (the link resolves once root is /).
    target = os.readlink(link)
    assert target == "/opt/hafailover/bin/hafailover"
    assert f"ExecStart={target} run " in UNIT.read_text()
    # --no-venv: no venv was created.
    assert not (root / "opt").exists()

    config = root / "etc/hafailover/hafailover.yaml"
    assert config.read_bytes() == EXAMPLE.read_bytes()
    assert mode(config) == 0o644
    assert mode(root / "etc/hafailover") == 0o755

    key = root / "etc/hafailover/cluster.key"
    assert key.is_file() and not key.is_symlink()
    assert mode(key) == 0o600
    assert len(load_key(key)) == 32  # a valid key: what genkey writes

    groups = (root / "etc/group").read_text().splitlines()
    assert [g for g in groups if g.startswith("hafailover:")], groups

    docs = root / "usr/local/share/doc/hafailover"
    assert (docs / "operations.md").read_bytes() == (REPO / "docs/operations.md").read_bytes()
    assert "Documentation=file:///usr/local/share/doc/hafailover/operations.md" in UNIT.read_text()


def test_existing_config_and_key_are_never_overwritten(root: Path, fake_bin: Path) -> None:
    conf_dir = root / "etc/hafailover"
    conf_dir.mkdir(parents=True)
    config = conf_dir / "hafailover.yaml"
    config.write_text("# the operator's own config\n")
    config.chmod(0o640)
    key = conf_dir / "cluster.key"
    key.write_text("operator-key\n")
    key.chmod(0o600)

    r = run_install(root, fake_bin)

    assert config.read_text() == "# the operator's own config\n"
    assert mode(config) == 0o640
    assert key.read_text() == "operator-key\n"
    assert "kept existing" in r.stdout


def test_a_second_run_changes_nothing_it_should_keep(root: Path, fake_bin: Path) -> None:
    run_install(root, fake_bin)
    key = root / "etc/hafailover/cluster.key"
    first_key = key.read_bytes()
    config = root / "etc/hafailover/hafailover.yaml"
    config.write_text("# edited after the first install\n")

    run_install(root, fake_bin)

    assert key.read_bytes() == first_key
    assert mode(key) == 0o600
    assert config.read_text() == "# edited after the first install\n"
    groups = (root / "etc/group").read_text().splitlines()
    assert sum(g.startswith("hafailover:") for g in groups) == 1
    assert os.readlink(root / "usr/local/bin/hafailover") == "/opt/hafailover/bin/hafailover"


def test_the_unit_is_replaced_on_upgrade(root: Path, fake_bin: Path) -> None:
    unit = root / "etc/systemd/system/hafailover.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/old\n")
    run_install(root, fake_bin)
    assert unit.read_bytes() == UNIT.read_bytes()


def test_a_root_without_group_file_skips_the_group(tmp_path: Path, fake_bin: Path) -> None:
    root = tmp_path / "bare"
    r = run_install(root, fake_bin)
    assert "not creating group hafailover" in r.stdout
    assert not (root / "etc/group").exists()


def test_unknown_option_is_a_usage_error(root: Path, fake_bin: Path) -> None:
    r = run_install(root, fake_bin, "--frobnicate", check=False)
    assert r.returncode == 2
    assert "unknown option --frobnicate" in r.stderr
    assert "--root DIR" in r.stderr  # the usage text
    assert not (root / "etc/hafailover").exists()


def test_script_is_strict_bash() -> None:
    text = INSTALL.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(INSTALL, os.X_OK)
    r = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
