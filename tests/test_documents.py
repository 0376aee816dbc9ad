"""Every ``--json`` output matches its TypedDict of core/documents.py: the real daemon and
FFmpeg, each command as a user runs it, each document checked key by key and type by type
(no key missing, none unknown)."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

import pytest

from conftest import Daemon, cli_json, wait_for
from streamalchemy.core import documents as d

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel


def mismatches(value: Any, kind: Any, where: str = "$") -> list[str]:
    """Where ``value`` does not fit the type ``kind``; empty when it fits."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Required, NotRequired):
        return mismatches(value, args[0], where)
    if kind is Any or kind is object:
        return []
    if origin in (Union, types.UnionType):
        fits = [mismatches(value, k, where) for k in args]
        return [] if any(not f for f in fits) else [f"{where}: {value!r} is none of {kind}"]
    if origin is Literal:
        return [] if value in args else [f"{where}: {value!r} not in {args}"]
    if kind is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if typing.is_typeddict(kind):
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        # With postponed annotations, 3.11's __required_keys__ misses NotRequired: ask the hints.
        hints = typing.get_type_hints(kind, include_extras=True)
        required = [k for k, h in hints.items() if get_origin(h) is not NotRequired]
        found = [f"{where}.{k}: missing" for k in required if k not in value]
        found += [f"{where}.{k}: unknown key" for k in value if k not in hints]
        for key in hints.keys() & value.keys():
            found += mismatches(value[key], hints[key], f"{where}.{key}")
        return found
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [m for i, v in enumerate(value) for m in mismatches(v, args[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        return [m for k, v in value.items() for m in mismatches(v, args[1], f"{where}.{k}")]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a number"]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {value!r} is not a whole number"]
    return [] if isinstance(value, kind) else [f"{where}: {value!r} is not {kind.__name__}"]


def test_the_checker_finds_a_missing_an_unknown_and_a_mistyped_key() -> None:
    doc = {"success": True, "name": "a", "path": "/p", "lines": ["x", 3], "extra": 1}
    assert mismatches(doc, d.LogsResult) == [
        "$.offset: missing",
        "$.extra: unknown key",
        "$.lines[1]: 3 is not str",
    ]


def check(args: list[str], kind: Any, code: int = 0) -> dict[str, Any]:
    got, doc = cli_json(*args)
    assert got == code, doc
    assert mismatches(doc, kind) == [], (args, doc)
    return doc


@pytest.mark.e2e
def test_every_json_output_matches_its_typeddict(tmp_home: Path) -> None:
    daemon = Daemon(tmp_home)
    try:
        pattern = ["--testsrc", "--resolution", "480", "--fps", "5", "--output", "null"]
        check(["start", "cam", *pattern, "--duration", "1h"], d.StartResult)
        check(["start", "rec", *pattern, "--output", str(tmp_home / "rec.ts")], d.StartResult)
        check(["list"], d.ListResult)
        check(["show", "cam"], d.ShowResult)
        check(["saved"], d.SavedResult)
        check(["daemon", "status"], d.StatusResult)
        check(["encoders"], d.EncodersResult)
        wait_for(lambda: check(["logs", "cam"], d.LogsResult)["lines"], 20, "a log line")
        check(["restart", "cam"], d.RestartResult)
        check(["restore", "--dry-run"], d.RestoreResult)
        check(["restore"], d.RestoreResult)
        check(["stop", "rec"], d.StopResult)
        check(["stop", "nobody"], d.Failure, code=4)
        check(["show", "nobody"], d.Failure, code=4)
        check(["daemon", "stop"], d.MessageResult)
        check(["show", "cam"], d.ShowResult)  # the daemon down: from the state file
        check(["clear", "--yes"], d.MessageResult)
    finally:
        daemon.stop()
