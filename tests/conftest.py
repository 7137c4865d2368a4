"""Shared test policy.

Tests marked `netns` need root and network namespaces. On a laptop they skip; under CI=true a
skip of such a test is turned into a failure, so a missing capability can never pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _netns_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2"
    probe = f"hafprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


_NETNS_REASON: str | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _NETNS_REASON
    if item.get_closest_marker("netns") is None:
        return
    if _NETNS_REASON is None:
        _NETNS_REASON = _netns_unavailable()
    if _NETNS_REASON:
        if IN_CI:
            pytest.fail(f"netns test cannot run under CI=true: {_NETNS_REASON}")
        pytest.skip(_NETNS_REASON)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    # Under CI any skip of a netns test is a failure, whoever raised it.
    if IN_CI and report.skipped and item.get_closest_marker("netns") is not None:
        report.outcome = "failed"
        report.longrepr = f"netns test skipped under CI=true: {report.longrepr}"
