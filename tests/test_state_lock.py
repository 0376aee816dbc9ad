"""A state-file lock held for long by another process: bounded waits, nothing leaked."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from streamalchemy.errors import StateFileError
from streamalchemy.persist import STUCK_WAIT, StateStore


def test_a_lock_held_for_long_answers_later_callers_soon_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "active_streams.json"
    store = StateStore(state, lock_timeout=0.3)
    store.save("a", {"config": {}, "saved_at": 1.0})
    holder = os.open(f"{state}.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as `saved` in another process would
    try:
        fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
        with pytest.raises(StateFileError, match=r"still locked after 0\.3s"):
            store.load()
        for _ in range(20):  # a `list` a second: each waits STUCK_WAIT, not the timeout
            with pytest.raises(StateFileError, match=f"still locked after {STUCK_WAIT:g}s"):
                store.load()
        assert len(os.listdir("/proc/self/fd")) == fds and threading.active_count() == threads
    finally:
        os.close(holder)
    assert set(store.load()) == {"a"}
    holder = os.open(f"{state}.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:  # had again in between: the next wait is the whole timeout again
        with pytest.raises(StateFileError, match=r"still locked after 0\.3s"):
            store.load()
    finally:
        os.close(holder)


def test_after_a_failed_save_a_flush_that_writes_clears_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path / "active_streams.json")
    store.save("a", {"config": {}, "saved_at": 1.0})
    write = store._write

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write", full)
    with pytest.raises(StateFileError):
        store.save("b", {"config": {}, "saved_at": 2.0})
    assert store.write_error is not None and not store.pending_removals()
    with pytest.raises(StateFileError):
        store.flush()  # still full: still an error
    monkeypatch.setattr(store, "_write", write)
    store.flush()  # the disk has room again: nothing pending, but the write clears it
    assert store.write_error is None and set(store.load()) == {"a"}
