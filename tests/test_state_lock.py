"""A state-file lock held for long by another process: bounded waits, nothing leaked."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from streamalchemy.errors import StateFileError
from streamalchemy.persist import StateStore


def lock_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "state-lock-wait")


def test_a_lock_held_for_long_costs_one_thread_and_one_fd_and_answers_soon(
    tmp_path: Path,
) -> None:
    state = tmp_path / "active_streams.json"
    store = StateStore(state, lock_timeout=0.3)
    store.save("a", {"config": {}, "saved_at": 1.0})
    holder = os.open(f"{state}.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as `saved` in another process would
    try:
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(20):  # a `list` a second
            with pytest.raises(StateFileError, match="still locked"):
                store.load()
        # The first waited its timeout; each other took the same wait over (STUCK_WAIT).
        assert lock_threads() == 1
        assert len(os.listdir("/proc/self/fd")) <= fds + 1
    finally:
        os.close(holder)
    assert set(store.load()) == {"a"}
    deadline = time.monotonic() + 5
    while lock_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock_threads() == 0


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
