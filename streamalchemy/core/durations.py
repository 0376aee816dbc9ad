"""Stream durations: what ``--duration`` accepts, and the state file's ``duration_hours``.

Everything is seconds inside the program; 0 means unlimited. The state file keeps
hours as a string (``"2"``, ``"1.5"``) because the original StreamAlchemy did.
"""

from __future__ import annotations

import math
import re

from streamalchemy.errors import InvalidInput

MAX_SECONDS = 366 * 24 * 3600.0
FORMS = "0 (unlimited), hours as a number (1.5), or 90m, 2h, 45s, 1h30m"

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_HOURS = re.compile(_NUMBER)
_UNITS = re.compile(rf"(?:({_NUMBER})h)?(?:({_NUMBER})m)?(?:({_NUMBER})s)?")


def _invalid(value: object, why: str = "") -> InvalidInput:
    return InvalidInput(f"invalid duration {value!r}{why}: use {FORMS}")


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds: a bare number is hours, or ``1h30m15s``-style units."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _invalid(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if _HOURS.fullmatch(text):
            seconds = float(text) * 3600
        elif text and (units := _UNITS.fullmatch(text)):
            h, m, s = (float(part or 0) for part in units.groups())
            seconds = h * 3600 + m * 60 + s
        else:
            raise _invalid(value)
    else:
        try:
            seconds = float(value) * 3600
        except OverflowError:
            raise _invalid(value, " (more than 366 days)") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise _invalid(value)
    if seconds > MAX_SECONDS:
        raise _invalid(value, " (more than 366 days)")
    return seconds


def parse_duration_hours(value: object) -> float:
    """Seconds for a saved ``duration_hours``: ``"2"``, ``"1.5"``, a number, or ``""``/None (0)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    if isinstance(value, str | int | float):
        return parse_duration(value)
    raise _invalid(value)


def hours_text(seconds: float) -> str:
    """The ``duration_hours`` text for ``seconds``: ``"1.5"``, ``"2"``, never ``"1.50000001"``."""
    return f"{seconds / 3600:.6f}".rstrip("0").rstrip(".")


def duration_text(seconds: float) -> str:
    """``seconds`` as ``--duration`` takes it back: 2m, 1h30m, 45s, 2h, 1h5s; 0 = unlimited."""
    total = round(seconds)
    if total <= 0:
        return "0"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)
