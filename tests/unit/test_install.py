"""The Debian package's recipe (packaging/), checked without building it.

Building and installing the real package, lintian, and the maintainer scripts under a running
systemd are in tests/systemd/ (they need root, mmdebstrap and systemd-nspawn).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hafailover.config.schema import Config

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
BUILD = PACKAGING / "build-deb.sh"
DEBIAN = PACKAGING / "debian"
UNIT = REPO / "systemd" / "hafailover.service"


def control_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (DEBIAN / "control.in").read_text().splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_build_script_is_strict_bash() -> None:
    text = BUILD.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(BUILD, os.X_OK)
    r = subprocess.run(["bash", "-n", str(BUILD)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_strict_posix_sh(script: str) -> None:
    path = DEBIAN / script
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text
    assert text.rstrip().endswith("exit 0")
    assert os.access(path, os.X_OK)
    # dash is /bin/sh on Debian: no bashisms.
    r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_example_config_is_the_only_conffile() -> None:
    conffiles = (DEBIAN / "conffiles").read_text().split()
    assert conffiles == ["/etc/hafailover/hafailover.yaml"]
    # build-deb installs exactly that file from the checkout's example, and nothing else in /etc.
    build = BUILD.read_text()
    assert re.findall(r'"\$STAGE(/etc/[^"]*)"', build) == ["/etc/hafailover/hafailover.yaml"]


def test_the_group_agrees_with_the_unit_and_the_config() -> None:
    lines = [ln.split() for ln in (PACKAGING / "sysusers.conf").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == [["g", "hafailover", "-"]]
    assert re.search(r"^Group=hafailover$", UNIT.read_text(), re.M)
    assert Config.model_fields["control_group"].default == "hafailover"
    assert "systemd-sysusers hafailover.conf" in (DEBIAN / "postinst").read_text()


def test_depends_on_what_the_unit_and_scripts_run() -> None:
    depends = control_fields()["Depends"]
    names = {d.split()[0] for d in depends.split(",")}
    # python3: the venv's interpreter, pinned to the minor version the venv was built for.
    assert "python3 (>= 3.11~)" in depends and "python3 (<< 3.12)" in depends
    # systemd: systemctl, systemd-sysusers; init-system-helpers: deb-systemd-helper/-invoke;
    # procps: ExecReload's /bin/kill.
    assert {"systemd", "init-system-helpers", "procps"} <= names
    scripts = "".join((DEBIAN / s).read_text() for s in ("postinst", "prerm", "postrm"))
    assert "deb-systemd-invoke" in scripts and "deb-systemd-helper" in scripts


def test_remove_keeps_and_purge_deletes_config_and_state() -> None:
    postrm = (DEBIAN / "postrm").read_text()
    purge = postrm[postrm.index("if [ \"$1\" = purge ]"):]
    assert "rm -rf /etc/hafailover /var/lib/hafailover" in purge
    assert postrm.count("rm -rf") == 1
    # An upgrade stops the daemon (its graceful handover) before the files change.
    prerm = (DEBIAN / "prerm").read_text()
    assert re.search(r'\[ "\$1" = upgrade \]', prerm)
    assert "deb-systemd-invoke stop hafailover.service" in prerm


def test_every_lintian_override_has_a_reason() -> None:
    lines = (DEBIAN / "lintian-overrides").read_text().splitlines()
    reason = ""
    for line in lines:
        if line.startswith("# "):
            reason = line
        elif line.startswith("hafailover:"):
            assert reason, f"no reason above: {line}"  # one comment may cover a group
        else:
            assert not line.strip(), f"unexpected line: {line}"
            reason = ""
    assert reason, "no overrides?"
