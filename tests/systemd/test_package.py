"""The built package itself: lintian, its contents and control data (no containers needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd.syslab import figure

pytestmark = [pytest.mark.netns]  # root-only tooling; under CI=true a skip is a failure


def contents(deb: Path) -> dict[str, str]:
    """path -> mode string, for every entry of the data archive."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         check=True).stdout
    entries: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        path = parts[5].removeprefix(".")
        entries[path.rstrip("/") or "/"] = parts[0]
    return entries


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_lintian_is_clean(deb: Path) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian not found (./dev test installs it)")
    r = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                       capture_output=True, text=True, timeout=600)
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:", "I:")]
    assert r.returncode == 0 and not tags, "\n".join(tags) or r.stderr


def test_size_and_layout(deb: Path) -> None:
    figure("deb_size", deb.stat().st_size / 1e6, "MB")
    figure("installed_size", int(field(deb, "Installed-Size")) / 1024, "MB")
    files = contents(deb)
    assert files["/usr/bin/hafailover"].startswith("l")
    assert "/opt/hafailover/bin/hafailover" in files
    assert "/lib/systemd/system/hafailover.service" in files
    assert "/usr/lib/sysusers.d/hafailover.conf" in files
    assert "/usr/share/doc/hafailover/operations.md" in files
    assert "/usr/share/doc/hafailover/copyright" in files
    # Nothing under /etc but the example config; nothing in /usr/local; no key.
    etc = sorted(p for p in files if p.startswith("/etc/") and not files[p].startswith("d"))
    assert etc == ["/etc/hafailover/hafailover.yaml"]
    assert not [p for p in files if p.startswith("/usr/local")]
    assert not [p for p in files if p.endswith(".key")]
    # The runtime carries only the hafailover command, not its libraries' tools or pip.
    bins = sorted(p.rsplit("/", 1)[1] for p in files
                  if p.startswith("/opt/hafailover/bin/") and files[p].startswith("-"))
    assert bins == ["hafailover"]
    assert not [p for p in files if "/site-packages/pip/" in p]


def test_control_data(deb: Path) -> None:
    assert field(deb, "Package") == "hafailover"
    depends = field(deb, "Depends")
    for dep in ("python3 (>= 3.11~)", "python3 (<< 3.12)", "systemd", "procps", "libsystemd0"):
        assert dep in depends, depends
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                               check=True).stdout
    assert b"./conffiles" in conffiles
    r = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True,
                       check=True)
    assert r.stdout.split() == ["/etc/hafailover/hafailover.yaml"]
