"""The restart in place: what crosses the exec, the check of the new code, SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamalchemy import daemon
from streamalchemy.errors import OperationFailed
from streamalchemy.server import handover
from streamalchemy.server.handover import Handover


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp")) / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    yield sock, path
    sock.close()
    path.unlink(missing_ok=True)
    path.parent.rmdir()


def test_a_handover_is_taken_once_by_the_pid_it_names(tmp_path: Path) -> None:
    with open(tmp_path / "lock", "w") as lock, socket.socket(socket.AF_UNIX) as sock:
        sent = Handover(lock=lock.fileno(), control=sock.fileno(), previous_version="1.0")
        env = {handover.ENV: handover.encode(sent)}
        assert handover.take(dict(env), os.getpid() + 1) is None  # inherited by another
        got = handover.take(env, os.getpid())
        assert got == sent
        assert handover.ENV not in env  # no FFmpeg, no later daemon inherits it


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"format": 99, "pid": PID, "lock": 0, "control": 1}',
        '{"format": 1, "pid": PID, "lock": 900, "control": 901}',  # nothing open there
        '{"format": 1, "pid": PID, "lock": 1, "control": 2}',  # stdio is never ours
        '{"format": 1, "pid": PID}',
    ],
)
def test_a_handover_that_does_not_hold_is_ignored(raw: str) -> None:
    env = {handover.ENV: raw.replace("PID", str(os.getpid()))}
    assert handover.take(env, os.getpid()) is None
    assert env == {}


def test_the_control_socket_is_kept_only_where_it_still_listens(
    listening: tuple[socket.socket, Path],
) -> None:
    sock, path = listening
    kept = handover.control_socket(Handover(lock=0, control=os.dup(sock.fileno())), path)
    assert kept is not None and kept.getsockname() == str(path)
    kept.close()
    moved = Handover(lock=0, control=os.dup(sock.fileno()))
    assert handover.control_socket(moved, path.with_name("other.sock")) is None
    with pytest.raises(OSError):
        os.fstat(moved.control)  # closed: the new path is bound afresh
    with socket.socket(socket.AF_UNIX) as idle:
        not_listening = Handover(lock=0, control=os.dup(idle.fileno()))
        assert handover.control_socket(not_listening, path) is None


def test_metrics_listeners_are_kept_only_for_the_same_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as tcp:
        addr = ("127.0.0.1", tcp.getsockname()[1])
        same = Handover(lock=0, control=0, metrics=(os.dup(tcp.fileno()),), metrics_addr=addr)
        kept = handover.metrics_sockets(same, addr)
        assert [s.getsockname() for s in kept] == [addr]
        kept[0].close()
        other = Handover(lock=0, control=0, metrics=(os.dup(tcp.fileno()),), metrics_addr=addr)
        assert handover.metrics_sockets(other, ("127.0.0.1", 1)) == []
        with pytest.raises(OSError):
            os.fstat(other.metrics[0])


def test_a_failed_exec_leaves_the_descriptors_closed_to_children(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock, open(tmp_path / "lock", "w") as lock:
        passed = Handover(lock=lock.fileno(), control=sock.fileno())
        with pytest.raises(OSError):
            handover.exec_into(passed, [str(tmp_path / "missing"), "daemon", "run"])
        assert not os.get_inheritable(sock.fileno()) and not os.get_inheritable(lock.fileno())


def test_the_next_image_runs_the_same_command_line() -> None:
    assert handover.argv() == [sys.executable, *sys.orig_argv[1:]]


DAEMON_ARGV = [sys.executable, "-m", "streamalchemy", "daemon", "run"]


def test_preflight_runs_the_launch_and_reports_the_installed_version(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamalchemy

    monkeypatch.setattr(handover, "argv", lambda: DAEMON_ARGV)
    assert asyncio.run(handover.preflight("x")) == streamalchemy.__version__
    assert not (tmp_home / "daemon.pid").exists()  # a dry run: no daemon started


def test_preflight_refuses_code_that_does_not_import(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_home / "code" / "streamalchemy"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("__version__ = '9.9'\ndef oops(:\n")
    (broken / "__main__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    monkeypatch.chdir(tmp_home)
    monkeypatch.setattr(handover, "argv", lambda: DAEMON_ARGV)
    with pytest.raises(OperationFailed) as caught:
        asyncio.run(handover.preflight("1.0"))
    message = str(caught.value)
    assert "SyntaxError" in message and "keeps running version 1.0" in message
    assert "\n" not in message


def test_the_instance_lock_is_taken_over_from_the_inherited_descriptor(tmp_path: Path) -> None:
    first = daemon._hold_instance_lock(tmp_path)
    inherited = os.dup(first.fileno())  # the same open file, as across exec
    second = daemon._hold_instance_lock(tmp_path, inherited)
    assert second.fileno() == inherited
    with pytest.raises(OperationFailed, match="already running"):
        daemon._hold_instance_lock(tmp_path)
    first.close()
    second.close()
    daemon._hold_instance_lock(tmp_path).close()


def test_an_inherited_descriptor_of_another_file_is_not_the_lock(tmp_path: Path) -> None:
    elsewhere = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    lock = daemon._hold_instance_lock(tmp_path, elsewhere)
    held, pid_file = os.fstat(lock.fileno()), (tmp_path / "daemon.pid").stat()
    assert (held.st_dev, held.st_ino) == (pid_file.st_dev, pid_file.st_ino)
    assert (tmp_path / "other").read_text() == ""  # never written
    lock.close()


def test_sighup_asks_for_the_restart_once_the_new_code_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fine(current: str) -> str:
        return "2.0"

    monkeypatch.setattr(handover, "preflight", fine)

    async def scenario() -> bool:
        restart = daemon._Restart()
        restart.hangup()
        await asyncio.wait_for(restart.wanted.wait(), 5)
        return restart.wanted.is_set()

    assert asyncio.run(scenario())


def test_sighup_with_broken_code_logs_and_keeps_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(current: str) -> str:
        raise OperationFailed("the installed code does not start (SyntaxError)")

    monkeypatch.setattr(handover, "preflight", broken)

    async def scenario() -> bool:
        restart = daemon._Restart()
        restart.hangup()
        for _ in range(50):
            await asyncio.sleep(0)
        return restart.wanted.is_set()

    with caplog.at_level(logging.ERROR, logger="streamalchemy.daemon"):
        assert not asyncio.run(scenario())
    assert "SIGHUP: not restarting" in caplog.text and "SyntaxError" in caplog.text


def test_a_second_restart_during_the_first_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(current: str) -> str:
        await asyncio.sleep(0.01)
        return "2.0"

    monkeypatch.setattr(handover, "preflight", slow)

    async def scenario() -> None:
        restart = daemon._Restart()
        first = asyncio.create_task(restart.request())
        await asyncio.sleep(0)
        with pytest.raises(OperationFailed, match="already restarting"):
            await restart.request()
        assert (await first)["version"] == "2.0"

    asyncio.run(scenario())
