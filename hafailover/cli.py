"""Placeholder until the CLI lands: keeps the console script importable."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("hafailover: CLI not built yet")
