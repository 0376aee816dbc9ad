"""The performance shortcuts keep behaviour: ``start`` without Typer parses exactly what
it can and leaves the rest to Typer; the children record batches a burst and loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from streamalchemy.client.fastpath import _start_args
from streamalchemy.supervision.procs import RECORD_EVERY, ChildRecord


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
        ["start", "cam", "--url", "--testsrc"],
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
    from test_controller import make_controller, run, saved, spec

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
