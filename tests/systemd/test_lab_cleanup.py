"""The systemd lab leaves nothing behind, even when the code using it fails."""

from __future__ import annotations

import os
import subprocess

import pytest

from lab import nspawn

pytestmark = [pytest.mark.netns]


def test_containers_namespaces_and_mounts_are_gone_after_a_failure() -> None:
    seen: dict[str, object] = {}
    with pytest.raises(RuntimeError, match="the test failed"), nspawn.SystemdLab(["solo"]) as lab:
        lab.boot("solo")
        c = lab.containers["solo"]
        assert c.popen is not None
        seen.update(nspawn=c.popen.pid, init=lab.pid("solo"), root=str(c.root),
                    namespaces=list(lab.lab.namespaces))
        r = lab.exec("solo", ["systemctl", "is-system-running"], check=False)
        assert r.stdout.strip() in ("running", "degraded")
        # The container is on the lab's network only: its address, no default route.
        routes = lab.exec("solo", ["ip", "-4", "route"]).stdout
        assert "default" not in routes and "10.213.0.0/24" in routes
        raise RuntimeError("the test failed")
    for key in ("nspawn", "init"):
        pid = seen[key]
        assert isinstance(pid, int)
        assert not os.path.exists(f"/proc/{pid}"), f"{key} process {pid} still runs"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    namespaces = seen["namespaces"]
    assert isinstance(namespaces, list)
    assert not [ns for ns in namespaces if ns in netns.split()]
    with open("/proc/self/mounts") as f:
        assert str(seen["root"]) not in f.read()
