"""At 80 columns ``list``, ``saved`` and ``top`` keep name, status and time left whole on
one line per stream; the other columns drop out in their chosen order; wide shows all."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from rich.console import Console

from conftest import Daemon, cli
from streamalchemy.client import columns, render, top
from streamalchemy.client.columns import ALWAYS, Column

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

NAMES = ("lobby-camera-north", "parking-garage-entrance-2", "warehouse-dock-3")


def stream(name: str, status: str = "running", left: float | None = 5400.0) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "pid": 123456,
        "uptime_seconds": 3725.0,
        "remaining_seconds": left,
        "restarts": 12,
        "source": f"rtsp://10.0.0.7:554/{name}/main?token=***",
        "output": f"/srv/streamalchemy/hls/{name}/index.m3u8",
        "encoder": "libx264",
        "fps": 29.97,
        "bitrate_kbps": 4147.2,
        "speed": 1.0,
        "cpu_percent": 112.5,
        "memory_mb": 187.0,
        "last_error": None,
        "saved": True,
    }


STREAMS = [stream(NAMES[0]), stream(NAMES[1], "retrying", None), stream(NAMES[2], "starting")]


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """``render``'s console writing to a string, as at a terminal COLUMNS wide."""
    out = io.StringIO()
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(render, "console", render.PlainConsole(file=out))
    return out


def lines_of(text: str) -> dict[str, str]:
    """Each stream's line, by name."""
    return {n: line for line in text.splitlines() for n in NAMES if line.startswith(n + " ")}


def assert_whole(text: str, want: dict[str, tuple[str, ...]], width: int = 80) -> None:
    assert all(len(line) <= width for line in text.splitlines()), text
    found = lines_of(text)
    for name, cells in want.items():
        assert name in found, text
        assert all(f" {cell}" in found[name] for cell in cells), found[name]


def test_list_keeps_name_status_and_time_left_at_80_columns(screen: io.StringIO) -> None:
    render.streams({"streams": STREAMS, "not_running": {}})
    text = screen.getvalue()
    assert_whole(
        text,
        {
            NAMES[0]: ("running", "1h30m", "30.0", "1.00x"),
            NAMES[1]: ("retrying", "unlimited"),
            NAMES[2]: ("starting",),
        },
    )
    # Where a stream comes from and goes to drop out first (show tells them).
    assert "SOURCE" not in text and "OUTPUT" not in text and "rtsp://" not in text


def test_wide_shows_every_column(screen: io.StringIO) -> None:
    render.streams({"streams": STREAMS, "not_running": {}}, wide=True)
    text = screen.getvalue()
    for column in render.LIST_COLUMNS:
        assert column.header in text.splitlines()[0]
    assert f"/srv/streamalchemy/hls/{NAMES[0]}/index.m3u8" in text


def test_an_unsaved_stream_says_it_will_not_survive_a_restart(screen: io.StringIO) -> None:
    render.streams({"streams": [{**STREAMS[0], "saved": False}], "not_running": {}})
    assert f"unsaved (will not come back after a daemon restart): {NAMES[0]}" in (
        screen.getvalue().replace("\n", " ")
    )


def test_saved_at_80_columns_names_the_url_scheme(screen: io.StringIO) -> None:
    def entry(stream_type: str, **config: str) -> dict[str, Any]:
        base = {"stream_type": stream_type, "duration_hours": "2"}
        return {"config": {**base, **config}, "saved_at": time.time() - 590, "status": "active"}

    streams = {
        NAMES[0]: entry("rtsp", source_url="http://media.example.com/loop.mp4"),
        NAMES[1]: entry("testsrc", duration_hours="0"),
        NAMES[2]: entry("nonsense"),
    }
    render.saved({"streams": streams, "enabled": True})
    text = screen.getvalue()
    assert_whole(
        text,
        {NAMES[0]: ("http", "1h50m"), NAMES[1]: ("testsrc", "unlimited"), NAMES[2]: ("invalid",)},
    )
    assert f"{NAMES[2]}: invalid saved entry: invalid stream_type 'nonsense'" in text.replace(
        "\n", " "
    )


def test_top_at_80_columns() -> None:
    console = Console(record=True, width=80, force_terminal=False, file=io.StringIO())
    console.print(top.screen({"streams": STREAMS}, None, 0.0, width=80))
    text = console.export_text()
    assert_whole(text, {NAMES[0]: ("running", "1h30m"), NAMES[1]: ("retrying", "unlimited")})


def test_fit_drops_the_highest_rank_first_and_never_the_kept_ones() -> None:
    cols = [
        Column("A", lambda r: "a" * 10, ALWAYS),
        Column("B", lambda r: "b" * 10, 2),
        Column("C", lambda r: "c" * 10, 1),
        Column("D", lambda r: "d" * 10, ALWAYS),
    ]
    rows = [{}]

    def headers(width: int | None) -> str:
        shown, _, natural = columns.fit(cols, rows, width)
        assert natural == 10 * len(shown) + 2 * (len(shown) - 1)
        return "".join(c.header for c in shown)

    assert headers(None) == headers(46) == "ABCD"
    assert headers(45) == headers(34) == "ACD"
    assert headers(33) == headers(10) == "AD"


@pytest.mark.e2e
def test_list_saved_and_top_at_80_columns_through_the_real_cli(daemon: Daemon) -> None:
    small = ("--testsrc", "--resolution", "480", "--fps", "10", "--output", "null")
    assert cli("start", NAMES[0], *small, "--duration", "2h").returncode == 0
    assert cli("start", NAMES[1], *small).returncode == 0
    env = {**os.environ, "COLUMNS": "80"}
    for command, want in [
        ("list", ("running", "1h5")),
        ("saved", ("testsrc", "1h5")),
        ("top", ("running", "1h5")),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "streamalchemy", command],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert_whole(proc.stdout, {NAMES[0]: want, NAMES[1]: ("unlimited",)})
    wide = cli("list", "-o", "wide")
    assert wide.returncode == 0 and "SOURCE" in wide.stdout and "OUTPUT" in wide.stdout
