"""Shell completion through Typer: scripts for bash, zsh and fish, and the answers behind them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROG = [sys.executable, "-m", "streamalchemy"]


def run(args: list[str], **env: str) -> str:
    proc = subprocess.run(
        [*PROG, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(shell: str) -> None:
    # Typer detects the shell it runs under; this picks one explicitly, as for a packager.
    script = run(["--show-completion", shell], _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert f"_STREAMALCHEMY_COMPLETE=complete_{shell}" in script
    assert "streamalchemy" in script


def test_completion_answers_commands_subcommands_and_choices() -> None:
    var = "_STREAMALCHEMY_COMPLETE"
    bash = run([], **{var: "complete_bash", "COMP_WORDS": "streamalchemy da", "COMP_CWORD": "1"})
    assert bash.split() == ["daemon"]
    zsh = run([], **{var: "complete_zsh", "_TYPER_COMPLETE_ARGS": "streamalchemy daemon "})
    assert all(f'"{sub}"' in zsh for sub in ("run", "stop", "status"))
    fish = run(
        [],
        **{
            var: "complete_fish",
            "_TYPER_COMPLETE_ARGS": "streamalchemy start cam --codec ",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        },
    )
    assert fish.split() == ["h264", "h265", "mpeg4", "copy"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_through_the_generated_function(tmp_path: Path) -> None:
    wrapper = tmp_path / "streamalchemy"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m streamalchemy "$@"\n')
    wrapper.chmod(0o755)
    script = run(["--show-completion", "bash"], _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    session = (
        f"{script}\n"
        "COMP_WORDS=(streamalchemy daemon st); COMP_CWORD=2\n"
        f'_streamalchemy_completion "{wrapper}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", session],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path.cwd(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["stop", "status"]


def test_stream_names_complete_from_the_state_file_without_a_daemon(tmp_home: Path) -> None:
    entry = {"config": {"stream_type": "testsrc"}, "saved_at": 1.0, "status": "active"}
    state = {"cam1": entry, "cam2": entry, "lobby": entry}
    (tmp_home / "active_streams.json").write_text(json.dumps(state))
    var = "_STREAMALCHEMY_COMPLETE"
    for words, cword, expected in (
        ("streamalchemy stop ca", "2", ["cam1", "cam2"]),
        ("streamalchemy restart cam1 l", "3", ["lobby"]),
        ("streamalchemy show ", "2", ["cam1", "cam2", "lobby"]),
        ("streamalchemy logs lo", "2", ["lobby"]),
    ):
        out = run([], **{var: "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword})
        assert out.split() == expected, words
    # Completing never starts a daemon, even with autostart on.
    assert not (tmp_home / "streamalchemy.sock").exists()
    assert not (tmp_home / "daemon.pid").exists()
