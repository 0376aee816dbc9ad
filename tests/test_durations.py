"""Durations as ``--duration`` takes them and as the state file keeps them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamalchemy.core.durations import (
    MAX_SECONDS,
    duration_text,
    hours_text,
    parse_duration,
    parse_duration_hours,
)
from streamalchemy.errors import InvalidInput


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        ("0", 0.0),
        (1.5, 5400.0),
        ("1.5", 5400.0),
        ("2", 7200.0),
        (".5", 1800.0),
        ("90m", 5400.0),
        ("2h", 7200.0),
        ("45s", 45.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("  2H30M ", 9000.0),
        ("1.5h", 5400.0),
        ("8784h", MAX_SECONDS),
    ],
)
def test_parse_duration_accepts_the_contract_forms(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["", "  ", "-1", -1, "abc", "1x", "h", "30m1h", "1h 30m", "nan", "inf", math.nan, math.inf,
     "1e3", "8785h", 8785, 10**400, True, None, [1]],
)  # fmt: skip
def test_parse_duration_rejects_bad_values_naming_them(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(value)  # type: ignore[arg-type]
    message = str(caught.value)
    assert repr(value) in message and "90m" in message and "\n" not in message


@pytest.mark.parametrize(
    ("saved", "seconds"),
    [
        ("2", 7200.0),
        ("0", 0.0),
        ("1.5", 5400.0),
        ("", 0.0),
        (None, 0.0),
        (3, 10800.0),
        (0.5, 1800.0),
    ],
)
def test_parse_duration_hours_reads_what_the_original_app_wrote(
    saved: object, seconds: float
) -> None:
    assert parse_duration_hours(saved) == seconds


@pytest.mark.parametrize("saved", ["two", "-1", {"h": 1}, [2], False])
def test_parse_duration_hours_rejects_garbage(saved: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration_hours(saved)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (5400, "1.5"), (7200, "2"), (45, "0.0125"), (5400.0000036, "1.5"), (60, "0.016667")],
)
def test_hours_text_has_no_float_noise(seconds: float, text: str) -> None:
    assert hours_text(seconds) == text


@given(st.integers(min_value=0, max_value=int(MAX_SECONDS)))
def test_hours_text_round_trips_within_two_milliseconds(seconds: int) -> None:
    # Six decimals of an hour are 3.6 ms apart: a restored stream ends at most 1.8 ms off.
    assert abs(parse_duration_hours(hours_text(seconds)) - seconds) <= 0.0018


@given(st.integers(0, 8783), st.integers(0, 59), st.integers(0, 59))
def test_unit_forms_agree_with_their_arithmetic(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


def test_duration_text_round_trips_what_was_given() -> None:
    cases = [("2m", "2m"), ("90m", "1h30m"), ("2h", "2h"), ("45s", "45s")]
    cases += [("1h30m", "1h30m"), ("1.5", "1h30m"), ("3605s", "1h5s"), ("0", "0")]
    for typed, shown in cases:
        seconds = parse_duration(typed)
        # Through the state file's 6-decimal hours and back, as a restore reads it.
        again = round(parse_duration_hours(hours_text(seconds)))
        assert duration_text(again) == shown
        assert parse_duration(duration_text(again)) == seconds
