"""The package under test, built once per session from this checkout (or HAFAILOVER_DEB)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.systemd.syslab import build_deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [t for t in ("dpkg-deb", "gcc", "pkg-config") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"cannot build the package: {', '.join(missing)} not found (./dev test "
                    "installs them)")
    return build_deb(tmp_path_factory.mktemp("deb"))
