"""``streamalchemy top``: a live full-screen view of the daemon's streams, like ``pm2 monit``.

Asks the daemon for ``GET /streams`` once a second and draws a table with rich's
Live display. Reads single keys from the terminal (``q`` leaves) and gives the
terminal back as it found it on every way out. Starts nothing but the daemon
(on demand, as every command that needs it), and changes no stream.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamalchemy.client import columns
from streamalchemy.client.columns import ALWAYS, Column
from streamalchemy.client.connection import Client
from streamalchemy.client.render import span, status_cell, styled, width
from streamalchemy.client.text import plain
from streamalchemy.errors import StreamAlchemyError

REFRESH = 1.0  # seconds between two reads of the daemon
PROBLEMS = ("failed", "retrying", "shed")  # shown first: what needs a look is never scrolled away

# Reads the daemon's streams; the argument says whether a daemon that is down may be
# started (only for the first read: a daemon stopped while top runs stays stopped).
Fetch = Callable[[bool], dict[str, Any]]


def fetcher(client: Client) -> Fetch:
    def fetch(autostart: bool) -> dict[str, Any]:
        return client.request("GET", "/streams", autostart=autostart, timeout=5)

    return fetch


def order(streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failed and retrying streams first, then the others; by name within each."""
    return sorted(streams, key=lambda s: (s["status"] not in PROBLEMS, s["name"]))


def _figure(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _left(s: dict[str, Any]) -> str:
    remaining = s.get("remaining_seconds")
    return "unlimited" if remaining is None else span(remaining)


# Name, status and time left stay whole at any width; the others drop out, highest rank
# first (``list`` has the same rule).
COLUMNS = (
    Column("NAME", lambda s: s["name"], ALWAYS),
    Column("STATUS", status_cell, ALWAYS),
    Column("LEFT", _left, ALWAYS, "right"),
    Column("FPS", lambda s: _figure(s.get("fps"), ".1f"), 1, "right"),
    Column("BITRATE", lambda s: _figure(s.get("bitrate_kbps"), ",.0f", " kb/s"), 4, "right"),
    Column("SPEED", lambda s: _figure(s.get("speed"), ".2f", "x"), 2, "right"),
    Column("CPU", lambda s: _figure(s.get("cpu_percent"), ".1f", "%"), 5, "right"),
    Column("MEMORY", lambda s: _figure(s.get("memory_mb"), ".0f", " MB"), 6, "right"),
    Column("RESTARTS", lambda s: str(s.get("restarts", 0)), 3, "right"),
    Column("UPTIME", lambda s: span(s.get("uptime_seconds")), 7, "right"),
    Column("PID", lambda s: str(s.get("pid") or "-"), 8, "right"),
)


def table(streams: list[dict[str, Any]], width: int | None = None) -> Table:
    """The streams, problems first, in the columns that fit ``width`` (None: all)."""
    return columns.table(COLUMNS, order(streams), width)[0]


def summary(streams: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for s in streams:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    parts = [f"{len(streams)} stream{'' if len(streams) == 1 else 's'}"]
    parts += [f"{n} {status}" for status, n in sorted(counts.items())]
    return ", ".join(parts)


def screen(
    doc: dict[str, Any] | None,
    error: str | None,
    now: float,
    *,
    keys: bool = True,
    width: int | None = None,
) -> RenderableType:
    streams = doc["streams"] if doc else []
    head = Text.assemble(
        ("streamalchemy top", "bold"),
        f"  {summary(streams)}  ",
        (time.strftime("%H:%M:%S", time.localtime(now)), "dim"),
        ("  q: quit" if keys else "", "dim"),
    )
    parts: list[RenderableType] = [head, Text()]
    parts.append(table(streams, width) if streams else Text("no streams", style="dim"))
    problems = [s for s in order(streams) if s["status"] in PROBLEMS and s.get("last_error")]
    if problems:
        parts.append(Text())
    for s in problems:
        parts.append(styled(f"{s['name']}: {s['last_error']}", "yellow"))
    if error:
        parts += [Text(), Text.assemble(("daemon: ", "red"), plain(error), " (trying again)")]
    return Group(*parts)


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[int | None]:
    """Single keys, unechoed, from a terminal; the terminal is restored on every exit."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)  # no echo, no line buffering; Ctrl-C still signals
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd: int | None, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``q`` is pressed."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(left)
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 64)
            if not data or b"q" in data.lower():
                return True  # q, or the terminal went away
    return False


class _Terminated(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def live(fetch: Fetch, console: Console, stdin: TextIO = sys.stdin, *, wide: bool = False) -> int:
    """Run the full-screen view until ``q`` (exit 0), Ctrl-C (0) or SIGTERM (143)."""
    doc: dict[str, Any] | None = fetch(True)  # an unreachable daemon fails here, plainly
    error: str | None = None
    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        with (
            _keys(stdin) as fd,
            Live(console=console, screen=True, auto_refresh=False, transient=True) as view,
        ):
            while True:
                # The terminal's width at each refresh: a resized window is followed.
                width = None if wide else console.width
                frame = screen(doc, error, time.time(), keys=fd is not None, width=width)
                view.update(frame, refresh=True)
                if _wait_for_quit(fd, REFRESH):
                    return 0
                try:
                    doc, error = fetch(False), None
                except StreamAlchemyError as exc:
                    error = str(exc)
    except KeyboardInterrupt:
        return 0
    except _Terminated:
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def once(fetch: Fetch, console: Console, *, wide: bool = False) -> int:
    """One plain snapshot, for a pipe or a file."""
    console.print(screen(fetch(True), None, time.time(), keys=False, width=width(wide)))
    return 0
