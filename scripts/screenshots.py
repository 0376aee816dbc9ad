"""Write the README's screenshots (docs/screenshots/*.svg) from a real run.

Starts a daemon in a throw-away home with three small test-pattern streams, waits
until their figures are known, and records what ``list``, ``show`` and ``top`` print
at 80 and 120 columns with the very views the CLI uses, as SVG (rich's export).
Stops the streams and the daemon it started, and removes the home.

Usage: python scripts/screenshots.py [--out DIR]    (default: docs/screenshots/)
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (80, 120)
SMALL = ("--testsrc", "--resolution", "480", "--fps", "10")
STREAMS = {
    "lobby-camera-north": (*SMALL, "--output", "null", "--duration", "8h"),
    "parking-garage-entrance-2": (*SMALL, "--output", "hls"),
    "warehouse-dock-3": (*SMALL, "--output", "null", "--duration", "90m"),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamalchemy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )


def record(out: Path, name: str, width: int, draw: Callable[[], None]) -> None:
    """Run ``draw`` with the CLI's console recording at ``width`` columns; save the SVG."""
    from streamalchemy.client import render

    console = render.PlainConsole(record=True, width=width, file=io.StringIO(), force_terminal=True)
    render.console = console
    draw()
    path = out / f"{name}-{width}.svg"
    console.save_svg(str(path), title=f"streamalchemy {name}")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def shoot(out: Path) -> None:
    from streamalchemy.client import commands, render, top

    listing: dict[str, Any] = commands.list_streams()  # type: ignore[assignment]
    shown: dict[str, Any] = commands.show("lobby-camera-north")  # type: ignore[assignment]
    for width in WIDTHS:
        record(out, "list", width, lambda: render.streams(listing))
        record(out, "show", width, lambda: render.details(shown))
        record(
            out,
            "top",
            width,
            lambda w=width: render.console.print(  # type: ignore[misc]
                top.screen(listing, None, time.time(), width=w)
            ),
        )


def wait_for_figures(deadline: float) -> None:
    from streamalchemy.client import commands

    while time.monotonic() < deadline:
        streams = commands.list_streams()["streams"]
        if all(s["bitrate_kbps"] is not None and s["speed"] is not None for s in streams):
            return
        time.sleep(0.5)
    raise SystemExit("the streams' figures did not come within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    out = parser.parse_args().out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="sa-shots-", dir="/tmp"))
    os.environ.update(STREAMALCHEMY_HOME=str(home), STREAMALCHEMY_MEDIAMTX="off")
    os.environ.pop("STREAMALCHEMY_SOCKET", None)
    try:
        for name, options in STREAMS.items():
            cli("start", name, *options)  # the first one starts the daemon
        wait_for_figures(time.monotonic() + 30)
        shoot(out)
    finally:
        subprocess.run(
            [sys.executable, "-m", "streamalchemy", "daemon", "stop"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
