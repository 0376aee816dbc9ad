"""One lifecycle per name, and faults that cost nothing: the reproductions of issue 10.

Real daemon, real FFmpeg (copy mode of a tiny clip, to a null output: cheap), real
socket. Each test checks the process table and the state file, not only replies.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import FFMPEG, cli, cli_json, wait_for
from streamalchemy.core.saved import to_config
from streamalchemy.core.spec import spec_from_request
from streamalchemy.persist import new_entry

pytestmark = pytest.mark.e2e


class QuietDaemon:
    """``daemon run`` with its stderr in a file: many streams log more than a pipe holds."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.err = (home / "daemon.stderr").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamalchemy", "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            env={**os.environ, **(env or {})},
        )
        wait_for(
            lambda: (home / "streamalchemy.sock").exists() or self.proc.poll() is not None,
            20,
            "the daemon's socket",
        )
        assert self.proc.poll() is None, (home / "daemon.stderr").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.err.close()

    def kill(self) -> None:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.kill()
            self.proc.wait(10)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()


@pytest.fixture
def quiet_daemons(tmp_home: Path) -> Iterator[list[QuietDaemon]]:
    started: list[QuietDaemon] = []
    yield started
    for d in started:
        d.stop()


def ffmpeg_by_name(home: Path) -> dict[str, list[int]]:
    """Every FFmpeg in the process table reading this home's clips, orphans included."""
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and "ffmpeg" in os.path.basename(cmd[0]) and f"{home}/clips/" in " ".join(cmd):
            found.setdefault(stream_of(cmd), []).append(proc.pid)
    return found


def children_by_name(daemon_pid: int) -> dict[str, list[int]]:
    """The daemon's FFmpeg descendants, by the stream name their log path names."""
    found: dict[str, list[int]] = {}
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(daemon_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = proc.cmdline()
                if cmd and "ffmpeg" in os.path.basename(cmd[0]):
                    found.setdefault(stream_of(cmd), []).append(proc.pid)
    return found


def stream_of(cmd: list[str]) -> str:
    """The stream an FFmpeg argv belongs to: its copy of the clip is named after it."""
    for arg in cmd:
        if arg.endswith(".mp4") and "/clips/" in arg:
            return Path(arg).stem
    return "?"


def status_over_socket(sock_path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(sock_path))
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    reply: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
    return reply


def saved(home: Path) -> set[str]:
    return set(json.loads((home / "active_streams.json").read_text()))


def running(doc: dict[str, Any]) -> set[str]:
    return {s["name"] for s in doc["streams"] if s["status"] in ("starting", "running")}


@pytest.fixture
def clips(tmp_home: Path, sample_video: Path) -> Path:
    """One hard link of the clip per stream, so each FFmpeg's argv names its stream."""
    folder = tmp_home / "clips"
    folder.mkdir()
    return folder


def clip_for(clips: Path, sample_video: Path, name: str) -> Path:
    path = clips / f"{name}.mp4"
    if not path.exists():
        os.link(sample_video, path)
    return path


def write_saved(home: Path, clips: Path, sample_video: Path, names: list[str]) -> None:
    doc = {}
    for name in names:
        body = {
            "name": name,
            "file": str(clip_for(clips, sample_video, name)),
            "codec": "copy",
            "output": "null",
        }
        doc[name] = new_entry(to_config(spec_from_request(body)), time.time())
    path = home / "active_streams.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def start_copy(name: str, clips: Path, sample_video: Path, *extra: str) -> int:
    clip = clip_for(clips, sample_video, name)
    args = ("start", name, "--file", str(clip), "--codec", "copy", "--output", "null", *extra)
    return cli(*args, timeout=120).returncode


def test_commands_during_the_launch_restore_leave_one_ffmpeg_per_saved_name(
    tmp_home: Path, clips: Path, sample_video: Path, quiet_daemons: list[QuietDaemon]
) -> None:
    names = [f"s{i:02d}" for i in range(40)]
    write_saved(tmp_home, clips, sample_video, names)
    for extra in ("x1", "x2"):
        clip_for(clips, sample_video, extra)
    d = QuietDaemon(tmp_home)
    quiet_daemons.append(d)
    # Right after launch, while the restore works through its queue: the last names
    # are still waiting for a slot.
    with ThreadPoolExecutor(8) as pool:
        stop = pool.submit(cli, "stop", "s36", "s37", timeout=120)
        start = pool.submit(start_copy, "s38", clips, sample_video)
        replace = pool.submit(start_copy, "s39", clips, sample_video, "--replace")
        new = pool.submit(start_copy, "x1", clips, sample_video)
        restores = [pool.submit(cli_json, "restore", timeout=300) for _ in range(2)]
        assert stop.result().returncode == 0, stop.result().stderr
        assert start.result() in (0, 5)  # 5: the restore had started it first
        assert replace.result() == 0 and new.result() == 0
        for r in restores:
            code, doc = r.result()
            assert code == 0, doc
            assert set(doc["results"]) >= set(names) - {"s36", "s37"}
    want = (set(names) - {"s36", "s37"}) | {"x1"}
    assert saved(tmp_home) == want
    code, doc = cli_json("list")
    assert code == 0 and running(doc) == want
    by_name = children_by_name(d.proc.pid)
    assert {n: len(p) for n, p in by_name.items()} == dict.fromkeys(want, 1)
    assert ffmpeg_by_name(tmp_home) == by_name  # no FFmpeg outside the daemon's tree
    pids = {s["name"]: s["pid"] for s in doc["streams"]}
    assert all(by_name[n] == [pids[n]] for n in want)


def test_full_state_disk_fails_starts_cleanly_stops_anyway_and_converges(
    tmp_home: Path, clips: Path, sample_video: Path, quiet_daemons: list[QuietDaemon]
) -> None:
    state_dir = tmp_home / "state"
    state_dir.mkdir(mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state_dir)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        os.environ["STREAM_PERSISTENCE_FILE"] = str(state_dir / "active_streams.json")
        d = QuietDaemon(tmp_home)
        quiet_daemons.append(d)
        for name in ("a", "b", "c"):
            assert start_copy(name, clips, sample_video) == 0
        before = {s["name"]: s for s in cli_json("list")[1]["streams"]}
        state = state_dir / "active_streams.json"
        good = state.read_bytes()
        filler = state_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)

        proc = cli(
            "start",
            "d",
            "--file",
            str(clip_for(clips, sample_video, "d")),
            "--codec",
            "copy",
            "--output",
            "null",
            timeout=120,
        )
        assert proc.returncode == 1 and "disk full" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        proc = cli("stop", "a", timeout=60)
        assert proc.returncode == 1 and "disk full" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        status = cli_json("daemon", "status")[1]
        assert status["state_write_ok"] is False and "disk full" in status["state_write_error"]
        assert json.loads(state.read_bytes()) == json.loads(good)  # intact, parses
        by_name = children_by_name(d.proc.pid)
        assert set(by_name) == {"b", "c"}  # no FFmpeg for d, none left for a
        assert ffmpeg_by_name(tmp_home) == by_name
        time.sleep(2.5)  # over FFmpeg's 2 s between progress reports, however fast the above
        after = {s["name"]: s for s in cli_json("list")[1]["streams"]}
        for name in ("b", "c"):
            assert after[name]["pid"] == before[name]["pid"]
            assert (after[name]["frames"] or 0) > (before[name]["frames"] or 0)
        assert "a" not in cli_json("saved")[1]["streams"]  # a pending removal is hidden
        assert cli_json("restore")[1]["results"].get("a") is None  # and never restored

        filler.unlink()
        wait_for(
            lambda: cli_json("daemon", "status")[1]["state_write_ok"], 15, "a write to succeed"
        )
        assert saved(state_dir) == {"b", "c"}
        assert start_copy("d", clips, sample_video) == 0
        assert saved(state_dir) == {"b", "c", "d"}
        assert set(children_by_name(d.proc.pid)) == {"b", "c", "d"}
    finally:
        os.environ.pop("STREAM_PERSISTENCE_FILE", None)
        for daemon in quiet_daemons:
            daemon.stop()
        quiet_daemons.clear()
        subprocess.run(["umount", "-l", str(state_dir)], check=False)


def test_a_hanging_ffmpeg_never_slows_daemon_status(
    tmp_home: Path, quiet_daemons: list[QuietDaemon]
) -> None:
    hang = tmp_home / "ffmpeg"
    hang.write_text("#!/bin/sh\nsleep 59.93\n")  # not exec: the probe ends its group
    hang.chmod(0o755)
    body = {"name": "h1", "testsrc": True, "output": "null"}
    state = {"h1": new_entry(to_config(spec_from_request(body)), time.time())}
    (tmp_home / "active_streams.json").write_text(json.dumps(state))
    (tmp_home / "active_streams.json").chmod(0o600)
    d = QuietDaemon(tmp_home, {"STREAMALCHEMY_FFMPEG": str(hang)})
    quiet_daemons.append(d)
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "streamalchemy", "start", f"t{i}", "--testsrc"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "STREAMALCHEMY_FFMPEG": str(hang)},
        )
        for i in range(2)
    ]
    try:
        slowest = 0.0
        for _ in range(6):
            # The daemon's own answer, as `daemon status` gets it, without the CLI's start-up.
            began = time.monotonic()
            doc = status_over_socket(tmp_home / "streamalchemy.sock")
            slowest = max(slowest, time.monotonic() - began)
            assert doc["success"] and doc["pid"] == d.proc.pid
            time.sleep(0.3)
        assert slowest < 1.0, f"GET /status took {slowest:.2f}s"
        code, doc = cli_json("daemon", "status", timeout=30)
        assert code == 0 and doc["pid"] == d.proc.pid
    finally:
        for p in starts:
            p.kill()
            p.wait(10)
        d.kill()
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmd = proc.info["cmdline"] or []
                if str(hang) in " ".join(cmd) or cmd[-1:] == ["59.93"]:
                    proc.kill()


def test_a_wrapper_without_exec_does_not_outlive_a_daemon_kill(
    tmp_home: Path, clips: Path, sample_video: Path, quiet_daemons: list[QuietDaemon]
) -> None:
    wrapper = tmp_home / "ffmpeg-wrapper"
    wrapper.write_text(f'#!/bin/sh\n"{FFMPEG}" "$@"\n')  # no exec: FFmpeg is a grandchild
    wrapper.chmod(0o755)
    # Live restore off: a wrapper's FFmpeg is not the process recorded, so never adopted.
    env = {"STREAMALCHEMY_FFMPEG": str(wrapper), "STREAMALCHEMY_LIVE_RESTORE": "0"}
    os.environ.update(env)
    try:
        first = QuietDaemon(tmp_home, env)
        quiet_daemons.append(first)
        assert start_copy("w1", clips, sample_video) == 0
        old = children_by_name(first.proc.pid)["w1"]
        assert len(old) == 1
        first.proc.kill()  # SIGKILL: only the wrapper gets the parent-death signal
        first.proc.wait(10)
        second = QuietDaemon(tmp_home, env)
        quiet_daemons.append(second)
        wait_for(lambda: "w1" in children_by_name(second.proc.pid), 20, "w1 to be restored")
        assert not psutil.pid_exists(old[0]) or psutil.Process(old[0]).status() == "zombie"
        mine = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if FFMPEG in (p.info["cmdline"] or [""])[0:1]
            and str(clips) in " ".join(p.info["cmdline"])
        ]
        assert mine == children_by_name(second.proc.pid)["w1"]
    finally:
        for key in env:
            os.environ.pop(key, None)
