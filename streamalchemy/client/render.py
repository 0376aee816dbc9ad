"""Human output: rich tables for people at a terminal. Never imported on ``--json`` paths.

Text is data: ``console`` interprets no markup and no emoji codes, and escapes
control characters in every string it prints (``plain``), so a name, path or
reason prints literally whatever it holds. Style with ``Text(..., style=...)``
or ``console.print(..., style=...)``, never with ``[markup]`` in strings.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamalchemy.client import columns
from streamalchemy.client.columns import ALWAYS, Column
from streamalchemy.client.text import plain
from streamalchemy.core import outputs
from streamalchemy.core.durations import duration_text
from streamalchemy.core.masking import mask_url
from streamalchemy.core.saved import read_saved
from streamalchemy.core.spec import StreamSpec


class PlainConsole(Console):
    """A rich console that prints every string literally: no markup, no emoji, escaped controls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(plain(text), **kwargs)


def styled(text: object, style: str) -> Text:
    """``text`` in ``style``, literally."""
    return Text(plain(text), style=style)


# Piped output keeps whole lines (scripts grep it) unless COLUMNS says how wide to be.
console = PlainConsole(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 1000)
STATUS_STYLE = {
    "running": "green",
    "starting": "cyan",
    "retrying": "yellow",
    "stopping": "magenta",
    "failed": "red",
    "finished": "dim",
    "shed": "yellow",
}


def span(seconds: float | None) -> str:
    """1d02h, 3h04m, 5m06s, 7s; a dash when there is no value."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def _when(at: float) -> str:
    """A local date and time, as the user's clock shows it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _left(seconds: float | None) -> str:
    return "unlimited" if seconds is None else span(seconds)


def status_cell(stream: dict[str, Any]) -> Text:
    status = str(stream["status"])
    return styled(status, STATUS_STYLE.get(status, ""))


def width(wide: bool) -> int | None:
    """The width a table must fit: None (every column) when asked, or when no terminal
    and no COLUMNS say how wide the reader is (a script greps whole lines)."""
    if wide or (not console.is_terminal and "COLUMNS" not in os.environ):
        return None
    return console.width


# ``list``: name, status and time left stay at any width; the rest drop out from the end
# of their rank: where it comes from and goes to first (``show`` tells them), figures last.
LIST_COLUMNS = (
    Column("NAME", lambda s: s["name"], ALWAYS),
    Column("STATUS", status_cell, ALWAYS),
    Column("LEFT", lambda s: _left(s["remaining_seconds"]), ALWAYS),
    Column("UPTIME", lambda s: span(s["uptime_seconds"]), 5),
    Column("RESTARTS", lambda s: str(s["restarts"]), 3, "right"),
    Column("FPS", lambda s: _num(s["fps"], ".1f"), 1, "right"),
    Column("KBPS", lambda s: _num(s["bitrate_kbps"], ".0f"), 4, "right"),
    Column("SPEED", lambda s: "-" if s["speed"] is None else f"{s['speed']:.2f}x", 2, "right"),
    Column("CPU%", lambda s: _num(s["cpu_percent"], ".1f"), 6, "right"),
    Column("MEM MB", lambda s: _num(s["memory_mb"], ".0f"), 7, "right"),
    Column("PID", lambda s: str(s["pid"] or "-"), 8, "right"),
    Column("ENCODER", lambda s: s["encoder"] or "-", 9),
    Column("SOURCE", lambda s: s["source"], 11),
    Column("OUTPUT", lambda s: s["output"], 10),
)


def streams(result: dict[str, Any], wide: bool = False) -> None:
    if result["streams"]:
        _print_table(columns.table(LIST_COLUMNS, result["streams"], width(wide)))
    else:
        console.print("no streams")
    for s in result["streams"]:
        if s["last_error"] and s["status"] in ("retrying", "failed", "shed"):
            console.print(f"{s['name']}: {s['last_error']}", style="yellow")
    unsaved = [s["name"] for s in result["streams"] if s.get("saved") is False]
    if unsaved:
        console.print(
            f"unsaved (will not come back after a daemon restart): {', '.join(unsaved)}",
            style="yellow",
        )
    for name, why in result.get("not_running", {}).items():
        console.print(f"warning: {name} is saved but not running: {why}", style="yellow")


def _print_table(fitted: tuple[Table, int]) -> None:
    """A table at its own width: a wide one is not squeezed into the terminal (the
    terminal wraps its lines, as it does kubectl's -o wide)."""
    table, natural = fitted
    before = console.width
    console.width = max(before, natural)  # print's own width= may only narrow
    try:
        console.print(table)
    finally:
        console.width = before


def source_kind(spec: StreamSpec) -> str:
    """file, testsrc, or a URL source's scheme (the state file says ``rtsp`` for any URL)."""
    if spec.source_type == "rtsp":
        return urlsplit(spec.source).scheme.lower() or "url"
    return spec.source_type


def _saved_row(name: str, entry: Any, now: float) -> dict[str, Any]:
    view = read_saved(name, entry)
    spec = view.spec
    if spec is None:
        return {"name": name, "error": view.error}
    deadline = view.deadline
    return {
        "name": name,
        "type": source_kind(spec),
        "source": mask_url(spec.source or "testsrc"),
        "codec": spec.codec,
        "duration": duration_text(spec.duration) if spec.duration else "unlimited",
        "saved": _when_short(view.saved_at),
        "left": "unlimited" if deadline is None else span(max(0.0, deadline - now)),
        "priority": str(spec.priority),
        "output": mask_url(outputs.shown(spec.output)),
    }


def _saved_cell(key: str) -> Any:
    return lambda row: row.get(key, "-")


SAVED_COLUMNS = (
    Column("NAME", _saved_cell("name"), ALWAYS),
    Column("TYPE", lambda r: styled("invalid", "red") if "error" in r else r["type"], ALWAYS),
    Column("LEFT", _saved_cell("left"), ALWAYS),
    Column("DURATION", _saved_cell("duration"), 1),
    Column("SAVED", _saved_cell("saved"), 2),
    Column("CODEC", _saved_cell("codec"), 3),
    Column("PRIORITY", _saved_cell("priority"), 4, "right"),
    Column("SOURCE", _saved_cell("source"), 6),
    Column("OUTPUT", _saved_cell("output"), 5),
)


def saved(result: dict[str, Any], wide: bool = False) -> None:
    if not result["enabled"]:
        console.print("persistence is disabled (ENABLE_STREAM_PERSISTENCE=false)", style="yellow")
    now = time.time()
    rows = [_saved_row(name, entry, now) for name, entry in sorted(result["streams"].items())]
    if rows:
        _print_table(columns.table(SAVED_COLUMNS, rows, width(wide)))
    else:
        console.print("no saved streams")
    for row in rows:
        if "error" in row:
            console.print(f"{row['name']}: {row['error']}", style="red")


def _when_short(at: float) -> str:
    """A local date and time to the minute: enough to tell saved streams apart."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def restore(result: dict[str, Any], dry_run: bool = False) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "RESULT", "REASON"):
        table.add_column(column)
    style = {"restored": "green", "skipped": "yellow", "failed": "red"}
    # A dry run restores nothing: its "restored" (the JSON's word) is a forecast.
    words = {"restored": "would restore", "skipped": "would skip"} if dry_run else {}
    for name, r in result["results"].items():
        word = words.get(r["result"], r["result"])
        table.add_row(name, styled(word, style.get(r["result"], "")), r["reason"])
    if result["results"]:
        console.print(table)
    else:
        console.print("nothing to restore")


def encoders(result: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("CODEC", "ENCODER", "TYPE", "AVAILABLE", "AUTO"):
        table.add_column(column)
    for codec, rows in result["encoders"].items():
        for row in rows:
            picked = "*" if result["auto"].get(codec) == row["name"] else ""
            table.add_row(
                codec, row["name"], row["type"], "yes" if row["available"] else "no", picked
            )
    console.print(table)


def status(result: dict[str, Any]) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("pid", str(result["pid"]))
    table.add_row("version", result["version"])
    table.add_row("home", result.get("home", "-"))
    table.add_row("installed at", result.get("install_path", "-"))
    table.add_row("uptime", span(result["uptime_seconds"]))
    table.add_row("socket", result["socket"])
    table.add_row("state file", result["state_file"])
    table.add_row("logs", result.get("log_dir", "-"))
    addr = result.get("metrics_addr")
    table.add_row("metrics", f"http://{addr}/metrics and the socket" if addr else "socket only")
    table.add_row("persistence", "on" if result["persistence_enabled"] else "off")
    if "live_restore" in result:
        table.add_row("live restore", "on" if result["live_restore"] else "off")
    table.add_row("streams", str(result["streams"]))
    console.print(table)


def started(stream: dict[str, Any]) -> None:
    """``start``'s human output: the output URL alone on stdout (scripts take it), the rest
    on stderr: when a limited stream ends, and the pid and encoder at a terminal."""
    print(plain(stream["output"]))
    remaining = stream.get("remaining_seconds")
    if remaining is not None:
        end = time.time() + remaining
        print(
            f"{stream['name']} runs until {_when(end)} "
            f"({duration_text(stream.get('duration_seconds') or remaining)})",
            file=sys.stderr,
        )
    if stream.get("status") != "running":
        print(no_frame_yet(stream), file=sys.stderr)
    elif sys.stderr.isatty():
        print(
            f"{stream['name']} started (pid {stream['pid']}, {stream['encoder']})",
            file=sys.stderr,
        )


def no_frame_yet(stream: dict[str, Any]) -> str:
    """What ``start`` says of a stream whose FFmpeg runs but has not put out a frame."""
    name = stream["name"]
    return (
        f"{name}: FFmpeg runs (pid {stream['pid']}) but no frame has come out yet: the source "
        f"may be slow or silent; see 'streamalchemy show {name}' and 'streamalchemy logs {name}'"
    )


UNSAVED = "unsaved: not in the state file, a daemon restart ends it"


def details(result: dict[str, Any]) -> None:
    """``show NAME``: one stream, key by key, then its spec and its last exits."""
    s = result["stream"]
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    deadline = result.get("deadline")
    rows = [
        ("name", s["name"]),
        ("status", status_cell(s)),
        ("pid", str(s["pid"] or "-")),
        ("source", s["source"]),
        ("output", s.get("current_output") or s["output"]),
        ("encoder", s["encoder"] or "-"),
        ("saved at", _when(s["saved_at"]))
        if s.get("saved", True)
        else ("saved", styled(UNSAVED, "yellow")),
        ("ends", "unlimited" if deadline is None else _when(deadline)),
        ("left", "unlimited" if s["remaining_seconds"] is None else span(s["remaining_seconds"])),
        ("uptime", span(s["uptime_seconds"])),
        ("restarts", str(s["restarts"])),
        ("last error", s["last_error"] or "-"),
        ("log", result.get("log_file") or s.get("log_file", "-")),
    ]
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else str(value))
    console.print(table)
    spec = result.get("spec") or {}
    if spec:
        console.print("spec", style="bold")
        options = Table(box=None, show_header=False)
        options.add_column(style="bold")
        options.add_column()
        for key, value in spec.items():
            options.add_row(f"  {key}", "-" if value is None else str(value))
        console.print(options)
    exits = result.get("exits") or []
    if exits:
        console.print("last exits", style="bold")
        table = Table(box=None, header_style="bold")
        for column in ("  AT", "CODE", "REASON"):
            table.add_column(column)
        for e in exits:
            code = "-" if e["code"] is None else str(e["code"])
            table.add_row(f"  {_when(e['at'])}", code, e["reason"])
        console.print(table)
