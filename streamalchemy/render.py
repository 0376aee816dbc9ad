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

from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamalchemy.durations import parse_duration_hours
from streamalchemy.errors import InvalidInput
from streamalchemy.spec import mask_credentials, validate_name


def plain(text: object) -> str:
    """``text`` as a string with control characters escaped (``\\x1b``, ``\\n``), else as it is."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class PlainConsole(Console):
    """A rich console that prints every string literally: no markup, no emoji, escaped controls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(plain(text), **kwargs)


# Piped output keeps whole lines: scripts grep it, and 80 columns would cut every cell.
console = PlainConsole(width=None if sys.stdout.isatty() else 240)
STATUS_STYLE = {
    "running": "green",
    "starting": "cyan",
    "retrying": "yellow",
    "stopping": "magenta",
    "failed": "red",
    "finished": "dim",
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


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def streams(result: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    for column in (
        "NAME",
        "STATUS",
        "PID",
        "UPTIME",
        "LEFT",
        "RESTARTS",
        "SOURCE",
        "OUTPUT",
        "ENCODER",
        "FPS",
        "KBPS",
        "SPEED",
        "CPU%",
        "MEM MB",
    ):
        table.add_column(column, no_wrap=column in ("NAME", "STATUS", "PID"))
    for s in result["streams"]:
        status = s["status"]
        table.add_row(
            s["name"],
            Text(plain(status), style=STATUS_STYLE.get(status, "")),
            str(s["pid"] or "-"),
            span(s["uptime_seconds"]),
            "unlimited" if s["remaining_seconds"] is None else span(s["remaining_seconds"]),
            str(s["restarts"]),
            s["source"],
            s["output"],
            s["encoder"],
            _num(s["fps"], ".1f"),
            _num(s["bitrate_kbps"], ".0f"),
            "-" if s["speed"] is None else f"{s['speed']:.2f}x",
            _num(s["cpu_percent"], ".1f"),
            _num(s["memory_mb"], ".0f"),
        )
    if result["streams"]:
        console.print(table)
    else:
        console.print("no streams")
    for s in result["streams"]:
        if s["last_error"] and s["status"] in ("retrying", "failed"):
            console.print(f"{s['name']}: {s['last_error']}", style="yellow")
    for name, why in result.get("not_running", {}).items():
        console.print(f"warning: {name} is saved but not running: {why}", style="yellow")


def saved(result: dict[str, Any]) -> None:
    if not result["enabled"]:
        console.print("persistence is disabled (ENABLE_STREAM_PERSISTENCE=false)", style="yellow")
    table = Table(box=None, header_style="bold")
    for column in (
        "NAME",
        "TYPE",
        "SOURCE",
        "CODEC",
        "DURATION",
        "SAVED",
        "LEFT",
        "PRIORITY",
        "OUTPUT",
    ):
        table.add_column(column)
    now = time.time()
    invalid = []
    for name, entry in sorted(result["streams"].items()):
        # A hand-edited file may hold anything: show what is there, never crash on it.
        entry = entry if isinstance(entry, dict) else {}
        raw = entry.get("config")
        config: dict[str, Any] = raw if isinstance(raw, dict) else {}
        try:
            validate_name(name)
        except InvalidInput:
            invalid.append(name)
        source = config.get("video_file_path") or config.get("source_url") or "testsrc"
        try:
            duration = parse_duration_hours(config.get("duration_hours"))
        except InvalidInput:
            duration = 0.0
        try:
            saved_at = float(entry.get("saved_at", now))
        except (TypeError, ValueError):
            saved_at = now
        left = span(max(0.0, saved_at + duration - now)) if duration else "unlimited"
        table.add_row(
            name,
            str(config.get("stream_type", "?")),
            mask_credentials(str(source)),
            str(config.get("video_codec", "?")),
            span(duration) if duration else "unlimited",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(saved_at)),
            left,
            str(config.get("priority") or 0),
            mask_credentials(str(config.get("output") or "default RTSP")),
        )
    if result["streams"]:
        console.print(table)
    else:
        console.print("no saved streams")
    for name in invalid:
        console.print(
            f"warning: saved entry {name!r} has an invalid name (use 1-64 letters, digits, "
            "'_' or '-'); it is kept in the file but cannot be restored",
            style="yellow",
        )


def restore(result: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "RESULT", "REASON"):
        table.add_column(column)
    style = {"restored": "green", "skipped": "yellow", "failed": "red"}
    for name, r in result["results"].items():
        table.add_row(name, Text(plain(r["result"]), style=style.get(r["result"], "")), r["reason"])
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
    table.add_row("uptime", span(result["uptime_seconds"]))
    table.add_row("socket", result["socket"])
    table.add_row("state file", result["state_file"])
    table.add_row("persistence", "on" if result["persistence_enabled"] else "off")
    table.add_row("streams", str(result["streams"]))
    console.print(table)


def follow_file(path: str, interval: float = 0.5) -> None:
    """Print lines appended to ``path`` until Ctrl-C, following rotation like ``tail -F``."""
    handle = None
    inode = None
    try:
        while True:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                time.sleep(interval)
                continue
            if handle is None or st.st_ino != inode or st.st_size < handle.tell():
                if handle is not None:
                    sys.stdout.write(handle.read())
                    handle.close()
                new = handle is None
                handle = open(path, errors="replace")  # noqa: SIM115 - kept open while following
                inode = st.st_ino
                if new:
                    handle.seek(0, os.SEEK_END)
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if handle is not None:
            handle.close()
