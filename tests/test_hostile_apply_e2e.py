"""Hostile input to start, apply and ``daemon run --apply``, with the real daemon and FFmpeg.

A malformed URL, a file rewritten in place under a watching daemon, a restart of
every stream past one that cannot come back, an ``--overwrite`` from a bad source,
an apply that must bring back what does not run, a stop while the daemon is down, and
an HLS stream whose disk fills up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, cli, cli_json, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]

CHEAP = 'testsrc = true\nresolution = 480\nfps = 5\noutput = "null"\n'
CHEAP_ARGS = ("--testsrc", "--resolution", "480", "--fps", "5", "--output", "null")

BAD_URLS = ["rtsp://[::1/x", "rtsp://cam:99999/x", "rtsp://cam:port/x"]


def running() -> dict[str, tuple[int, float]]:
    """name -> (pid, saved_at) of the streams that run."""
    _, doc = cli_json("list")
    return {s["name"]: (s["pid"], s["saved_at"]) for s in doc["streams"] if s["pid"]}


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("url", BAD_URLS)
def test_start_with_a_malformed_url_is_invalid_input(daemon: Daemon, url: str) -> None:
    proc = cli("start", "cam", "--url", url)
    assert proc.returncode == 2 and "daemon error" not in one_line(proc)
    assert "invalid url" in one_line(proc)


def test_apply_of_a_malformed_url_is_one_line(tmp_home: Path) -> None:
    f = tmp_home / "s.toml"
    for url in BAD_URLS:
        f.write_text(f"[streams.a]\nurl = '{url}'\n")
        proc = cli("apply", "-f", str(f))
        assert proc.returncode == 2 and "stream 'a', key 'url'" in one_line(proc)


def test_a_bad_rtsp_url_setting_is_a_clear_config_error(tmp_home: Path) -> None:
    for value in ("rtsp://127.0.0.1:99999/live", "rtsp://[::1/live"):
        env = {**os.environ, "STREAMALCHEMY_RTSP_URL": value}
        proc = subprocess.run(
            [sys.executable, "-m", "streamalchemy", "daemon", "run"],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 2 and "STREAMALCHEMY_RTSP_URL" in one_line(proc)


def test_daemon_run_apply_reports_a_malformed_url_and_applies_the_rest(
    tmp_home: Path,
) -> None:
    f = tmp_home / "s.toml"
    f.write_text(f"[streams.good]\n{CHEAP}[streams.bad]\nurl = 'rtsp://[::1/x'\n")
    assert cli("start", "kept", "--testsrc", "--resolution", "480", "--fps", "5",
                  "--output", "null").returncode == 0  # fmt: skip
    cli("daemon", "stop")
    d = Daemon(tmp_home, "--apply", str(f))
    try:
        wait_for(lambda: set(running()) == {"good", "kept"}, 20, "the launch apply")
        log = (tmp_home / "logs" / "daemon.log").read_text()
        assert "stream 'bad', key 'url'" in log and "Traceback" not in log
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_a_file_rewritten_in_place_is_never_applied_half_written(
    tmp_home: Path,
) -> None:
    rec = tmp_home / "rec"
    rec.mkdir()
    tables = [f"[streams.s{i}]\n{CHEAP}" for i in range(4)]
    tables.append(
        f"[streams.rec]\ntestsrc = true\nresolution = 480\nfps = 5\noutput = '{rec}/r.ts'\n"
    )
    f = tmp_home / "s.toml"
    f.write_text("".join(tables))
    d = Daemon(tmp_home, "--apply", str(f))
    try:
        names = {"s0", "s1", "s2", "s3", "rec"}
        wait_for(lambda: set(running()) == names, 30, "the launch apply")
        before = running()
        # `cat new > file` at the speed of a slow copy: a table every 0.6 s for 3 s.
        seen: list[set[str]] = []
        with f.open("w") as out:
            for table in tables:
                out.write(table)
                out.flush()
                time.sleep(0.6)
                seen.append(set(running()))
        time.sleep(3)  # two looks at the finished file, and any apply they make
        assert all(s == names for s in seen), seen
        assert running() == before  # same pids, same deadlines
        assert sorted(p.name for p in rec.iterdir()) == ["r.ts"]
    finally:
        d.stop()


def test_restart_all_goes_past_a_stream_whose_file_is_gone(
    daemon: Daemon, tmp_home: Path, sample_video: Path
) -> None:
    clip = tmp_home / "clip.mp4"
    shutil.copy(sample_video, clip)
    small = ("--testsrc", "--resolution", "480", "--fps", "5")
    for args in (("a", *small), ("b", "--file", str(clip), "--codec", "copy"), ("c", *small)):
        assert cli("start", *args, "--output", "null", "--restart", "always").returncode == 0
    clip.unlink()
    code, doc = cli_json("restart", "--all", timeout=120)
    assert code == 1 and doc["success"] is False
    assert doc["restarted"] == ["a", "c"]
    (failure,) = doc["failed"]
    assert failure["name"] == "b" and str(clip) in failure["reason"]
    human = cli("restart", "--all", timeout=120)
    assert human.returncode == 1 and "restarted: a, c" in human.stdout
    assert "failed: b: " in human.stderr


def test_overwrite_with_a_bad_source_keeps_the_old_recording(
    daemon: Daemon, tmp_home: Path
) -> None:
    old = tmp_home / "rec.ts"
    old.write_bytes(b"an old recording" * 1000)
    bad = tmp_home / "bad.mp4"
    bad.write_text("this is not a video\n")
    proc = cli("start", "r", "--file", str(bad), "--output", str(old), "--overwrite")
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1
    assert old.read_bytes() == b"an old recording" * 1000


def test_apply_brings_back_a_saved_stream_and_records_into_the_next_file(
    tmp_home: Path, sample_video: Path
) -> None:
    clip = tmp_home / "clip.mp4"
    shutil.copy(sample_video, clip)
    (tmp_home / "rec").mkdir()
    out = tmp_home / "rec" / "r.ts"
    f = tmp_home / "s.toml"
    f.write_text(
        f"[streams.cam]\nfile = '{clip}'\ncodec = 'copy'\noutput = 'null'\n"
        f"[streams.rec]\n{CHEAP.replace('null', str(out))}"
    )
    d = Daemon(tmp_home)
    try:
        code, doc = cli_json("apply", "-f", str(f))
        assert code == 0, doc
    finally:
        d.stop()
    clip.rename(tmp_home / "away.mp4")  # the launch restore cannot start cam
    d = Daemon(tmp_home)
    try:
        wait_for(lambda: "rec" in running(), 20, "the restore of rec")
        assert "cam" not in running()
        (tmp_home / "away.mp4").rename(clip)
        code, doc = cli_json("apply", "-f", str(f))
        steps = {s["name"]: s for s in doc["plan"]}
        assert code == 0 and steps["cam"]["action"] == "update", doc
        assert steps["cam"]["result"] == "done" and steps["rec"]["action"] == "unchanged"
        assert set(running()) == {"cam", "rec"}
        # Stopped, then applied again: its file exists, it goes on into the next one.
        assert cli("stop", "rec").returncode == 0
        code, doc = cli_json("apply", "-f", str(f))
        assert code == 0 and {s["name"]: s["action"] for s in doc["plan"]}["rec"] == "create"
        shown = cli_json("show", "rec")[1]
        assert shown["stream"]["output"].endswith(".ts") and out.exists()
        assert any(p.name != "r.ts" for p in out.parent.iterdir())
    finally:
        d.stop()


def test_stop_with_the_daemon_down_answers_from_the_state_file(tmp_home: Path) -> None:
    d = Daemon(tmp_home)
    try:
        for name in ("a", "b"):
            assert cli("start", name, *CHEAP_ARGS).returncode == 0
    finally:
        d.stop()  # the streams stay saved, to come back at the next launch
    code, doc = cli_json("stop", "a")
    assert (code, doc["stopped"]) == (0, ["a"])
    assert not (tmp_home / "streamalchemy.sock").exists()  # no daemon, no restore of a
    assert cli("stop", "zz").returncode == 4
    assert set(cli_json("saved")[1]["streams"]) == {"b"}
    d = Daemon(tmp_home)
    try:
        wait_for(lambda: "b" in running(), 20, "the restore of b")
        assert "a" not in running()
        second_launch = (tmp_home / "logs" / "daemon.log").read_text().split("listening on")[-1]
        assert "starting b ->" in second_launch and "starting a ->" not in second_launch
    finally:
        d.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_under_hls_is_a_failing_stream_with_its_cause(tmp_home: Path) -> None:
    hls = tmp_home / "hls"
    hls.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(hls)],
                   check=True, timeout=30)  # fmt: skip
    try:
        d = Daemon(tmp_home)
        try:
            args = ("--testsrc", "--resolution", "720", "--fps", "25", "--output", "hls")
            assert cli("start", "h", *args).returncode == 0
            seen: list[dict[str, Any]] = []

            def failing() -> bool:
                seen.append(stream_of("h"))
                return "no space left on the disk" in (seen[-1]["last_error"] or "")

            wait_for(failing, 90, "the disk to fill and the stream to say so")
            assert seen[-1]["status"] in ("retrying", "starting")
        finally:
            d.stop()
    finally:
        subprocess.run(["umount", str(hls)], timeout=30)


def stream_of(name: str) -> dict[str, Any]:
    _, doc = cli_json("list")
    return next(s for s in doc["streams"] if s["name"] == name)
