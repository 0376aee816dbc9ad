"""The JSON body each control route takes: its fields and their types, as one table.

Checked before a handler runs, so that a wrong type is a 400 and never a different
action (``"dry_run": "true"`` is not a real restore, ``{"all": "yes"}`` is not a
silent no-op) and a route that takes no body refuses one. The two routes whose
bodies are whole documents (a start's options, an apply's streams) are validated
by their own readers (``core.spec``, ``apply.applier``); the HTTP layer has already
bounded every body's size, strings and nesting. Nothing here routes or acts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streamalchemy.errors import InvalidInput

Check = Callable[[Any], bool]


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) for n in value)


_WORDS: dict[Check, str] = {_boolean: "true or false", _names: "a list of stream names"}

# (method, path pattern) -> the fields of its body; None: the handler reads the whole
# document itself. A route missing here takes no body.
BODIES: dict[tuple[str, str], dict[str, Check] | None] = {
    ("POST", "/streams"): None,  # core.spec.spec_from_request
    ("POST", "/apply"): None,  # apply.applier.request_options
    ("POST", "/stop"): {"names": _names, "all": _boolean},
    ("POST", "/restore_streams"): {"dry_run": _boolean},
}


def check_body(method: str, pattern: str, body: Mapping[str, Any]) -> None:
    """Refuse a field the route does not take, or one of the wrong type (InvalidInput)."""
    fields = BODIES.get((method, pattern), {})
    if fields is None:
        return
    for key, value in body.items():
        check = fields.get(key)
        if check is None:
            known = ", ".join(sorted(fields)) or "nothing"
            raise InvalidInput(f"{method} {pattern} takes no field {key[:40]!r} (it takes {known})")
        if not check(value):
            raise InvalidInput(f"{key} must be {_WORDS[check]}")
