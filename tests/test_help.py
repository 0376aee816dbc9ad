"""Every help screen speaks words: no Python type, no braces, no doubled brackets; the
defaults stay shown; ``apply --help`` describes its file; numbers are refused plainly."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from streamalchemy.cli import app

ROOT = typer.main.get_command(app)
PYTHONISH = re.compile(r"<[a-z][^>]*>|(?<!\$)\{[A-Z_]+\}|\[\[|x>=|x<=|\b(?:str|bool|int|float)\b")


def commands(command: Any = ROOT, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += commands(sub, (*path, name))
    return found


def help_of(*path: str, columns: int = 80) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(p) or "streamalchemy")
def test_no_help_screen_shows_a_python_type(path: tuple[str, ...]) -> None:
    text = help_of(*path, columns=200)
    assert not PYTHONISH.search(text), PYTHONISH.search(text)


def test_flags_show_no_value_and_options_name_theirs() -> None:
    rows = {line.split()[1]: line for line in help_of("start", columns=200).splitlines()
            if line.startswith("│ --")}  # fmt: skip
    assert rows["--testsrc"].split("│")[1].split() == [
        "--testsrc",
        "A",
        "synthetic",
        "test",
        "pattern.",
    ]
    assert "[auto|aac|pcm_alaw|none]" in rows["--audio"] and "[default: auto]" in rows["--audio"]
    assert " FILE " in rows["--file"] and " URL " in rows["--url"]
    assert "Usage: streamalchemy start [OPTIONS] NAME" in help_of("start")
    assert "Usage: streamalchemy logs [OPTIONS] [NAME]" in help_of("logs")
    assert "Usage: streamalchemy stop [OPTIONS] [NAME...]" in help_of("stop")


def test_apply_help_describes_the_file_format() -> None:
    text = help_of("apply")
    for line in ("[streams.cam1]", 'file = "/srv/video/loop.mp4"', "[streams.lobby]"):
        assert f"   {line}" in text  # an example, indented, one line each
    assert "[streams.NAME]" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["logs", "-n", "abc"], "'abc' is not a whole number"),
        (["logs", "-n", "-1"], "-1 is less than 0"),
        (["export", "--shards", "0"], "0 is less than 1"),
        (["start", "cam", "--testsrc", "--priority", "high"], "'high' is not a whole number"),
        (["list", "-o", "tall"], "'tall' is not wide"),
    ],
)
def test_a_bad_number_is_refused_in_words(argv: list[str], words: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamalchemy", *argv],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert words in line and "Input should" not in line
