"""Process groups, the parent-death signal and the record of children."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import kill_tree, wait_for
from streamalchemy.supervision.childfiles import ChildFiles
from streamalchemy.supervision.procs import MARK_VAR, ChildRecord, with_parent_death_signal

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_reap_leftovers_kills_recorded_child(tmp_path: Path) -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = ChildRecord(tmp_path / "children.json")
        record.add("cam", proc.pid, SLEEPER)
        # Popen returns a moment before the kernel has set the new command line up.
        wait_for(lambda: psutil.Process(proc.pid).cmdline() == SLEEPER, 10, "the exec")
        assert ChildRecord(tmp_path / "children.json").reap_leftovers() == [proc.pid]
        wait_for(lambda: proc.poll() is not None, 10, "the leftover to die")
    finally:
        kill_tree(proc)


def test_reap_leftovers_spares_a_reused_pid(tmp_path: Path) -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = ChildRecord(tmp_path / "children.json")
        # Same pid, another command line: the pid was reused by an unrelated process.
        record.add("cam", proc.pid, ["ffmpeg", "-i", "x"])
        assert ChildRecord(tmp_path / "children.json").reap_leftovers() == []
        assert proc.poll() is None
    finally:
        kill_tree(proc)


@pytest.mark.e2e
def test_parent_death_signal_kills_child_with_its_parent() -> None:
    # A parent that spawns a child with the prefix, prints its pid, and is SIGKILLed.
    script = (
        "import subprocess,sys,time;"
        f"p=subprocess.Popen({with_parent_death_signal(SLEEPER)!r});"
        "print(p.pid,flush=True);time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        # setpriv sets the signal just before it execs: wait for the exec.
        wait_for(lambda: child.cmdline() == SLEEPER, 10, "setpriv to exec the child")
        parent.kill()
        parent.wait(10)
        alive = psutil.wait_procs([child], timeout=10)[1]
        for survivor in alive:
            survivor.kill()
        assert alive == []
    finally:
        kill_tree(parent)


def test_children_record_is_0600_and_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path = tmp_path / "children.json"
    path.symlink_to(victim)
    record = ChildRecord(path)
    record.add("cam", os.getpid(), ["x"])
    assert victim.read_text() == "keep" and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_wrapper_without_exec_leaves_nothing_of_its_group(tmp_path: Path) -> None:
    # What a daemon SIGKILL leaves: the wrapper killed by the parent-death signal, its
    # FFmpeg (here a sleeper) still running in the recorded process group.
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"#!/bin/sh\n{sys.executable} -c 'import time; time.sleep(60)'\n")
    wrapper.chmod(0o755)
    os.environ[MARK_VAR] = "test-mark"
    try:
        proc = subprocess.Popen([str(wrapper)], start_new_session=True)
    finally:
        del os.environ[MARK_VAR]
    try:
        wait_for(lambda: psutil.Process(proc.pid).children(), 10, "the wrapper's child")
        child = psutil.Process(proc.pid).children()[0]
        record = ChildRecord(tmp_path / "children.json")
        record._children["cam"] = {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "argv": [str(wrapper)],
            "mark": "test-mark",
        }
        record._write()
        proc.kill()  # the wrapper dies; its child lives on in the group
        proc.wait(10)
        assert child.is_running()
        assert ChildRecord(tmp_path / "children.json").reap_leftovers() == [child.pid]
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        kill_tree(proc)


def test_a_group_member_without_the_mark_is_spared(tmp_path: Path) -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = ChildRecord(tmp_path / "children.json")
        record._children["cam"] = {
            "pid": proc.pid,
            "create_time": 0.0,  # not the recorded process: another start time
            "argv": SLEEPER,
            "mark": "some-other-daemon",
        }
        record._write()
        assert ChildRecord(tmp_path / "children.json").reap_leftovers() == []
        assert proc.poll() is None
    finally:
        kill_tree(proc)


def test_ffmpeg_gets_a_minimal_environment_without_the_daemons_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    from streamalchemy.supervision import procs

    monkeypatch.setenv("CAM_PASSWORD", "Kq'7 secret")
    monkeypatch.setenv(MARK_VAR, "the-mark")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")

    async def child_env() -> dict[str, str]:
        files = ChildFiles(tmp_path, "env")
        io = files.for_child(outlive=True)
        proc = await procs.spawn(["env", "-0"], io)
        io.close()
        await proc.wait()
        out = (tmp_path / "env.progress").read_bytes()  # its stdout
        return dict(item.split("=", 1) for item in out.decode().split("\0") if item)

    seen = asyncio.run(child_env())
    assert "CAM_PASSWORD" not in seen
    assert seen[MARK_VAR] == "the-mark" and seen["LC_ALL"] == "C.UTF-8"
    assert seen["PATH"] == os.environ["PATH"]
