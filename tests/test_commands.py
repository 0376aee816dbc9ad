"""The command layer without a daemon: defaults in --help, the fast path's choice,
the start body, and the show document built from a saved entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamalchemy.cli import app
from streamalchemy.client import commands
from streamalchemy.client import fastpath as main
from streamalchemy.core.details import saved_details, spec_doc
from streamalchemy.core.options import START_OPTIONS
from streamalchemy.core.saved import to_config
from streamalchemy.core.spec import spec_from_request
from streamalchemy.errors import InvalidInput


def test_every_start_option_shows_its_default_in_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamalchemy", "start", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400", "TERM": "dumb"},
    )
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if "│ --" in line}
    for key, option in START_OPTIONS.items():
        assert f"[default: {option.default}]" in rows[f"--{key}"], key
    assert "[default: source]" in rows["--resolution"] and "[default: none]" in rows["--hwaccel"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "--json"], "list_streams"),
        (["--json", "saved"], "saved"),
        (["daemon", "status", "--json"], "daemon_status"),
        (["show", "cam", "--json"], "show"),
        (["list"], None),
        (["show", "--help", "--json"], None),
        (["start", "x", "--testsrc", "--json"], None),
    ],
)
def test_the_fast_path_takes_only_the_polled_json_commands(
    argv: list[str], expected: str | None
) -> None:
    action = main._fast_path(argv)
    if expected is None:
        assert action is None
    elif expected == "show":
        assert action is not None and action.__name__ == "<lambda>"
    else:
        assert action is getattr(commands, expected)


def test_the_fast_path_imports_no_typer_rich_or_tomllib() -> None:
    heavy = "{'typer', 'rich', 'tomllib', 'dataclasses', 'inspect', 'typing', 'asyncio'}"
    code = (
        "import sys; import streamalchemy.client.fastpath as m; m._fast_path(['list', '--json']); "
        "import streamalchemy.client.commands; "
        f"bad = {heavy} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_start_body_resolves_paths_and_wants_one_source(tmp_path: Any) -> None:
    os.chdir(tmp_path)
    body = commands.start_body("cam", file="v.mp4", output="rec.ts", codec="h264")
    assert body["file"] == str(tmp_path / "v.mp4") and body["output"] == str(tmp_path / "rec.ts")
    assert commands.start_body("cam", testsrc=True, output="hls")["output"] == "hls"
    with pytest.raises(InvalidInput, match="exactly one source"):
        commands.start_body("cam", file="v.mp4", testsrc=True)
    with pytest.raises(InvalidInput, match="exactly one source"):
        commands.start_body("cam")


def test_spec_doc_gives_the_options_back_masked() -> None:
    spec = spec_from_request(
        {"name": "cam", "url": "rtsp://u:pw@h/s", "duration": "90m", "output": "hls"}
    )
    doc = spec_doc(spec)
    assert doc["url"] == "rtsp://***:***@h/s"
    assert (doc["resolution"], doc["fps"], doc["duration"]) == ("source", "source", "1h30m")
    copy = spec_doc(spec_from_request({"name": "c", "url": "rtsp://h/s", "codec": "copy"}))
    assert (copy["resolution"], copy["fps"]) == (None, None)


def test_show_of_a_saved_entry_and_of_an_invalid_one() -> None:
    spec = spec_from_request({"name": "cam", "testsrc": True, "duration": "2m"})
    entry = {"config": to_config(spec), "saved_at": 1000.0, "status": "active"}
    doc = saved_details(
        "cam", entry, log_file="/l/cam.log", why="skipped", target=lambda s: "T", now=1030.0
    )
    assert doc["stream"]["status"] == "saved" and doc["stream"]["remaining_seconds"] == 90.0
    assert doc["deadline"] == 1120.0 and doc["spec"]["duration"] == "2m"
    assert doc["stream"]["output"] == "T" and doc["stream"]["last_error"] == "skipped"
    bad = saved_details("x", {"config": {}}, log_file="", why="", target=lambda s: "")
    assert bad["spec"] == {} and "invalid saved entry" in str(bad["stream"]["last_error"])


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--fps", "0"),
        ("--fps", "fast"),
        ("--duration", "9x"),
        ("--codec", "vp9"),
        ("--resolution", "900"),
    ],
)
def test_a_bad_start_option_is_refused_before_any_daemon(
    option: str, value: str, tmp_path: Any
) -> None:
    env = {**os.environ, "STREAMALCHEMY_HOME": str(tmp_path), "STREAMALCHEMY_AUTOSTART": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamalchemy", "start", "x", "--testsrc", option, value],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "daemon.pid").exists()  # refused by the CLI itself


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--url", "rtsp://[::1/x"], "invalid url 'rtsp://[::1/x': Invalid IPv6 URL"),
        (["--url", "rtsp://cam:99999/x"], "Port out of range"),
        (["--testsrc", "--output", "rtsp://h:port/x"], "invalid output"),
    ],
)
@pytest.mark.parametrize("autostart", ["0", "1"])
def test_a_malformed_url_is_bad_input_whatever_the_daemons_state(
    args: list[str], said: str, autostart: str, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMALCHEMY_AUTOSTART", autostart)
    line = ["start", "x", *args]
    for fast in (line, [*line, "--json"]):  # the fast path, as a user runs it
        proc = subprocess.run(
            [sys.executable, "-m", "streamalchemy", *fast],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert said in proc.stderr
    typer_path = CliRunner().invoke(app, line)
    assert typer_path.exit_code == 2 and said in typer_path.output, typer_path.output
    assert not (tmp_home / "daemon.pid").exists()  # refused by the CLI itself
