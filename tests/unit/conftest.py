"""Fixtures shared by the unit tests: the metrics endpoint on a settable clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hafailover.runtime.metrics import MetricsServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[MetricsServer]:
    metrics = MetricsServer(version="9.9.9", clock=clock)
    metrics.start(("127.0.0.1", 0))
    try:
        yield metrics
    finally:
        metrics.stop()
