"""Process groups, the parent-death signal and the record of children."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import kill_tree, wait_for
from streamalchemy.procs import ChildRecord, with_parent_death_signal

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_reap_leftovers_kills_recorded_child(tmp_path: Path) -> None:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = ChildRecord(tmp_path / "children.json")
        record.add("cam", proc.pid, SLEEPER)
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
