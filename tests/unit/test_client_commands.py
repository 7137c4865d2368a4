"""Operator commands through the CLI: exit 0 only once the daemon reports them carried out.

A real ControlServer on a real Unix socket (its own thread and loop) with a handler that answers
a command as told: accepted, refused, or never (the outcome stays unknown).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hafailover.cli import cli
from hafailover.control import client
from hafailover.control.protocol import Request
from hafailover.control.server import ControlServer


class Handler:
    def __init__(self) -> None:
        self.answer: dict[str, object] | None = None  # None: never answer

    async def handle(self, request: Request) -> dict[str, object]:
        if self.answer is None:
            await asyncio.Event().wait()
        assert self.answer is not None
        return self.answer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Handler]]:
    path = tmp_path / "control.sock"
    handler = Handler()
    loop = asyncio.new_event_loop()
    server = ControlServer(path, None, handler)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    try:
        yield path, handler
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def maintenance(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--socket", str(path), "maintenance", "on", "--node", "b"])
    return result.exit_code, result.output + result.stderr


def test_accepted_is_exit_0(served: tuple[Path, Handler]) -> None:
    path, handler = served
    handler.answer = {"accepted": True, "reason": "accepted", "detail": "b"}
    code, out = maintenance(path)
    assert code == 0 and "accepted" in out


def test_no_answer_from_the_node_asked_is_exit_1(served: tuple[Path, Handler]) -> None:
    path, handler = served
    handler.answer = {"accepted": False, "reason": "command-timeout",
                      "detail": "no answer from b"}
    code, out = maintenance(path)
    assert code == 1 and "command-timeout" in out and "no answer from b" in out


def test_no_outcome_at_all_is_exit_1_not_unreachable(
    served: tuple[Path, Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = served  # the handler never answers
    monkeypatch.setattr(client, "COMMAND_TIMEOUT", 0.3)
    code, out = maintenance(path)
    assert code == 1, out  # not 3: the daemon is there, the outcome is unknown
    assert "no outcome for the maintenance request within 0.3s" in out
