"""What may name a stream: the one rule, light enough for the CLI's fast path."""

from __future__ import annotations

import re

from streamalchemy.errors import InvalidInput

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_name(name: object) -> str:
    """Return ``name`` if it can name a stream (and a file, and a URL path), else refuse it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid stream name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def is_valid_name(name: object) -> bool:
    """Whether ``name`` can name a stream (a state file may hold anything)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None
