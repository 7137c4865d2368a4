"""The Vagrant lab: provision.sh in --dry-run mode, its config and key, and the Vagrantfile.

Nothing here touches 192.168.56.0/24 on this machine: the addresses are only read from files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from hafailover.cli import cli
from hafailover.config import load_config
from hafailover.wire.keys import generate_key, load_key

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
PROVISION = VAGRANT / "provision.sh"
LAB_CONFIG = VAGRANT / "hafailover.yaml"
EXAMPLE = REPO / "etc" / "hafailover" / "hafailover.yaml"
UNIT = REPO / "systemd" / "hafailover.service"
# Commands the dry run must not start.
FORBIDDEN = ("apt-get", "systemctl", "nginx", "ip", "hostname")


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name in FORBIDDEN:
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/forbidden.called\nexit 1\n')
        exe.chmod(0o755)
    return bin_dir


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = tmp_path / "shared.key"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    return key


def provision(
    fake_bin: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(PROVISION), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"},
    )
    if check:
        assert r.returncode == 0, f"provision.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    called = fake_bin.parent / "forbidden.called"
    assert not called.exists(), f"the dry run ran: {called.read_text()}"
    return r


def check_config(path: Path) -> None:
    result = CliRunner().invoke(cli, ["check-config", "--no-host", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


def test_dry_run_writes_a_valid_config_and_a_private_key(
    tmp_path: Path, fake_bin: Path, key_file: Path
) -> None:
    root = tmp_path / "root"
    r = provision(fake_bin, "--root", str(root), "--dry-run", "--node", "node2",
                  "--key", str(key_file))
    assert "would run: systemctl restart hafailover" in r.stdout

    config = root / "etc/hafailover/hafailover.yaml"
    assert config.read_bytes() == LAB_CONFIG.read_bytes()
    check_config(config)

    key = root / "etc/hafailover/cluster.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == key_file.read_bytes()  # the shared key, not a new one
    assert len(load_key(key)) == 32

    page = root / "var/www/hafailover-lab/index.html"
    assert "node2" in page.read_text()
    site = (root / "etc/nginx/sites-available/hafailover-lab").read_text()
    assert "location = /healthz" in site
    assert "root /var/www/hafailover-lab;" in site
    enabled = root / "etc/nginx/sites-enabled/hafailover-lab"
    assert os.readlink(enabled) == "/etc/nginx/sites-available/hafailover-lab"


def test_dry_run_installs_the_debian_package(
    tmp_path: Path, fake_bin: Path, key_file: Path
) -> None:
    deb = tmp_path / "hafailover_9.9_amd64.deb"
    deb.write_bytes(b"")
    r = provision(fake_bin, "--root", str(tmp_path / "root"), "--dry-run", "--node", "node1",
                  "--key", str(key_file), "--deb", str(deb))
    installs = [ln for ln in r.stdout.splitlines() if "would run: apt-get install" in ln]
    assert any(ln.endswith(f" {deb}") and "--force-confold" in ln for ln in installs), r.stdout
    # The package before the restart, and no build from a checkout on the VM.
    out = r.stdout
    assert out.index(str(deb)) < out.index("would run: systemctl restart hafailover")
    assert "dev install" not in PROVISION.read_text()


def test_dry_run_is_idempotent_and_removes_the_default_site(
    tmp_path: Path, fake_bin: Path, key_file: Path
) -> None:
    root = tmp_path / "root"
    default = root / "etc/nginx/sites-enabled/default"
    default.parent.mkdir(parents=True)
    default.symlink_to("/etc/nginx/sites-available/default")
    args = ("--root", str(root), "--dry-run", "--node", "node1", "--key", str(key_file))
    provision(fake_bin, *args)
    provision(fake_bin, *args)
    assert not default.is_symlink()
    assert sorted(p.name for p in default.parent.iterdir()) == ["hafailover-lab"]


def test_unknown_node_and_missing_key_fail_before_writing(
    tmp_path: Path, fake_bin: Path, key_file: Path
) -> None:
    root = tmp_path / "root"
    r = provision(fake_bin, "--root", str(root), "--dry-run", "--node", "node9",
                  "--key", str(key_file), check=False)
    assert r.returncode == 1 and "node9" in r.stderr
    r = provision(fake_bin, "--root", str(root), "--dry-run", "--node", "node1",
                  "--key", str(tmp_path / "absent.key"), check=False)
    assert r.returncode == 1 and "no cluster key" in r.stderr
    assert not (root / "etc").exists()


def test_root_without_dry_run_is_refused(tmp_path: Path, fake_bin: Path, key_file: Path) -> None:
    r = provision(fake_bin, "--root", str(tmp_path / "root"), "--node", "node1",
                  "--key", str(key_file), check=False)
    assert r.returncode == 2 and "--dry-run" in r.stderr


def test_example_config_passes_check_config() -> None:
    check_config(EXAMPLE)


def test_lab_config_fits_the_unit_watchdog() -> None:
    """The lab keeps the default timings, which the unit's WatchdogSec is made for."""
    config = load_config(LAB_CONFIG).config
    match = re.search(r"^WatchdogSec=(\d+)ms$", UNIT.read_text(), re.M)
    assert match is not None
    assert int(match.group(1)) / 1000 < config.cluster.timings.failover_timeout


def parse_vagrantfile() -> tuple[dict[str, str], str]:
    text = (VAGRANT / "Vagrantfile").read_text()
    block = re.search(r"^NODES = \{(.*?)^\}", text, re.M | re.S)
    assert block is not None, "NODES = {...} not found in the Vagrantfile"
    nodes = dict(re.findall(r'"(\w+)"\s*=>\s*"([\d.]+)"', block.group(1)))
    vip = re.search(r'^VIP = "([\d.]+)"', text, re.M)
    assert vip is not None, 'VIP = "..." not found in the Vagrantfile'
    return nodes, vip.group(1)


def test_vagrantfile_matches_the_lab_config() -> None:
    nodes, vip = parse_vagrantfile()
    assert nodes == {
        "node1": "192.168.56.11", "node2": "192.168.56.12", "node3": "192.168.56.13"
    }
    config = load_config(LAB_CONFIG).config
    assert {n.name: str(n.address) for n in config.nodes} == nodes
    assert [(str(v.address), v.interface) for v in config.vips] == [(f"{vip}/24", "eth1")]
    subnet = ipaddress.ip_network(f"{vip}/24", strict=False)
    assert all(ipaddress.ip_address(a) in subnet for a in nodes.values())
    assert [c.name for c in config.checks] == ["nginx"]
    assert config.checks[0].http == "http://127.0.0.1/healthz"


def test_vagrantfile_wiring() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    # The provisioner runs the script from the synced repository, which provision.sh expects.
    assert '"..", "/hafailover"' in text
    assert "/hafailover/vagrant/provision.sh --node #{name}" in text
    assert 'File.join(File.dirname(__FILE__), ".cluster.key")' in text
    ignored = (VAGRANT / ".gitignore").read_text().splitlines()
    assert ".cluster.key" in ignored


def test_script_is_strict_bash() -> None:
    text = PROVISION.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(PROVISION, os.X_OK)
    r = subprocess.run(["bash", "-n", str(PROVISION)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
