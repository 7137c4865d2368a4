"""`hafailover run` refuses, before touching the network, what this runtime cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    key = tmp_path / "cluster.key"
    key.write_text("k" * 44 + "\n")
    key.chmod(0o600)
    config = tmp_path / "hafailover.yaml"
    config.write_text(
        "cluster:\n  name: lab\n"
        f"  key_file: {key}\n"
        + body
        + "nodes:\n"
        "  - {name: node1, address: 10.213.0.11, priority: 150}\n"
        "  - {name: node2, address: 10.213.0.12, priority: 100}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"control_socket: {tmp_path / 'control.sock'}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "hafailover", "run", "-c", str(config), "--node", "node1"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_lifetime_too_short_for_the_lease_is_refused_with_exit_78(tmp_path: Path) -> None:
    r = run(tmp_path, "  failover_timeout: 2s\n  vip_lifetime: 2s\n"
                      "vips:\n  - {address: 10.213.0.100/24, interface: eth0}\n")
    assert r.returncode == 78, r.stderr
    assert "vip_lifetime (2s) is too short" in r.stderr and "3s or more" in r.stderr
