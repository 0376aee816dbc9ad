"""The state file against real files and real processes: kills, races, full disks, corruption."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_tree
from streamalchemy.errors import StateFileError
from streamalchemy.persist import StateStore, new_entry

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

REPO = Path(__file__).resolve().parents[1]

CONTRACT_EXAMPLE = """{
  "cam1": {
    "config": {
      "video_codec": "h264", "resolution": "1080", "target_fps": "30",
      "audio_enabled": "yes", "audio_codec": "aac", "hardware_accel": "no",
      "duration_hours": "2", "stream_type": "file",
      "video_file_path": "/path/to/video.mp4", "file_source_type": "custom"
    },
    "saved_at": 1703123456.789,
    "status": "active"
  }
}"""

ORIGINAL_APP = {
    "lobby": {
        "config": {
            "video_codec": "h265",
            "resolution": "720",
            "target_fps": "15",
            "audio_enabled": "no",
            "audio_codec": "aac",
            "hardware_accel": "yes",
            "duration_hours": "",
            "stream_type": "file",
            "source_url": None,
            "video_file": "clip.mp4",
            "video_file_path": "/srv/videos/clip.mp4",
            "file_source_type": "folder",
            "encoder_details": {"name": "hevc_nvenc", "type": "hardware", "preset": "p4"},
        },
        "saved_at": 1703123456,
        "status": "active",
        "restore_attempts": 2,
    }
}

# For each path read on stdin, forks a writer (the imports done once: a writer starts in a
# millisecond, not the 100 ms of a new Python) and prints its pid once it is ready. The
# writer saves name-N, name-N+1, ... (N: the entries already saved) and appends each name
# to the path once its save has returned.
WRITERS = """
import os, signal, sys, time
from pathlib import Path
from streamalchemy.persist import StateStore, new_entry
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the killed writers
for path in sys.stdin:
    out = os.open(path.strip(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:
        store = StateStore(Path(sys.argv[1]))
        i = len(store.load())
        os.write(go, b"r")
        while True:
            store.save(f"name-{i}", new_entry({"stream_type": "testsrc"}, time.time()))
            os.write(out, f"name-{i}\\n".encode())
            i += 1
    os.read(ready, 1)
    for fd in (out, ready, go):
        os.close(fd)
    print(pid, flush=True)
"""

# Waits for a line on stdin, then saves 50 entries named after argv[2].
RACER = """
import sys, time
from pathlib import Path
from streamalchemy.persist import StateStore, new_entry
store = StateStore(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
for i in range(50):
    store.save(f"{sys.argv[2]}-{i}", new_entry({"stream_type": "testsrc"}, time.time()))
"""

# Saves one more entry with files capped at 100 bytes; prints the error it got.
CAPPED = """
import resource, signal, sys, time
from pathlib import Path
from streamalchemy.errors import StateFileError
from streamalchemy.persist import StateStore, new_entry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    StateStore(Path(sys.argv[1])).save("big", new_entry({"stream_type": "testsrc"}, time.time()))
except StateFileError as exc:
    print(exc)
"""

# A plain flock, as another tool (or another version of ours) takes it: filelock is an
# flock of the same file, so each excludes the other.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "data" / "active_streams.json"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -c CODE ARGS`` with this checkout importable; killed by PID at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        kill_tree(proc)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"process {proc.pid} printed nothing in {timeout}s"
    return proc.stdout.readline()


def entry(n: int) -> dict[str, Any]:
    return new_entry({"stream_type": "testsrc", "target_fps": str(n)}, 1700000000.0 + n)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- format -------------------------------------------------------------------------------


def test_save_and_load_round_trip(state: Path) -> None:
    store = StateStore(state)
    store.save("a", entry(1))
    store.save("b", entry(2))
    store.save("a", entry(3))
    assert StateStore(state).load() == {"a": entry(3), "b": entry(2)}
    assert entry(3) == {
        "config": {"stream_type": "testsrc", "target_fps": "3"},
        "saved_at": 1700000003.0,
        "status": "active",
    }


def test_contract_example_loads_unchanged(state: Path) -> None:
    state.parent.mkdir()
    state.write_text(CONTRACT_EXAMPLE)
    assert StateStore(state).load() == json.loads(CONTRACT_EXAMPLE)


def test_original_app_document_loads_unchanged_and_survives_other_writes(state: Path) -> None:
    state.parent.mkdir()
    state.write_text(json.dumps(ORIGINAL_APP))
    store = StateStore(state)
    assert store.load() == ORIGINAL_APP
    store.save("new", entry(1))
    store.remove("new")
    assert json.loads(state.read_text()) == ORIGINAL_APP


def test_remove_returns_the_names_present_and_writes_nothing_when_none(state: Path) -> None:
    store = StateStore(state)
    store.save("a", entry(1))
    store.save("b", entry(2))
    before = snapshot(state.parent)
    assert store.remove("x", "y") == []
    assert snapshot(state.parent) == before
    assert store.remove("b", "x", "b") == ["b"]
    assert store.load() == {"a": entry(1)}


def test_clear_keeps_the_previous_contents_as_the_newest_backup(state: Path) -> None:
    store = StateStore(state)
    store.save("a", entry(1))
    store.clear()
    assert json.loads(state.read_text()) == {}
    assert json.loads(Path(f"{state}.backup.1").read_text()) == {"a": entry(1)}


# -- backups ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 0])
def test_ten_writes_keep_exactly_backup_count_backups(state: Path, count: int) -> None:
    store = StateStore(state, backup_count=count)
    for n in range(10):
        store.save(f"s{n}", entry(n))
    backups = sorted(p.name for p in state.parent.glob("*.backup.*"))
    assert backups == [f"{state.name}.backup.{i}" for i in range(1, count + 1)]
    for i in range(1, count + 1):
        # .backup.1 is the state before the last write: 9 entries, then 8, then 7.
        assert len(json.loads(Path(f"{state}.backup.{i}").read_text())) == 10 - i


# -- corruption and malformed entries ------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffgarbage", b'{"a": {"config": {"stream_type": "tes', b"", b"[1, 2]"],
    ids=["garbage", "truncated", "empty", "list"],
)
def test_unparsable_state_is_kept_aside_and_newest_parsable_backup_used(
    state: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(state)
    for n in range(3):
        store.save(f"s{n}", entry(n))
    state.write_bytes(content)
    Path(f"{state}.backup.1").write_bytes(b"{broken")  # so .backup.2 is the newest that parses
    with caplog.at_level(logging.WARNING, "streamalchemy.persist"):
        assert StateStore(state).load() == {"s0": entry(0)}
    (corrupt,) = state.parent.glob(f"{state.name}.corrupt-*")
    assert corrupt.read_bytes() == content
    assert str(corrupt) in caplog.text and f"{state}.backup.2" in caplog.text
    assert json.loads(state.read_text()) == {"s0": entry(0)}  # written back at once
    store.save("s9", entry(9))
    assert StateStore(state).load() == {"s0": entry(0), "s9": entry(9)}


def test_unparsable_state_without_parsable_backup_starts_empty(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state.parent.mkdir()
    state.write_bytes(b"not json")
    with caplog.at_level(logging.WARNING, "streamalchemy.persist"):
        assert StateStore(state).load() == {}
    assert "no backup parses" in caplog.text
    assert len(list(state.parent.glob("*.corrupt-*"))) == 1


def test_malformed_entries_are_skipped_and_kept_until_removed(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {
        "list": [1],
        "null": None,
        "no_config": {"saved_at": 1.0},
        "config_text": {"config": "x", "saved_at": 1.0},
        "saved_at_text": {"config": {}, "saved_at": "1703123456"},
        "saved_at_bool": {"config": {}, "saved_at": True},
    }
    state.parent.mkdir()
    state.write_text(json.dumps({"good": entry(1), **bad}))
    store = StateStore(state)
    with caplog.at_level(logging.WARNING, "streamalchemy.persist"):
        assert store.load() == {"good": entry(1)}
    assert all(repr(name) in caplog.text for name in bad)
    store.save("other", entry(2))
    assert json.loads(state.read_text()) == {"good": entry(1), **bad, "other": entry(2)}
    assert store.remove("null", "list") == ["null", "list"]
    store.clear()
    assert json.loads(state.read_text()) == {}


# -- crash safety and concurrency ---------------------------------------------------------


@pytest.mark.e2e
def test_writer_killed_at_200_random_moments_loses_no_confirmed_save(
    state: Path,
    tmp_path: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
    record_property: Callable[[str, object], None],
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    confirmed: set[str] = set()
    iterations = 200
    writers = spawn(WRITERS, str(state))
    assert writers.stdin is not None
    for n in range(iterations):
        said = tmp_path / f"confirmed-{n}"
        writers.stdin.write(f"{said}\n".encode())
        writers.stdin.flush()
        writer = os.pidfd_open(int(read_line(writers)))
        time.sleep(rng.uniform(0, 0.05))
        signal.pidfd_send_signal(writer, signal.SIGKILL)
        assert select.select([writer], [], [], 10)[0], "a killed writer did not end"
        os.close(writer)
        confirmed.update(said.read_text().split())
        # The state file itself always parses: the backups are never needed after a kill.
        names = set(json.loads(state.read_bytes()))
        assert confirmed <= names, f"seed {seed}: lost {sorted(confirmed - names)}"
        assert names == {f"name-{i}" for i in range(len(names))}, f"seed {seed}"
    assert set(StateStore(state).load()) == names
    assert not list(state.parent.glob("*.corrupt-*"))
    assert len(list(state.parent.glob(".*.tmp-*"))) <= 1  # the next write removes it
    print(f"\nkill test: {iterations} SIGKILLs, {len(confirmed)} confirmed saves, all present")
    record_property("kill_iterations", iterations)
    record_property("kill_confirmed_saves", len(confirmed))


@pytest.mark.e2e
def test_eight_processes_saving_fifty_entries_each_lose_none(
    state: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    procs = [spawn(RACER, str(state), f"p{k}") for k in range(8)]
    for proc in procs:
        assert read_line(proc) == b"ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    assert [proc.wait(timeout=60) for proc in procs] == [0] * 8
    loaded = StateStore(state).load()
    assert set(loaded) == {f"p{k}-{i}" for k in range(8) for i in range(50)}


def test_write_failing_part_way_leaves_file_and_backups_intact(
    state: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    store = StateStore(state)
    for n in range(5):
        store.save(f"s{n}", entry(n))
    before = snapshot(state.parent)
    proc = spawn(CAPPED, str(state))
    assert proc.stdout is not None
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    message = out.decode().strip()
    assert message == f"{state}: cannot write the state file (file size limit exceeded)"
    assert snapshot(state.parent) == before  # byte-identical, and no temporary file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_fails_cleanly(state: Path) -> None:
    store = StateStore(state)
    store.save("a", entry(1))
    store.save("b", entry(2))
    before = snapshot(state.parent)
    state.parent.chmod(0o500)
    try:
        with pytest.raises(StateFileError, match="permission denied"):
            store.save("c", entry(3))
        assert snapshot(state.parent) == before
    finally:
        state.parent.chmod(0o700)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs to fill up and remount read-only; skipped where mounting is not allowed."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(mount, capture_output=True, timeout=10).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True, timeout=10)


@pytest.mark.e2e
def test_full_and_read_only_file_systems_fail_cleanly(tiny_fs: Path) -> None:
    state = tiny_fs / "active_streams.json"
    store = StateStore(state)
    for n in range(3):
        store.save(f"s{n}", entry(n))
    before = snapshot(tiny_fs)
    filler = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(OSError, match="No space left"):
        while True:
            os.write(filler, b"x" * 4096)
    os.close(filler)
    with pytest.raises(StateFileError) as caught:
        store.save("big", new_entry({"blob": "x" * 8000}, 0.0))
    assert str(caught.value) == f"{state}: cannot write the state file (disk full)"
    (tiny_fs / "filler").unlink()
    assert snapshot(tiny_fs) == before

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True, timeout=10)
    with pytest.raises(StateFileError, match="read-only file system"):
        store.save("s9", entry(9))
    assert StateStore(state).load() == {f"s{n}": entry(n) for n in range(3)}


def test_lock_held_elsewhere_fails_fast_naming_the_lock(
    state: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    lock = Path(f"{state}.lock")
    StateStore(state).save("a", entry(1))
    holder = spawn(HOLDER, str(lock))
    assert read_line(holder) == b"ready\n"
    started = time.monotonic()
    with pytest.raises(StateFileError) as caught:
        StateStore(state, lock_timeout=0.5).save("b", entry(2))
    assert time.monotonic() - started < 1.5
    assert str(lock) in str(caught.value) and "another streamalchemy process" in str(caught.value)


# -- permissions and switches -------------------------------------------------------------


def test_files_are_0600_and_a_created_directory_0700_whatever_the_umask(state: Path) -> None:
    previous = os.umask(0)
    try:
        store = StateStore(state)
        for n in range(3):
            store.save(f"s{n}", entry(n))
    finally:
        os.umask(previous)
    assert mode(state.parent) == 0o700
    for path in [
        state,
        Path(f"{state}.lock"),
        Path(f"{state}.backup.1"),
        Path(f"{state}.backup.2"),
    ]:
        assert mode(path) == 0o600, path


def test_loading_a_missing_file_creates_nothing(state: Path) -> None:
    assert StateStore(state).load() == {}
    assert not state.parent.exists()
    state.parent.mkdir()
    assert StateStore(state).load() == {}
    assert StateStore(state).remove("a") == []
    StateStore(state).clear()
    assert list(state.parent.iterdir()) == []


def test_disabled_persistence_reads_and_writes_nothing(state: Path) -> None:
    StateStore(state).save("a", entry(1))
    before = snapshot(state.parent)
    store = StateStore(state, enabled=False)
    assert store.load() == {}
    store.save("b", entry(2))
    assert store.remove("a") == []
    store.clear()
    assert snapshot(state.parent) == before
    assert StateStore(Path(state.parent / "other" / "x.json"), enabled=False).load() == {}
    assert not (state.parent / "other").exists()


@pytest.mark.e2e
def test_time_per_save_with_fsync(
    state: Path, record_property: Callable[[str, object], None]
) -> None:
    store = StateStore(state)
    for n in range(20):
        store.save(f"s{n}", entry(n))
    count = 200
    started = time.perf_counter()
    for n in range(count):
        store.save("s0", entry(n))
    per_save_ms = (time.perf_counter() - started) / count * 1000
    print(f"\ntime per save (20 entries, fsync, 3 backups): {per_save_ms:.2f} ms")
    record_property("ms_per_save", round(per_save_ms, 3))


def test_a_symlinked_state_file_is_written_beside_its_target_and_stays_a_symlink(
    tmp_path: Path,
) -> None:
    target = tmp_path / "disk2" / "streams.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "data" / "active_streams.json"
    link.parent.mkdir()
    link.symlink_to(target)
    store = StateStore(link)
    store.save("a", new_entry({}, 1.0))
    store.save("b", new_entry({}, 2.0))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert set(json.loads(target.read_text())) == {"a", "b"}
    assert (tmp_path / "disk2" / "streams.json.backup.1").exists()
    assert set(StateStore(link).load()) == {"a", "b"}


def test_a_removal_that_cannot_be_written_stays_pending_and_hidden(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(state)
    store.save("a", new_entry({}, 1.0))
    store.save("b", new_entry({}, 2.0))
    real_write = store._write

    def full(doc: dict[str, Any], *, rotate: bool) -> None:
        raise StateFileError(f"{state}: cannot write the state file (disk full)")

    monkeypatch.setattr(store, "_write", full)
    with pytest.raises(StateFileError, match="disk full"):
        store.remove("a")
    assert store.write_error is not None and "disk full" in store.write_error
    assert set(json.loads(state.read_text())) == {"a", "b"}  # the file is intact
    assert set(store.load()) == {"b"}
    assert set(StateStore(state).load()) == {"b"}  # another reader (``saved``) agrees
    monkeypatch.setattr(store, "_write", real_write)
    store.flush()
    assert set(json.loads(state.read_text())) == {"b"} and store.write_error is None
    assert store.pending_removals() == set()


def test_saving_a_name_again_cancels_its_pending_removal(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(state)
    store.save("a", new_entry({}, 1.0))
    monkeypatch.setattr(
        store, "_write", lambda doc, rotate: (_ for _ in ()).throw(OSError(28, "x"))
    )
    with pytest.raises(StateFileError):
        store.remove("a")
    monkeypatch.undo()
    store.save("a", new_entry({}, 5.0))
    assert store.load()["a"]["saved_at"] == 5.0 and store.pending_removals() == set()


def test_a_pending_removal_of_an_odd_name_writes_no_file_outside(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(state)
    store.save("../../escape", new_entry({}, 1.0))  # a hand-edited file may hold anything
    monkeypatch.setattr(
        store, "_write", lambda doc, rotate: (_ for _ in ()).throw(OSError(28, "x"))
    )
    with pytest.raises(StateFileError):
        store.remove("../../escape")
    assert not (state.parent.parent / "escape").exists()
    assert "../../escape" not in store.load()  # still hidden, from memory


def test_a_plain_flock_is_refused_while_the_store_holds_its_lock(state: Path) -> None:
    store = StateStore(state)
    store.save("a", entry(1))
    fd = os.open(f"{state}.lock", os.O_RDWR)
    try:
        with store._locked(), pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the store's lock
    finally:
        os.close(fd)
    assert Path(f"{state}.lock").exists()  # kept: a plain flock of the path still excludes
