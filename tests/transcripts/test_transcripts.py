"""Transcript tests: every tests/transcripts/*.txt is run and must print what is checked in.

After an intended change of behaviour, regenerate the expected output and read the diff:
    REWRITE=1 .venv/bin/python -m pytest -q tests/transcripts
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.transcripts.driver import render, run_script

HERE = Path(__file__).parent
SCRIPTS = sorted(HERE.glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert len(SCRIPTS) >= 9


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_transcript(path: Path) -> None:
    text = path.read_text()
    blocks, outputs = run_script(text)
    actual = render(blocks, outputs)
    if os.environ.get("REWRITE") == "1":
        path.write_text(actual)
        return
    if actual != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"{path.name} (checked in)",
                f"{path.name} (the core now)",
            )
        )
        pytest.fail(f"transcript differs (REWRITE=1 to accept):\n{diff}")
