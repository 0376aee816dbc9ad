"""Human output: rich tables for people at a terminal. Never imported on ``--json`` paths.

Text is data: ``console`` interprets no markup and no emoji codes, and escapes
control characters in every string it prints (``plain``), so a name, path or
reason prints literally whatever it holds. Style with ``Text(..., style=...)``
or ``console.print(..., style=...)``, never with ``[markup]`` in strings.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamalchemy.client.text import plain
from streamalchemy.core.durations import duration_text
from streamalchemy.core.spec import mask_credentials, read_saved


class PlainConsole(Console):
    """A rich console that prints every string literally: no markup, no emoji, escaped controls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(plain(text), **kwargs)


def styled(text: object, style: str) -> Text:
    """``text`` in ``style``, literally."""
    return Text(plain(text), style=style)


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


def _when(at: float) -> str:
    """A local date and time, as the user's clock shows it."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


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
            styled(status, STATUS_STYLE.get(status, "")),
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
    for name, entry in sorted(result["streams"].items()):
        view = read_saved(name, entry)
        spec = view.spec
        if spec is None:
            table.add_row(name, styled("invalid", "red"), view.error, *["-"] * 6)
            continue
        deadline = view.deadline
        table.add_row(
            name,
            spec.source_type,
            mask_credentials(spec.source or "testsrc"),
            spec.codec,
            duration_text(spec.duration) if spec.duration else "unlimited",
            _when(view.saved_at),
            "unlimited" if deadline is None else span(max(0.0, deadline - now)),
            str(spec.priority),
            mask_credentials(spec.output or "default RTSP"),
        )
    if result["streams"]:
        console.print(table)
    else:
        console.print("no saved streams")


def restore(result: dict[str, Any]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "RESULT", "REASON"):
        table.add_column(column)
    style = {"restored": "green", "skipped": "yellow", "failed": "red"}
    for name, r in result["results"].items():
        table.add_row(name, styled(r["result"], style.get(r["result"], "")), r["reason"])
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
    if sys.stderr.isatty():
        print(
            f"{stream['name']} started (pid {stream['pid']}, {stream['encoder']})",
            file=sys.stderr,
        )


def details(result: dict[str, Any]) -> None:
    """``show NAME``: one stream, key by key, then its spec and its last exits."""
    s = result["stream"]
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    status = s["status"]
    deadline = result.get("deadline")
    rows = [
        ("name", s["name"]),
        ("status", styled(status, STATUS_STYLE.get(status, ""))),
        ("pid", str(s["pid"] or "-")),
        ("source", s["source"]),
        ("output", s.get("current_output") or s["output"]),
        ("encoder", s["encoder"] or "-"),
        ("saved at", _when(s["saved_at"])),
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
