"""Names, sources and reasons print as plain text: no markup, no emoji codes, controls escaped."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamalchemy.client import render
from streamalchemy.client.text import plain

ESC = "\x1b[2J"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(render, "console", render.PlainConsole(file=out, width=300))
    return out


def test_plain_escapes_control_characters_only() -> None:
    assert plain("[live] cam.mp4 :smile:") == "[live] cam.mp4 :smile:"
    assert plain(f"a{ESC}b\n\tc\x7f") == "a\\x1b[2Jb\\n\\tc\\x7f"
    assert plain(3) == "3"


def _stream(**over: Any) -> dict[str, Any]:
    stream = {
        "name": "br3",
        "status": "retrying",
        "pid": None,
        "uptime_seconds": None,
        "remaining_seconds": None,
        "restarts": 1,
        "source": "udp://127.0.0.1:5000/[/]x",
        "output": "/srv/[live] cam.mp4",
        "encoder": "libx264",
        "fps": None,
        "bitrate_kbps": None,
        "speed": None,
        "cpu_percent": None,
        "memory_mb": None,
        "last_error": f"[bold]boom[/] {ESC}",
    }
    return {**stream, **over}


def test_list_prints_markup_and_escapes_literally(captured: io.StringIO) -> None:
    render.streams({"streams": [_stream()], "not_running": {f"x{ESC}": "[red]why[/]"}})
    text = captured.getvalue()
    assert "udp://127.0.0.1:5000/[/]x" in text
    assert "/srv/[live] cam.mp4" in text
    assert "[bold]boom[/] \\x1b[2J" in text
    assert "x\\x1b[2J is saved but not running: [red]why[/]" in text
    assert "\x1b" not in text


def test_restore_prints_reasons_literally(captured: io.StringIO) -> None:
    render.restore(
        {
            "results": {
                f"n{ESC}": {"result": "skipped", "reason": "source file not found: /v/[a].mp4"}
            }
        }
    )
    text = captured.getvalue()
    assert "n\\x1b[2J" in text and "/v/[a].mp4" in text and "\x1b" not in text


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMALCHEMY_HOME": str(home), "STREAMALCHEMY_AUTOSTART": "0"}
    env["COLUMNS"] = "300"
    return subprocess.run(
        [sys.executable, "-m", "streamalchemy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _entry(**config: str) -> dict[str, Any]:
    return {"config": {"video_codec": "h264", **config}, "saved_at": 1.0e9, "status": "active"}


def test_saved_and_restore_report_a_bad_name_from_the_state_file_and_keep_it(
    tmp_home: Path,
) -> None:
    state = tmp_home / "active_streams.json"
    doc = {
        f"evil{ESC}": _entry(stream_type="testsrc"),
        "br3": _entry(stream_type="rtsp", source_url="udp://127.0.0.1:5000/[/]x"),
        "cam": _entry(stream_type="file", video_file_path="/nowhere/[live] cam.mp4"),
        "junk": "not an object",
    }
    state.write_text(json.dumps(doc))
    os.chmod(state, 0o600)

    saved = _cli(tmp_home, "saved")
    assert saved.returncode == 0, saved.stderr
    assert "udp://127.0.0.1:5000/[/]x" in saved.stdout
    assert "/nowhere/[live] cam.mp4" in saved.stdout
    assert "evil\\x1b[2J" in saved.stdout and "\x1b" not in saved.stdout
    assert "invalid stream name" in saved.stdout

    restore = _cli(tmp_home, "restore", "--dry-run")
    assert restore.returncode in (0, 1), restore.stderr  # reported, not crashed on
    assert "Traceback" not in restore.stderr
    assert "invalid stream name" in restore.stdout
    assert "evil\\x1b[2J" in restore.stdout and "\x1b" not in restore.stdout
    assert "/nowhere/[live] cam.mp4" in restore.stdout
    assert set(json.loads(state.read_text())) == set(doc)  # kept


def test_completion_offers_only_valid_names(tmp_home: Path) -> None:
    from streamalchemy.client.commands import stream_names
    from streamalchemy.settings import load_settings

    state = tmp_home / "active_streams.json"
    state.write_text(json.dumps({f"evil{ESC}": {}, "cam1": {}}))
    assert stream_names(load_settings()) == ["cam1"]
