"""Hostile apply files and the watch of ``daemon run --apply``: in-process, no daemon.

The loader refuses what is not a regular file, reads at most its limit, and answers
every malformed file with one InvalidInput line; the watch applies only a file that
read the same at two looks, holds a prune to most of its streams, and backs off.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamalchemy.apply import applier, declarative
from streamalchemy.apply.declarative import parse, plan
from streamalchemy.core.saved import to_config
from streamalchemy.core.spec import StreamSpec
from streamalchemy.errors import InvalidInput
from streamalchemy.persist import new_entry


def patterns(*names: str) -> str:
    return "".join(f"[streams.{n}]\ntestsrc = true\n" for n in names)


def one_line_error(path: Path) -> str:
    with pytest.raises(InvalidInput) as err:
        declarative.load_file(path)
    message = str(err.value)
    assert "\n" not in message and message
    return message


# -- the loader -----------------------------------------------------------------------


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "streams.toml"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[str] = []

    def load() -> None:
        result.append(one_line_error(fifo))
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(10), "the loader blocked on a FIFO"
    assert "not a regular file" in result[0]


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_devices_and_directories_are_refused(path: str) -> None:
    assert "not a regular file" in one_line_error(Path(path))


def test_a_file_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(declarative.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    assert "larger than" in one_line_error(big)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "nested too deeply"),
        ("[streams.c]\nurl = 'rtsp://[::1/x'\n", "line 2: stream 'c', key 'url'"),
        ("[streams.c]\nurl = 'rtsp://h:99999/x'\n", "Port out of range"),
        ("[streams.c]\nurl = 'rtsp://h:port/x'\n", "key 'url'"),
        ("[streams.c]\ntestsrc = true\noutput = 'rtmp://[zz/live'\n", "key 'output'"),
    ],
)
def test_hostile_content_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert needle in one_line_error(path)


def test_bytes_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"[streams.a]\ntestsrc = true\n# \xff\xfe\n")
    assert "not UTF-8" in one_line_error(path)


TOML_PIECES = st.sampled_from(
    [
        "[streams.a]\n", "[streams.'b c']\n", "[[streams]]\n", "[streams]\n", "streams = 3\n",
        "testsrc = true\n", "file = '/nope.mp4'\n", "url = 'rtsp://[::1/x'\n",
        "url = 'rtsp://h:0/x'\n", "url = 'rtsp://${A}:${B}@h/x'\n", "output = 'hls'\n",
        "output = 'rtsp://h:70000/x'\n", "duration = -1\n", "duration = 1e400\n",
        "fps = [1, 2]\n", "fps = {a = 1}\n", "resolution = 1979-05-27T07:32:00Z\n",
        "priority = 99999999999999999999\n", "restart = ''\n", "codec = 'copy'\n",
        "x = [[[[[[]]]]]]\n", "\"\\u0000\" = 1\n", "= 1\n", "a.b.c = 'd'\n", "\x00", "\ufeff",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOML_PIECES | st.text(max_size=40), max_size=12))
def test_fuzzed_files_are_specs_or_one_line(pieces: list[str]) -> None:
    """Whatever the file holds: specs, or one InvalidInput line; never another exception."""
    try:
        specs = parse("".join(pieces), origin="f.toml")
    except InvalidInput as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.toml: ")
    else:
        assert all(isinstance(s, StreamSpec) for s in specs.values())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_are_specs_or_one_line(data: bytes) -> None:
    try:
        declarative.load_bytes(data, Path("/tmp/f.toml"))
    except InvalidInput as exc:
        assert "\n" not in str(exc)


# -- apply semantics --------------------------------------------------------------------


def test_a_saved_stream_that_does_not_run_is_started_again() -> None:
    specs = parse(patterns("a", "b"))
    saved = {n: new_entry(to_config(s), 1000.0) for n, s in specs.items()}
    current = declarative.current_specs(saved, {"a": specs["a"]})
    steps = {s.name: s for s in plan(specs, current, not_running={"b"})}
    assert steps["a"].action == "unchanged"
    assert (steps["b"].action, steps["b"].changes) == ("update", {})
    assert "not running" in steps["b"].reason


# -- the watch ----------------------------------------------------------------------------


class Recorder:
    """An apply function that plans against ``current`` and carries nothing out."""

    def __init__(self) -> None:
        self.current: dict[str, StreamSpec] = {}
        self.seen: list[tuple[set[str], dict[str, str]]] = []

    async def __call__(
        self, desired: dict[str, StreamSpec], before: set[str], held: dict[str, str]
    ) -> dict[str, Any]:
        self.seen.append((set(desired), held))
        steps = plan(desired, self.current, prune=True, prune_only=before, held=held)
        for step in steps:
            step.result = "planned" if step.held else "done"
            if step.action == "delete" and not step.held:
                del self.current[step.name]
            elif step.spec is not None:
                self.current[step.name] = step.spec
        return declarative.document(steps, False)


def watch_of(tmp_path: Path, text: str, now: list[float]) -> tuple[applier.FileApplier, Recorder]:
    path = tmp_path / "s.toml"
    path.write_text(text)
    fn = Recorder()
    record = applier.AppliedRecord(tmp_path / "applied.json")
    return applier.FileApplier(path, record, fn, clock=lambda: now[0]), fn


def test_a_file_is_applied_only_once_two_looks_agree(tmp_path: Path) -> None:
    now = [0.0]
    names = [f"cam{i}" for i in range(5)]
    watch, fn = watch_of(tmp_path, patterns(*names), now)

    async def scenario() -> None:
        assert await watch.apply_now() is None
        assert await watch.apply_now() is not None
        # Rewritten in place, a table at a time: no half of it is ever applied.
        with watch.path.open("w") as f:
            for name in names:
                f.write(patterns(name))
                f.flush()
                now[0] += 1
                assert await watch.apply_now() is None
        assert await watch.apply_now() is not None

    asyncio.run(scenario())
    assert [desired for desired, _ in fn.seen] == [set(names), set(names)]


def test_a_file_that_lost_most_streams_prunes_only_once_it_stays_so(tmp_path: Path) -> None:
    now = [0.0]
    watch, fn = watch_of(tmp_path, patterns("a", "b", "c"), now)

    async def scenario() -> None:
        await watch.apply_now()
        await watch.apply_now()
        watch.path.write_text(patterns("a"))  # lost two of three
        await watch.apply_now()
        doc = await watch.apply_now()
        assert doc is not None and doc["success"] is True
        held = {s["name"]: s for s in doc["plan"] if s["action"] == "delete"}
        assert set(held) == {"b", "c"} and {s["result"] for s in held.values()} == {"planned"}
        assert "held" in held["b"]["reason"] and set(fn.current) == {"a", "b", "c"}
        assert watch.record.load() == {"a", "b", "c"}
        now[0] += applier.PRUNE_HOLD / 2
        assert await watch.apply_now() is None
        now[0] += applier.PRUNE_HOLD / 2
        doc = await watch.apply_now()
        assert doc is not None and set(fn.current) == {"a"}
        assert watch.record.load() == {"a"}

    asyncio.run(scenario())


def test_losing_less_than_half_prunes_at_once(tmp_path: Path) -> None:
    now = [0.0]
    watch, fn = watch_of(tmp_path, patterns("a", "b", "c", "d"), now)

    async def scenario() -> None:
        await watch.apply_now()
        await watch.apply_now()
        watch.path.write_text(patterns("a", "b", "c"))
        await watch.apply_now()
        await watch.apply_now()

    asyncio.run(scenario())
    assert set(fn.current) == {"a", "b", "c"} and fn.seen[-1][1] == {}


def test_an_emptied_file_never_prunes_before_the_launch_restore(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("")
    record = applier.AppliedRecord(tmp_path / "applied.json")
    record.save(path, {"a", "b"})
    specs = parse(patterns("a", "b"))
    saved = {n: new_entry(to_config(s), 1000.0) for n, s in specs.items()}
    stopped: list[str] = []

    async def stop(name: str) -> None:
        stopped.append(name)

    async def load() -> dict[str, dict[str, Any]]:
        return saved

    ops = applier.Ops(None, stop, load, dict)  # type: ignore[arg-type]
    watch = applier.FileApplier(path, record, Recorder())
    assert asyncio.run(watch.prune_first(ops, None)) == [] and stopped == []
