"""The controller's decisions, in-process: a fake supervisor, no FFmpeg, no socket.

Each test runs an asyncio scenario in milliseconds and checks the invariants of
"exactly one lifecycle per name": never two live processes for a name, nothing
running that is not saved, nothing saved that the user stopped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeStream, FakeSupervisor, make_controller, run, save_many, saved, spec

from streamalchemy import daemon
from streamalchemy.client import commands
from streamalchemy.client.logfollow import Follower
from streamalchemy.core.saved import spec_from_entry, to_config
from streamalchemy.core.spec import StreamSpec, spec_from_request
from streamalchemy.errors import InvalidInput, OperationFailed, StateFileError, StreamExists
from streamalchemy.persist import new_entry
from streamalchemy.server import restoring, routes
from streamalchemy.server.controller import Controller
from streamalchemy.server.restoring import RESTORE_PARALLEL


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def controller(home: Path) -> Iterator[tuple[Controller, FakeSupervisor]]:
    c, fake = make_controller(home)
    yield c, fake
    c.writer.close()


def test_start_and_stop_on_one_name_are_serialised(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller

    async def scenario() -> None:
        start = asyncio.create_task(c.start_spec(spec("a")))
        await asyncio.sleep(0)  # the start owns the name and is confirming
        result = await c.stop_names(["a"])
        await start
        assert result.stopped == ["a"] and result.write_error is None

    run(scenario())
    assert fake.running() == set() and saved(home) == set()


def test_two_starts_of_one_name_one_wins_the_other_finds_it_running(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller

    async def scenario() -> list[Any]:
        return await asyncio.gather(
            c.start_spec(spec("a")), c.start_spec(spec("a")), return_exceptions=True
        )

    outcomes = run(scenario())
    assert sum(isinstance(o, StreamExists) for o in outcomes) == 1
    assert fake.launched == ["a"] and saved(home) == {"a"}


def test_replace_during_a_start_waits_then_replaces(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller

    async def scenario() -> None:
        first = asyncio.create_task(c.start_spec(spec("a")))
        await asyncio.sleep(0)
        await c.start_spec(spec("a"), replace=True)
        await first

    run(scenario())
    assert fake.launched == ["a", "a"] and fake.running() == {"a"} and saved(home) == {"a"}


def test_concurrent_restores_share_one_run_and_both_get_the_report(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller
    names = [f"s{i:02d}" for i in range(40)]
    save_many(c, names)

    async def scenario() -> list[Any]:
        return await asyncio.gather(c.restore(), c.restore())

    first, second = run(scenario())
    assert first == second and set(first) == set(names)
    assert all(r["result"] == "restored" for r in first.values())
    assert sorted(fake.launched) == names and fake.running() == set(names)


def test_start_stop_replace_on_queued_names_during_a_restore(home: Path) -> None:
    c, fake = make_controller(home, delay=0.02)
    names = [f"s{i:03d}" for i in range(RESTORE_PARALLEL + 24)]
    save_many(c, names)
    s36, s37, s38, s39 = names[-4:]  # queued behind the slots

    async def scenario() -> tuple[dict[str, dict[str, str]], Any]:
        # The first RESTORE_PARALLEL hold every restore slot until released: the rest queue.
        release = asyncio.Event()
        fake.gates = {name: release for name in names[:RESTORE_PARALLEL]}
        restore = asyncio.create_task(c.restore())
        deadline = time.monotonic() + 10
        while len(fake.launched) < RESTORE_PARALLEL:
            assert time.monotonic() < deadline, "the restore did not fill its slots"
            await asyncio.sleep(0.001)
        stop = await c.stop_names([s36, s37])
        await c.start_spec(spec(s38), replace=True)
        await c.start_spec(spec(s39))  # saved and queued, not running yet: it starts
        release.set()
        return await restore, stop

    try:
        results, stop = run(scenario())
    finally:
        c.writer.close()
    assert stop.stopped == [s36, s37]
    assert results[s36]["result"] == "skipped" and results[s37]["result"] == "skipped"
    assert results[s38] == {"result": "skipped", "reason": "already running"}
    assert fake.running() == set(names) - {s36, s37}
    assert saved(home) == set(names) - {s36, s37}
    assert results[s39] == {"result": "skipped", "reason": "already running"}
    assert fake.launched.count(s38) == fake.launched.count(s39) == 1


def test_a_start_that_cannot_be_saved_stops_its_ffmpeg(
    controller: tuple[Controller, FakeSupervisor], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, fake = controller

    def full(*args: Any) -> None:
        raise StateFileError(f"{home}/active_streams.json: cannot write the state file (disk full)")

    monkeypatch.setattr(c.store, "save", full)
    with pytest.raises(OperationFailed, match=r"could not be saved.*disk full"):
        run(c.start_spec(spec("a")))
    assert fake.launched == ["a"] and fake.running() == set()


def test_a_failed_replace_brings_the_replaced_stream_back(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller
    run(c.start_spec(spec("a")))
    fake.fail["a"] = "no such file"
    with pytest.raises(OperationFailed, match="runs again"):
        run(c.start_spec(spec("a"), replace=True))
    assert fake.running() == {"a"} and saved(home) == {"a"}


def test_stop_stops_even_when_the_write_fails_and_the_stream_stays_gone(
    controller: tuple[Controller, FakeSupervisor], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, fake = controller
    run(c.start_spec(spec("a")))
    run(c.start_spec(spec("b")))
    real_write = c.store._write

    def full(*args: Any, **kwargs: Any) -> None:
        raise StateFileError(f"{home}/active_streams.json: cannot write the state file (disk full)")

    monkeypatch.setattr(c.store, "_write", full)
    result = run(c.stop_names(["a"]))
    status, reply = routes.stop_reply(result)
    assert result.stopped == ["a"] and status == 500 and "disk full" in reply["message"]
    assert fake.running() == {"b"}
    report = routes.status(c)
    assert report["state_write_ok"] is False and "disk full" in report["state_write_error"]
    # Still in the file, but hidden from every reader and never restored.
    assert "a" in saved(home) and "a" not in c.store.load()
    assert run(c.restore())["b"]["result"] == "skipped"
    assert fake.running() == {"b"}
    monkeypatch.setattr(c.store, "_write", real_write)
    run(c.writer.flush())
    assert saved(home) == {"b"} and routes.status(c)["state_write_ok"] is True


def test_an_exception_in_one_restore_is_that_streams_failure(
    controller: tuple[Controller, FakeSupervisor], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, fake = controller
    save_many(c, ["a", "b"])
    launch = fake.launch

    def explode(spec: StreamSpec, **kwargs: Any) -> FakeStream:
        if spec.name == "a":
            raise RuntimeError("boom")
        return launch(spec, **kwargs)

    monkeypatch.setattr(fake, "launch", explode)
    results = run(c.restore())
    assert results["a"] == {"result": "failed", "reason": "boom"}
    assert results["b"]["result"] == "restored" and fake.running() == {"b"}


def test_restart_keeps_the_deadline(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller
    first = run(c.start_spec(spec("a")))
    again = run(c.restart_name("a"))
    assert again.saved_at == first.saved_at and fake.launched == ["a", "a"]
    assert fake.running() == {"a"}


# -- the edges around the controller: the CLI's daemon stop, logs --follow, priority, pid file


def test_daemon_stop_fails_naming_the_pid_when_the_daemon_outlives_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class StubbornDaemon:
        def reachable(self) -> bool:
            return True

        def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
            return {"success": True, "pid": os.getpid()}  # "shutting down", yet alive

    monkeypatch.setattr(commands, "client", lambda settings=None: StubbornDaemon())
    monkeypatch.setattr(commands, "STOP_WAIT", 0.2)
    with pytest.raises(OperationFailed, match=rf"pid {os.getpid()}\) is still running"):
        commands.daemon_stop()


def test_follow_starts_where_the_tail_ended(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("one\ntwo\n")
    offset = log.stat().st_size  # what ``logs`` answered with its tail
    with log.open("a") as f:
        f.write("three\n")  # written between the tail and the follower's start
    follower = Follower(str(log), offset)
    assert follower.read_lines() == ["three"]
    follower.close()


def test_priority_is_bounded_alike_for_start_and_restore() -> None:
    with pytest.raises(InvalidInput, match="priority"):
        spec_from_request({"name": "p", "testsrc": True, "priority": 1_000_000_000})
    ok = spec_from_request({"name": "p", "testsrc": True, "priority": -999_999_999})
    again = spec_from_entry("p", new_entry(to_config(ok), time.time()))
    assert again.priority == ok.priority == -999_999_999


def test_a_planted_pid_file_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "daemon.pid").symlink_to(victim)
    with pytest.raises(OperationFailed, match="symlink"):
        daemon._hold_instance_lock(tmp_path)
    assert victim.read_text() == "keep"


def test_a_failed_launch_restore_is_tried_again(
    controller: tuple[Controller, FakeSupervisor], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, fake = controller
    save_many(c, ["a", "b"])
    monkeypatch.setattr("streamalchemy.server.restoring.RETRY", 0.01)
    load = c.writer.load
    failures = [StateFileError("the state file is still locked")]
    calls = [0]

    async def flaky() -> dict[str, dict[str, Any]]:
        calls[0] += 1
        if calls[0] == 2 and failures:  # the restore's read, after the adoption's
            raise failures.pop()
        return await load()

    c.writer.load = flaky  # type: ignore[method-assign]
    run(asyncio.wait_for(restoring.at_launch(c, {}, True), 10))
    assert not failures and fake.running() == {"a", "b"}


def test_overwrite_keeps_the_old_file_until_the_new_start_runs(
    controller: tuple[Controller, FakeSupervisor], home: Path
) -> None:
    c, fake = controller
    out = home / "rec.mp4"
    out.write_bytes(b"yesterday's recording")
    rec = spec_from_request({"name": "r", "testsrc": True, "output": str(out)})
    fake.fail["r"] = "Conversion failed!"
    with pytest.raises(OperationFailed, match="Conversion failed"):
        run(c.start_spec(rec, overwrite=True))
    assert out.read_bytes() == b"yesterday's recording"  # put back
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(".rec")) == []
    del fake.fail["r"]
    run(c.start_spec(rec, overwrite=True))
    assert not out.exists()  # gone once the new one runs (a fake FFmpeg writes nothing)
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(".rec")) == []
