"""What the screen says in words: a dry run's forecast, the daemon's logs and metrics
address, a start whose FFmpeg has no frame yet, and logs --follow of every stream."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from streamalchemy.client import commands, render


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(render, "console", render.PlainConsole(file=out, width=200))
    return out


def test_a_dry_run_says_would_restore(screen: io.StringIO) -> None:
    results = {"cam": {"result": "restored", "reason": ""}, "old": {"result": "skipped",
               "reason": "expired"}}  # fmt: skip
    render.restore({"success": True, "results": results}, dry_run=True)
    text = screen.getvalue()
    assert "would restore" in text and "would skip" in text and "restored" not in text


def test_daemon_status_names_the_logs_and_the_metrics_address(screen: io.StringIO) -> None:
    status: dict[str, Any] = {
        "pid": 7, "version": "1", "uptime_seconds": 5.0, "socket": "/run/s.sock",
        "state_file": "/d/active_streams.json", "persistence_enabled": True, "streams": 0,
        "log_dir": "/var/log/streamalchemy", "metrics_addr": "127.0.0.1:9321",
    }  # fmt: skip
    render.status(status)
    text = screen.getvalue()
    assert "/var/log/streamalchemy" in text and "http://127.0.0.1:9321/metrics" in text
    render.status({**status, "metrics_addr": None})
    assert "socket only" in screen.getvalue()


def test_start_says_when_no_frame_has_come_out(capsys: pytest.CaptureFixture[str]) -> None:
    render.started({"name": "cam", "output": "null", "status": "starting", "pid": 42})
    out, err = capsys.readouterr()
    assert out == "null\n"
    assert "cam: FFmpeg runs (pid 42) but no frame has come out yet" in err


def test_follow_without_a_name_picks_up_streams_started_later(tmp_home: Path) -> None:
    logs = tmp_home / "logs" / "streams"
    logs.mkdir(parents=True)
    (logs / "old.log").write_text("shown already\n")
    lines = commands.follow({}, interval=0.01, every_stream=True)
    got: list[tuple[str, str]] = []

    def read_two() -> None:
        got.extend([next(lines), next(lines)])

    reader = threading.Thread(target=read_two, daemon=True)
    reader.start()
    (logs / "new.log").write_text("first line of a new stream\n")
    with (logs / "old.log").open("a") as f:
        f.write("appended\n")
    reader.join(10)
    assert sorted(got) == [("new", "first line of a new stream"), ("old", "appended")]


def test_kubernetes_export_warns_of_host_paths(
    tmp_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamalchemy.apply import commands as apply_commands

    config = {"stream_type": "file", "video_file_path": "/srv/video/loop.mp4"}
    entry = {"config": config, "saved_at": 1.0, "status": "active"}
    other = {"config": {"stream_type": "testsrc"}, "saved_at": 1.0, "status": "active"}
    (tmp_home / "active_streams.json").write_text(json.dumps({"cam": entry, "pattern": other}))
    apply_commands.export(fmt="kubernetes")
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: cam: file /srv/video/loop.mp4 is a path on this machine")
    apply_commands.export(fmt="toml")
    assert capsys.readouterr().err == ""
