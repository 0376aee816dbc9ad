"""Live restore in-process: identity before adoption, the record's format, the files FFmpeg
writes instead of pipes, and how an adopted FFmpeg's exit is classified."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_tree, wait_for
from streamalchemy.errors import OperationFailed
from streamalchemy.supervision import adoption, procs
from streamalchemy.supervision.adoption import Survivor, identity, is_ours
from streamalchemy.supervision.childfiles import (
    ChildFiles,
    Tail,
    read_identity,
    take_lock,
    write_identity,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture(autouse=True)
def daemon_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(adoption.MARK_VAR, "1234-5678")
    return "1234-5678"


# -- identity before adoption ------------------------------------------------------------


def fake_proc(root: Path, pid: int, *, argv: list[str], mark: str, ticks: int = 4242) -> Path:
    """A /proc with one process in it, as the kernel shows it."""
    (root / "sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/random/boot_id").write_text("boot-1\n")
    base = root / str(pid)
    base.mkdir()
    fields = ["S"] + ["0"] * 18 + [str(ticks)] + ["0"] * 30
    (base / "stat").write_bytes(f"{pid} (ff) mpeg) ".encode() + " ".join(fields).encode())
    (base / "exe").symlink_to(os.path.realpath(sys.executable))
    (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (base / "environ").write_bytes(f"HOME=/x\0{adoption.MARK_VAR}={mark}\0".encode())
    return root


def test_identity_then_is_ours_for_the_same_process(tmp_path: Path, daemon_mark: str) -> None:
    argv = [sys.executable, "-i", "rtsp://u:secret@cam/x"]
    root = fake_proc(tmp_path, 77, argv=argv, mark=daemon_mark)
    rec = identity(77, argv, root)
    assert rec is not None and "secret" not in json.dumps(rec)
    assert rec["start_ticks"] == 4242 and rec["boot_id"] == "boot-1"
    assert is_ours(rec, root)


@pytest.mark.parametrize(
    "change",
    [
        {"boot_id": "boot-2"},  # a reboot since
        {"start_ticks": 4243},  # the pid reused by a later process
        {"exe": "/usr/bin/other"},
        {"argv": ["ffmpeg", "-i", "other"]},
        {"mark": "another-daemon"},
        {"uid": os.getuid() + 1},
    ],
)
def test_is_ours_refuses_any_difference(
    tmp_path: Path, daemon_mark: str, change: dict[str, Any]
) -> None:
    argv = [sys.executable, "-i", "x"]
    root = fake_proc(tmp_path, 77, argv=argv, mark=daemon_mark)
    rec = identity(77, argv, root)
    assert rec is not None
    assert not is_ours({**rec, **change}, root)


def test_is_ours_refuses_a_process_that_is_gone(tmp_path: Path, daemon_mark: str) -> None:
    argv = [sys.executable, "-i", "x"]
    rec = identity(77, argv, fake_proc(tmp_path, 77, argv=argv, mark=daemon_mark))
    assert rec is not None
    assert not is_ours({**rec, "pid": 78}, tmp_path)


def test_a_real_child_is_ours_until_it_ends() -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        wait_for(lambda: is_ours(identity(proc.pid, SLEEPER) or {}), 10, "the exec")
    finally:
        kill_tree(proc)
    assert not is_ours(identity(proc.pid, SLEEPER) or {"pid": proc.pid})


# -- what one daemon leaves for the next ---------------------------------------------------


def test_the_children_record_carries_its_format(tmp_path: Path) -> None:
    record = procs.ChildRecord(tmp_path / "children.json")
    record.add("cam", os.getpid(), ["ffmpeg", "-i", "x"], {"target": "/r.mp4"})
    doc = json.loads((tmp_path / "children.json").read_text())
    assert doc["format"] == procs.RECORD_FORMAT
    assert doc["children"]["cam"]["target"] == "/r.mp4"


def test_a_newer_children_record_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "children.json").write_text(json.dumps({"format": 99, "children": {}}))
    with pytest.raises(OperationFailed) as caught:
        procs.ChildRecord(tmp_path / "children.json").survivors()
    assert "newer StreamAlchemy (format 99" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_newer_lock_file_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "cam.lock"
    lock.write_text(json.dumps({"format": 7, "pid": 1}))
    with pytest.raises(OperationFailed, match="format 7"):
        read_identity(lock)


def test_an_older_daemons_children_are_ended_not_adopted(tmp_path: Path) -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        wait_for(lambda: is_ours(identity(proc.pid, SLEEPER) or {}), 10, "the exec")
        record = procs.ChildRecord(tmp_path / "children.json")
        record.add("cam", proc.pid, SLEEPER)
        flat = json.loads(record.path.read_text())["children"]  # format 1: no version
        record.path.write_text(json.dumps(flat))

        async def survivors() -> dict[str, Survivor]:
            return procs.ChildRecord(record.path).survivors()

        assert asyncio.run(survivors()) == {}
        wait_for(lambda: proc.poll() is not None, 10, "the older daemon's child to end")
    finally:
        kill_tree(proc)


# -- files instead of pipes --------------------------------------------------------------


def test_a_tail_returns_what_is_new_and_empties_the_file(tmp_path: Path) -> None:
    tail = Tail(tmp_path / "p")
    fd = os.open(tmp_path / "p", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"frame=1\n")
        assert tail.read() == b"frame=1\n"
        assert tail.read() == b""
        os.write(fd, b"frame=2\n")  # O_APPEND: at the new end, no hole of NULs
        assert (tmp_path / "p").read_bytes() == b"frame=2\n"
        assert tail.read() == b"frame=2\n"
    finally:
        os.close(fd)
        tail.close()


def test_a_name_whose_lock_a_child_holds_cannot_start_again(tmp_path: Path) -> None:
    files = ChildFiles(tmp_path, "cam")
    io = files.for_child(outlive=True)
    proc = subprocess.Popen(SLEEPER, pass_fds=io.keep, start_new_session=True)
    try:
        write_identity(io.keep[0], {"pid": proc.pid})
        io.close()  # the daemon's copy: the child's keeps the lock
        assert take_lock(files.lock_path) is None
        with pytest.raises(OperationFailed, match=f"still runs \\(pid {proc.pid}\\)"):
            files.for_child(outlive=True)
    finally:
        kill_tree(proc)
    lock = take_lock(files.lock_path)
    assert lock is not None
    os.close(lock)
    files.close()
