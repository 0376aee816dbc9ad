"""The docs: man pages generated from the Typer app and rendering cleanly, a README that
names only real commands and options, and every setting documented in both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from streamalchemy.cli import app
from streamalchemy.settings import _KNOWN

# Its e2e tests may share the machine (scripts/test.sh runs them two at a time).
pytestmark = pytest.mark.parallel

ROOT = Path(__file__).resolve().parent.parent
MAN_DIR = ROOT / "man"
README = (ROOT / "README.md").read_text()


def generate(out: Path) -> dict[str, str]:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_man.py"), "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {p.name: p.read_text() for p in sorted(out.glob("*.1"))}


def test_committed_pages_match_the_cli(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = {p.name: p.read_text() for p in sorted(MAN_DIR.glob("*.1"))}
    hint = "man/ is out of date: run `python scripts/gen_man.py` and commit man/"
    assert sorted(committed) == sorted(fresh), hint
    for name, content in fresh.items():
        assert committed[name] == content, f"{name}: {hint}"


def test_a_page_per_command_and_no_date(tmp_path: Path) -> None:
    pages = generate(tmp_path)
    for name in (
        "streamalchemy.1",
        "streamalchemy-start.1",
        "streamalchemy-daemon-run.1",
        "streamalchemy-service-install.1",
    ):
        assert name in pages
    # The same version gives the same bytes: the date field stays empty.
    assert pages["streamalchemy.1"].splitlines()[1].startswith('.TH STREAMALCHEMY 1 "" ')
    assert generate(tmp_path / "again") == pages


@pytest.mark.parametrize("doc", [MAN_DIR / "streamalchemy.1", ROOT / "README.md"])
def test_every_setting_is_documented(doc: Path) -> None:
    text = doc.read_text()
    for key, (var, _parse) in _KNOWN.items():
        assert var in text and key in text, var
    assert "STREAMALCHEMY_HOME" in text


def test_readme_starts_with_the_demo_and_the_tests() -> None:
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines() == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def _options(command: typer.core.TyperGroup | typer.core.TyperCommand) -> set[str]:
    return {o for p in command.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}


def test_readme_uses_only_real_commands_and_options() -> None:
    root = typer.main.get_command(app)
    # Every "streamalchemy WORDS" in the README, up to a quote or a shell operator.
    for match in re.finditer(r"(?<![\w/.-])streamalchemy((?: +[^\s`'\"|;&)>]+)+)", README):
        command, words = root, match.group(1).split()
        while words and words[0] in getattr(command, "commands", {}):
            command = command.commands[words.pop(0)]
        where = match.group(0)
        if isinstance(command, typer.core.TyperGroup) and words:
            assert words[0].startswith("-"), f"no such command: {where}"
        known = {"--help", *_options(root), *_options(command)}
        for word in words:
            for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", word):
                assert option in known, f"no option {option}: {where}"


@pytest.mark.skipif(
    shutil.which("man") is None or shutil.which("groff") is None, reason="needs man-db and groff"
)
@pytest.mark.parametrize("page", sorted(p.name for p in MAN_DIR.glob("*.1")))
def test_page_renders_without_warnings(page: str) -> None:
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(MAN_DIR / page)],
        env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C", "MAN_KEEP_FORMATTING": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "NAME" in proc.stdout and "SYNOPSIS" in proc.stdout


@pytest.mark.e2e
def test_the_wheel_ships_the_man_pages(tmp_path: Path) -> None:
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("streamalchemy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for page in MAN_DIR.glob("*.1"):
        assert f"streamalchemy/man/{page.name}" in names  # package data
        assert any(n.endswith(f"/data/share/man/man1/{page.name}") for n in names)  # for `man`
