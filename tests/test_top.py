"""``top`` in-process and in a pseudo-terminal with a fake daemon: order, text, keys, exits."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from typing import Any

import pytest
from rich.console import Console

from conftest import own_terminal
from streamalchemy.client import top


def stream(name: str, status: str = "running", **figures: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "status": status,
        "pid": 4242,
        "fps": 5.0,
        "bitrate_kbps": 1234.0,
        "speed": 1.0,
        "cpu_percent": 12.5,
        "memory_mb": 64.0,
        "restarts": 0,
        "uptime_seconds": 65.0,
        "remaining_seconds": None,
        "last_error": None,
    }
    doc.update(figures)
    return doc


def rendered(doc: dict[str, Any] | None, error: str | None = None) -> str:
    console = Console(record=True, width=200, force_terminal=False)
    console.print(top.screen(doc, error, 0.0))
    return console.export_text()


def test_failing_streams_come_first_then_by_name() -> None:
    streams = [stream("b"), stream("z", "failed"), stream("a"), stream("m", "retrying")]
    assert [s["name"] for s in top.order(streams)] == ["m", "z", "a", "b"]


def test_screen_shows_each_figure() -> None:
    text = rendered({"streams": [stream("cam1", remaining_seconds=90.0), stream("cam2")]})
    assert "2 streams, 2 running" in text
    for shown in ("cam1", "running", "4242", "5.0", "1,234 kb/s", "1.00x", "12.5%", "64 MB"):
        assert shown in text
    assert "1m30s" in text and "unlimited" in text and "1m05s" in text


def test_unknown_figures_show_a_dash() -> None:
    text = rendered({"streams": [stream("new", "starting", fps=None, speed=None, pid=None)]})
    line = next(line for line in text.splitlines() if line.strip().startswith("new"))
    assert "-" in line and "None" not in line


def test_names_and_errors_are_plain_text() -> None:
    doc = {"streams": [stream("[red]x[/red]", "failed", last_error="bad\x1b[2J[bold]")]}
    text = rendered(doc, error="daemon gone")
    assert "[red]x[/red]" in text
    assert "\x1b" not in text and "\\x1b[2J[bold]" in text
    assert "daemon gone" in text


def test_no_streams() -> None:
    assert "no streams" in rendered({"streams": []})


# -- the live view in a real pseudo-terminal, with a fake daemon ---------------------------

FAKE = """
import sys
from rich.console import Console
from streamalchemy.client import top
doc = {"streams": [{"name": "fake1", "status": "running", "pid": 1, "restarts": 0}]}
sys.exit(top.live(lambda autostart: doc, Console()))
"""


def run_in_terminal() -> tuple[subprocess.Popen[bytes], int, int]:
    controller, terminal = pty.openpty()
    termios.tcsetwinsize(terminal, (24, 100))
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=own_terminal,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    seen = b""
    deadline = time.monotonic() + 20
    while b"fake1" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        if select.select([controller], [], [], 0.2)[0]:
            seen += os.read(controller, 65536)
    return proc, controller, terminal


@pytest.mark.parametrize(
    ("leave", "code"), [("q", 0), ("Q", 0), ("ctrl-c", 0), ("sigterm", 128 + signal.SIGTERM)]
)
def test_live_view_leaves_and_gives_the_terminal_back(leave: str, code: int) -> None:
    proc, controller, terminal = run_in_terminal()
    try:
        assert not termios.tcgetattr(terminal)[3] & termios.ECHO  # keys are not echoed
        if leave in ("q", "Q"):
            os.write(controller, leave.encode())
        elif leave == "ctrl-c":
            os.write(controller, b"\x03")  # the terminal turns it into SIGINT
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == code
        lflag = termios.tcgetattr(terminal)[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON
        tail = b""
        while select.select([controller], [], [], 0.2)[0]:
            try:
                tail += os.read(controller, 65536)
            except OSError:
                break
        assert b"\x1b[?1049l" in tail  # the alternate screen was left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(controller)
        os.close(terminal)
