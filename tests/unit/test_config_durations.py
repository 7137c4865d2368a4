from __future__ import annotations

import pytest

from hafailover.config.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("0s", 0.0),
        (" 250 ms ", 0.25),
        (".5s", 0.5),
        ("3", 3.0),
        (2, 2.0),
        (0.1, 0.1),
        (0, 0.0),
    ],
)
def test_parses(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "2 sec",
            "'2 sec' is not a duration: write a number with a unit (100ms, 1.5s, 2m, 1h) or a "
            "plain number of seconds (0.1)",
        ),
        (
            "-1s",
            "'-1s' is not a duration (durations cannot be negative): write a number with a unit "
            "(100ms, 1.5s, 2m, 1h) or a plain number of seconds (0.1)",
        ),
        (
            "100MS",
            "'100MS' is not a duration: write a number with a unit (100ms, 1.5s, 2m, 1h) "
            "or a plain number of seconds (0.1)",
        ),
        (-0.5, "-0.5 is negative: a duration must be 0 or more"),
        (
            float("inf"),
            "inf is not a finite duration: write a number with a unit (100ms, 1.5s, "
            "2m, 1h) or a plain number of seconds (0.1)",
        ),
        (
            True,
            "expected a duration, got true: write a number with a unit (100ms, 1.5s, 2m, 1h) "
            "or a plain number of seconds (0.1)",
        ),
    ],
)
def test_rejects_with_a_clear_message(value: str | int | float, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


def test_is_a_value_error() -> None:
    # Callers (and pydantic) catch ValueError.
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.1, "100ms"),
        (0.6, "600ms"),
        (2.0, "2s"),
        (1.5, "1.5s"),
        (30.0, "30s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (0.0, "0s"),
        (90.0, "90s"),
    ],
)
def test_format_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
