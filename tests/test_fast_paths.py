"""The performance shortcuts keep behaviour: ``start`` without Typer parses exactly what
it can and leaves the rest to Typer; the children record batches a burst and loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from streamalchemy.cli import app
from streamalchemy.client import commands, report
from streamalchemy.client.fastpath import _start_args
from streamalchemy.core.options import START, StartOption
from streamalchemy.supervision.procs import RECORD_EVERY, ChildRecord

# -- the fast path parses every start line exactly as Typer does ---------------------
# The lines are generated from the option table (``options.START``): every option, in
# both spellings (--k=v, --k v), with values it takes and values it refuses, repeated,
# misspelt, in any order.


class Parsed(Exception):
    """Raised from inside Typer's start command with what it parsed."""


def typer_parse(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any] | None:
    """What Typer's ``start`` hands to ``commands.start_body``, with --json; None: refused."""
    seen: dict[str, Any] = {}

    def emit(as_json: bool, action: Callable[[], Any], show: Callable[[Any], None]) -> None:
        seen["json"] = as_json
        action()

    def start_body(name: str, **kwargs: Any) -> dict[str, Any]:
        raise Parsed({"name": name, **kwargs})

    with monkeypatch.context() as patch:
        patch.setattr(report, "emit", emit)
        patch.setattr(commands, "start_body", start_body)
        result = CliRunner().invoke(app, args)
    if isinstance(result.exception, Parsed):
        return {**result.exception.args[0], **seen}
    assert result.exit_code != 0, result.output  # never started without reaching the body
    return None


def as_typer_would(parsed: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The fast path's result in the form Typer hands on: every option, defaults filled."""
    name, opts = parsed
    doc: dict[str, Any] = {o.name: opts.get(o.name, False if o.flag else None) for o in START}
    return {"name": name, **doc, "json": opts.get("json", False)}


def good_values(option: StartOption) -> st.SearchStrategy[str]:
    if option.choices:
        return st.sampled_from(option.choices)
    if option.integer:
        return st.integers(-(10**9) + 1, 10**9 - 1).map(str)
    if option.name == "fps":
        return st.one_of(st.just("source"), st.integers(1, 120).map(str))
    if option.name == "duration":
        return st.sampled_from(["0", "1.5", "90m", "2h", "45s", "1h30m"])
    return st.sampled_from(["/v/a.mp4", "rtsp://h/x", "null", "hls", "clip.mp4", "a b"])


def any_values(option: StartOption) -> st.SearchStrategy[str]:
    junk = st.text(alphabet="-=0123456789ab.x /", max_size=6)
    return st.one_of(good_values(option), junk, st.sampled_from(["", "-", "--testsrc", "1_0"]))


def tokens(option: StartOption, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    key = f"--{option.name}"
    if option.flag:
        return st.sampled_from([[key], [key], [f"{key}=yes"]])
    return st.one_of(values.map(lambda v: [f"{key}={v}"]), values.map(lambda v: [key, v]))


def start_line(valid: bool) -> st.SearchStrategy[list[str]]:
    """``start`` with a name and options drawn from the table; ``valid``: one of each at most,
    values it takes, exactly one name; else anything the table's options make."""
    if valid:
        chosen = st.lists(st.sampled_from(START), unique_by=lambda o: o.name, max_size=len(START))
        parts = chosen.flatmap(
            lambda opts: st.tuples(
                *[tokens(o, good_values(o)).filter(lambda t: "=yes" not in t[0]) for o in opts]
            )
        )
        names: st.SearchStrategy[list[list[str]]] = st.just([["cam"]])
        extra = st.sampled_from([[], [["--json"]]])
    else:
        parts = st.lists(
            st.sampled_from(START).flatmap(lambda o: tokens(o, any_values(o))), max_size=6
        ).map(tuple)
        names = st.lists(st.sampled_from([["cam"], ["x-1"], ["-h"], ["--"]]), max_size=2)
        extra = st.lists(st.sampled_from([["--json"], ["--bogus"], ["--help"]]), max_size=2)
    return st.tuples(parts, names, extra).flatmap(
        lambda p: st.permutations([*p[0], *p[1], *p[2]]).map(
            lambda groups: ["start", *[t for g in groups for t in g]]
        )
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args=start_line(valid=True))
def test_every_valid_start_line_takes_the_fast_path_as_typer_parses_it(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = _start_args(args)
    assert parsed is not None, args
    assert as_typer_would(parsed) == typer_parse(args, monkeypatch)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args=start_line(valid=False))
def test_a_start_line_the_fast_path_takes_is_one_typer_parses_the_same(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = _start_args(args)
    if parsed is not None:  # None: left to Typer, which parses or refuses it itself
        assert as_typer_would(parsed) == typer_parse(args, monkeypatch)


def test_typer_and_the_fast_path_know_the_same_start_options() -> None:
    command = typer.main.get_command(app).commands["start"]  # type: ignore[attr-defined]
    declared = {p.name for p in command.params} - {"name", "as_json"}
    assert declared == {o.name for o in START}


def test_a_plain_start_is_parsed_as_typer_would() -> None:
    args = ["start", "cam", "--file=/v.mp4", "--codec", "copy", "--priority", "5", "--json"]
    assert _start_args(args) == (
        "cam",
        {"file": "/v.mp4", "codec": "copy", "priority": 5, "json": True},
    )
    assert _start_args(["start", "--testsrc", "cam", "--replace"]) == (
        "cam",
        {"testsrc": True, "replace": True},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--help"],
        ["start", "cam", "-h"],
        ["start"],
        ["start", "a", "b", "--testsrc"],
        ["start", "cam", "--testsrc", "--testsrc"],
        ["start", "cam", "--codec", "vp9", "--testsrc"],
        ["start", "cam", "--fps", "500", "--testsrc"],
        ["start", "cam", "--duration", "3x", "--testsrc"],
        ["start", "cam", "--priority", "high", "--testsrc"],
        ["start", "cam", "--file"],
        ["start", "cam", "--testsrc=yes"],
        ["start", "cam", "--bogus", "1"],
        ["start", "cam", "--", "--testsrc"],
        ["list", "--json"],
    ],
)
def test_anything_else_is_left_to_typer(args: list[str]) -> None:
    assert _start_args(args) is None


def test_the_children_record_batches_a_burst_and_flushes_it(tmp_path: Path) -> None:
    path = tmp_path / "children.json"
    record = ChildRecord(path)
    me = os.getpid()

    def on_disk() -> set[str]:
        return set(json.loads(path.read_text())["children"]) if path.exists() else set()

    async def burst() -> tuple[set[str], set[str]]:
        record.add("a", me, ["ffmpeg", "-i", "a"])  # written at once, by a worker thread
        await asyncio.sleep(0.2)
        first = on_disk()
        record.add("b", me, ["ffmpeg", "-i", "b"])  # within RECORD_EVERY: batched
        record.add("c", me, ["ffmpeg", "-i", "c"])
        await asyncio.sleep(0.2)
        batched = on_disk()
        await asyncio.sleep(RECORD_EVERY)
        return first, batched

    first, batched = asyncio.run(burst())
    assert first == batched == {"a"}
    assert on_disk() == {"a", "b", "c"}  # the due write carried both

    async def flushed() -> None:
        record.discard("a")  # the last write was just now: batched
        record.flush()  # on disk before it returns
        assert on_disk() == {"b", "c"}

    asyncio.run(flushed())
    record.discard("b")  # no loop running: written at once
    assert on_disk() == {"c"}


def test_a_file_that_fails_the_probe_fails_the_start_and_never_stops_a_replaced_one(
    tmp_path: Path,
) -> None:
    from fakes import make_controller, run, saved, spec

    from streamalchemy.errors import InvalidInput

    c, fake = make_controller(tmp_path)

    def refused(spec: object, ffprobe: str) -> None:
        time.sleep(0.05)  # the probe runs while FFmpeg starts
        raise InvalidInput("source file '/x.mp4' is not a playable video: no video stream")

    try:
        run(c.start_spec(spec("old")))
        c.check_source = refused
        with pytest.raises(InvalidInput, match="not a playable video"):
            run(c.start_spec(spec("new")))
        assert fake.running() == {"old"} and saved(tmp_path) == {"old"}
        with pytest.raises(InvalidInput, match="not a playable video"):
            run(c.start_spec(spec("old"), replace=True))
        assert fake.launched.count("old") == 1 and fake.running() == {"old"}
    finally:
        c.writer.close()
